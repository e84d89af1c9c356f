"""How the columns of common question sources map onto the pool schema, and how their answers and tests are read.

A `ColumnMapping` names the source column of each pool field and the format of the answer and test columns.
`PRESETS` holds one mapping per common source; `resolve_mapping` applies command-line overrides to a preset.
The extraction functions raise `RowProblem(reason, detail)` for a row that cannot be used; the importer turns it
into a reject row. Not covered: sources whose tests need a custom checker program (e.g. CodeContests' special
judges) -- their rows are imported only if the checker is not needed.
"""

from __future__ import annotations

import builtins
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

AnswerFormat = Literal["plain", "boxed", "gsm8k"]
TestsFormat = Literal["apps_io", "assert_check", "assert_list", "adaptcot"]


class RowProblem(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ColumnMapping(BaseModel):
    """Source column for each pool field (None: the source has no such column)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    question: str
    answer: str | None = None
    answer_format: AnswerFormat = "plain"
    solution: str | None = None
    tests: str | None = None
    tests_format: TestsFormat = "adaptcot"
    entry_point: str | None = None
    starter_code: str | None = None
    setup_code: str | None = None
    id: str | None = None

    def source_columns(self) -> dict[str, str]:
        """{pool field: source column} for every mapped field."""
        fields = ("question", "answer", "solution", "tests", "entry_point", "starter_code", "setup_code", "id")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


PRESETS: dict[str, ColumnMapping] = {
    # MATH / MATH-500 / AIME style: the reference answer is its own column.
    "math": ColumnMapping(question="problem", answer="answer", solution="solution"),
    # NuminaMath, OpenR1-Math: the answer is the last \boxed{} of the worked solution.
    "numina": ColumnMapping(question="problem", answer="solution", answer_format="boxed", solution="solution"),
    # GSM8K: the answer column holds the worked solution, then "#### 42".
    "gsm8k": ColumnMapping(question="question", answer="answer", answer_format="gsm8k", solution="answer"),
    # APPS / TACO: input_output is JSON {"inputs", "outputs", optional "fn_name"}.
    "apps": ColumnMapping(question="question", tests="input_output", tests_format="apps_io",
                          starter_code="starter_code", solution=None),
    # HumanEval (and MBPP+ in the same shape): test defines check(candidate); entry_point names the function.
    "humaneval": ColumnMapping(question="prompt", tests="test", tests_format="assert_check",
                               entry_point="entry_point", id="task_id"),
    # MBPP: a list of assert statements, optional setup code.
    "mbpp": ColumnMapping(question="text", tests="test_list", tests_format="assert_list",
                          setup_code="test_setup_code", id="task_id"),
    # A pool written by adaptcot (or a file already in its form).
    "adaptcot": ColumnMapping(question="question", answer="reference_answer", tests="tests",
                              tests_format="adaptcot", starter_code="starter_code"),
}


class MappingError(ValueError):
    """A preset or column mapping is unusable; raised before any row is read."""


def resolve_mapping(preset: str | None, overrides: dict[str, str]) -> ColumnMapping:
    if preset is not None and preset not in PRESETS:
        raise MappingError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    base = PRESETS[preset].model_dump() if preset else {}
    merged = {**base, **{k: (None if v in ("", "none") else v) for k, v in overrides.items()}}
    try:
        return ColumnMapping(**merged)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'mapping'}: {err['msg']}" for err in e.errors())
        raise MappingError(f"bad column mapping: {problems}") from None


# --- reading answers ----------------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1:i].strip()
    return None


def read_answer(value: Any, fmt: AnswerFormat) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem("missing_answer", "empty answer column")
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    if fmt == "boxed":
        boxed = last_boxed(text)
        if not boxed:
            raise RowProblem("missing_answer", "no \\boxed{} answer in the solution")
        return boxed
    if fmt == "gsm8k":
        if "####" not in text:
            raise RowProblem("missing_answer", "no '#### <answer>' line")
        answer = text.rsplit("####", 1)[1].strip().replace(",", "")
        if not answer:
            raise RowProblem("missing_answer", "empty '####' answer")
        return answer
    return text.strip()


def solution_text(value: Any, answer_format: AnswerFormat) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.rsplit("####", 1)[0].strip() if answer_format == "gsm8k" else value.strip()


# --- reading tests ------------------------------------------------------------------------------------------------
def _as_json(value: Any, what: str) -> Any:
    if isinstance(value, (bytes, str)):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RowProblem("bad_tests", f"{what} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})")
    return value


def _io_text(value: Any) -> str:
    # APPS sometimes stores a case as a list of lines.
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _apps_tests(value: Any) -> dict:
    spec = _as_json(value, "input_output")
    if not isinstance(spec, dict):
        raise RowProblem("bad_tests", "input_output is not a JSON object")
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs) or not inputs:
        raise RowProblem("bad_tests", "inputs/outputs missing, empty or of different lengths")
    fn_name = spec.get("fn_name")
    if fn_name:
        # APPS/TACO wrap each expected return value in a one-element list.
        expected = [o[0] if isinstance(o, list) and len(o) == 1 else o for o in outputs]
        args = [a if isinstance(a, list) else [a] for a in inputs]
        cases = [{"input": json.dumps(a), "output": json.dumps(e)} for a, e in zip(args, expected)]
        return {"kind": "call", "cases": cases, "fn_name": str(fn_name)}
    cases = [{"input": _io_text(i), "output": _io_text(o)} for i, o in zip(inputs, outputs)]
    return {"kind": "stdin_stdout", "cases": cases}


def _assert_check_tests(value: Any, entry_point: Any) -> dict:
    if not isinstance(value, str) or "assert" not in value:
        raise RowProblem("bad_tests", "test code has no assert")
    if not entry_point:
        raise RowProblem("bad_tests", "no entry_point")
    test_code = value
    if re.search(r"^def check\(", value, re.MULTILINE):
        test_code = f"{value.rstrip()}\n\ncheck({entry_point})\n"
    return {"kind": "assert", "test_code": test_code, "entry_point": str(entry_point)}


def _called_function(assert_line: str) -> str | None:
    """The first non-builtin function an assert calls (`assert set(f(x)) == ...` -> `f`)."""
    for name in re.findall(r"(?<![\w.])([A-Za-z_]\w*)\s*\(", assert_line):
        if name not in _BUILTIN_NAMES:
            return name
    return None


_BUILTIN_NAMES = set(dir(builtins)) | {"math", "isclose"}


def _assert_list_tests(value: Any, setup_code: Any, entry_point: Any) -> dict:
    asserts = _as_json(value, "test_list") if isinstance(value, str) and value.lstrip().startswith("[") else value
    if isinstance(asserts, str):
        asserts = [asserts]
    if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) and "assert" in a for a in asserts):
        raise RowProblem("bad_tests", "test_list is not a non-empty list of assert statements")
    entry_point = entry_point or _called_function(asserts[0])
    if not entry_point:
        raise RowProblem("bad_tests", "cannot tell the function under test from the asserts")
    setup = f"{setup_code.strip()}\n" if isinstance(setup_code, str) and setup_code.strip() else ""
    return {"kind": "assert", "test_code": setup + "\n".join(asserts) + "\n", "entry_point": str(entry_point)}


def _native_tests(value: Any) -> dict:
    spec = _as_json(value, "tests")
    if not isinstance(spec, dict) or spec.get("kind") not in ("stdin_stdout", "call", "assert"):
        raise RowProblem("bad_tests", "tests lack a kind of stdin_stdout, call or assert")
    if spec["kind"] == "assert":
        return _assert_check_tests(spec.get("test_code"), spec.get("entry_point"))
    cases = spec.get("cases") or []
    if not cases or not all(isinstance(c, dict) and "input" in c and "output" in c for c in cases):
        raise RowProblem("bad_tests", "tests have no cases of {input, output}")
    if spec["kind"] == "call" and not spec.get("fn_name"):
        raise RowProblem("bad_tests", "call tests without fn_name")
    return {"kind": spec["kind"], "cases": [{"input": str(c["input"]), "output": str(c["output"])} for c in cases],
            "fn_name": spec.get("fn_name")}


def read_tests(record: dict, mapping: ColumnMapping) -> dict:
    value = record.get(mapping.tests) if mapping.tests else None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem("bad_tests", "no tests")
    entry_point = record.get(mapping.entry_point) if mapping.entry_point else None
    if mapping.tests_format == "apps_io":
        tests = _apps_tests(value)
    elif mapping.tests_format == "assert_check":
        tests = _assert_check_tests(value, entry_point)
    elif mapping.tests_format == "assert_list":
        setup = record.get(mapping.setup_code) if mapping.setup_code else None
        tests = _assert_list_tests(value, setup, entry_point)
    else:
        tests = _native_tests(value)
    return {"kind": tests["kind"], "cases": tests.get("cases"), "fn_name": tests.get("fn_name"),
            "test_code": tests.get("test_code"), "entry_point": tests.get("entry_point")}

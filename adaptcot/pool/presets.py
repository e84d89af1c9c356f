"""How the columns of common question sources map onto the pool schema, and how their answers and tests are read.

A `ColumnMapping` names the source column of each pool field and the format of the answer and test columns.
`PRESETS` holds one mapping per common source; `resolve_mapping` applies command-line overrides to a preset.
The extraction functions raise `RowProblem(reason, detail)` for a row that cannot be used; the importer turns it
into a reject row. Multiple choice (GPQA): `distractors` names the columns of the wrong options; `multiple_choice`
puts the correct one among them in a fixed order and letters them. LiveCodeBench's private tests may be
base64(zlib(pickle(JSON text))): they are unpickled with no global allowed (`_unpickle_text`), so a payload that
would run code is a rejected row, never a call. Assert tests are made runnable by `assert_styles.py`, or refused
when no program could fail (or pass) them; call cases must be JSON. Not covered: sources whose tests need a custom
checker program (e.g. CodeContests' special judges) -- their rows are imported only if the checker is not needed.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import json
import pickle
import re
import zlib
from typing import Any, Literal

from pydantic import ValidationError, model_validator

from adaptcot.common.settings import Strict
from adaptcot.pool.assert_styles import UnusableTests, runnable_test_code

AnswerFormat = Literal["plain", "boxed", "gsm8k"]
TestsFormat = Literal["apps_io", "assert_check", "assert_list", "adaptcot", "livecodebench"]
CHOICE_LETTERS = "ABCDEFGHIJ"  # at most ten options: a reference answer that is one of these letters is a choice
MAX_TESTS_BYTES = 256 << 20  # a compressed tests column may not decompress to more than this


class RowProblem(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ColumnMapping(Strict):
    """Source column for each pool field (None: the source has no such column)."""

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
    category: str | None = None  # a label carried along for per-category metrics (LiveCodeBench's difficulty)
    distractors: str | None = None  # math: comma-separated columns of the wrong options; `answer` is the right one
    extra_tests: str | None = None  # a second tests column appended to `tests` (livecodebench: the private tests)

    @model_validator(mode="after")
    def _check(self):
        if self.distractors is not None and not 1 <= len(self.distractor_columns()) < len(CHOICE_LETTERS):
            raise ValueError(f"distractors: 1 to {len(CHOICE_LETTERS) - 1} comma-separated columns, got "
                             f"{self.distractors!r}")
        if self.extra_tests is not None and self.tests_format != "livecodebench":
            raise ValueError("extra_tests: only with tests_format livecodebench")
        return self

    def distractor_columns(self) -> list[str]:
        return [c.strip() for c in (self.distractors or "").split(",") if c.strip()]

    def source_columns(self) -> dict[str, str]:
        """{pool field: source column} for every mapped field (distractors as `distractors[i]`)."""
        fields = ("question", "answer", "solution", "tests", "extra_tests", "entry_point", "starter_code",
                  "setup_code", "id", "category")
        columns = {f: getattr(self, f) for f in fields if getattr(self, f) is not None}
        return {**columns, **{f"distractors[{i}]": c for i, c in enumerate(self.distractor_columns())}}


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
    # GPQA (Idavidrein/gpqa): the correct answer and three wrong ones, shuffled and lettered at import.
    "gpqa": ColumnMapping(question="Question", answer="Correct Answer", id="Record ID",
                          distractors="Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3"),
    # LiveCodeBench (livecodebench/code_generation_lite): public + private tests, stdin or LeetCode-style calls.
    "livecodebench": ColumnMapping(question="question_content", starter_code="starter_code",
                                   tests="public_test_cases", extra_tests="private_test_cases",
                                   tests_format="livecodebench", category="difficulty", id="question_id"),
    # A pool written by adaptcot (or a file already in its form).
    "adaptcot": ColumnMapping(question="question", answer="reference_answer", tests="tests",
                              tests_format="adaptcot", starter_code="starter_code"),
}


class MappingError(ValueError):
    """A preset or column mapping is unusable; raised before any row is read."""


def parse_map(items: list[str]) -> dict[str, str]:
    """`--map FIELD=COLUMN` flags as a mapping."""
    mapping = {}
    for item in items:
        if "=" not in item:
            raise MappingError(f"--map {item!r}: expected FIELD=COLUMN")
        field, column = item.split("=", 1)
        mapping[field.strip()] = column.strip()
    return mapping


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


def multiple_choice(question: str, correct: str, distractors: list[str]) -> tuple[str, str]:
    """(the question with its lettered options appended, the letter of the correct one).

    The order is the options sorted by sha256(question, option): a shuffle fixed by the text, so the same source
    gives the same letters on every import, machine and Python version."""
    options = [correct, *distractors]
    if len(set(options)) < len(options):
        raise RowProblem("missing_answer", "two options have the same text")
    order = sorted(options, key=lambda o: hashlib.sha256(f"{question}\n{o}".encode("utf-8")).digest())
    lettered = "\n".join(f"{letter}) {option}" for letter, option in zip(CHOICE_LETTERS, order))
    return f"{question}\n\n{lettered}", CHOICE_LETTERS[order.index(correct)]


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


def _runnable(test_code: str, entry_point: str) -> str:
    """Test code that runs in the sandbox and can fail (`assert_styles.py`), else a bad_tests row."""
    try:
        return runnable_test_code(test_code, entry_point)
    except UnusableTests as e:
        raise RowProblem("bad_tests", str(e)) from None


def _assert_check_tests(value: Any, entry_point: Any) -> dict:
    if not isinstance(value, str) or not value.strip():
        raise RowProblem("bad_tests", "no test code")
    if not entry_point:
        raise RowProblem("bad_tests", "no entry_point")
    return {"kind": "assert", "test_code": _runnable(value, str(entry_point)), "entry_point": str(entry_point)}


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
    return {"kind": "assert", "test_code": _runnable(setup + "\n".join(asserts) + "\n", str(entry_point)),
            "entry_point": str(entry_point)}


def _native_tests(value: Any) -> dict:
    spec = _as_json(value, "tests")
    if not isinstance(spec, dict) or spec.get("kind") not in ("stdin_stdout", "call", "assert"):
        raise RowProblem("bad_tests", "tests lack a kind of stdin_stdout, call or assert")
    if spec["kind"] == "assert":
        return _assert_check_tests(spec.get("test_code"), spec.get("entry_point"))
    cases = spec.get("cases") or []
    if not cases or not all(isinstance(c, dict) and "input" in c and "output" in c for c in cases):
        raise RowProblem("bad_tests", "tests have no cases of {input, output}")
    if spec["kind"] == "call":
        if not spec.get("fn_name"):
            raise RowProblem("bad_tests", "call tests without fn_name")
        return {"kind": "call", "cases": [_call_case(c, i) for i, c in enumerate(cases)], "fn_name": spec["fn_name"]}
    return {"kind": spec["kind"], "cases": [{"input": str(c["input"]), "output": str(c["output"])} for c in cases]}


def _call_case(case: dict, index: int) -> dict:
    """A call case as JSON text: the arguments (a JSON array, or one value) and the return value. A value given as
    JSON data rather than text is written as JSON; text that does not parse would fail every program."""
    texts = {}
    for field in ("input", "output"):
        value = case[field]
        if not isinstance(value, str):
            texts[field] = json.dumps(value)
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as e:
            raise RowProblem("bad_tests", f"call case {index + 1}: {field} is not valid JSON ({e.msg}): "
                                          f"{value[:80]!r}") from None
        texts[field] = value
    return texts


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every way a pickle names a callable (GLOBAL, STACK_GLOBAL, INST, EXT*) goes
    through find_class, and a pickle without a callable cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"pickled tests name {module}.{name}: refused")


def _unpickle_text(value: str, what: str) -> str:
    """LiveCodeBench's compressed tests: base64 of zlib of a pickled JSON string."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(base64.b64decode(value, validate=True), MAX_TESTS_BYTES)
        if inflater.unconsumed_tail:
            raise RowProblem("bad_tests", f"{what} holds more than {MAX_TESTS_BYTES >> 20} MB once decompressed")
        text = _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except RowProblem:
        raise
    except Exception as e:  # untrusted bytes: whatever fails to decode is a bad row, not a crash
        raise RowProblem("bad_tests", f"{what} is neither JSON nor base64/zlib/pickle ({type(e).__name__}: {e})")
    if not isinstance(text, str):
        raise RowProblem("bad_tests", f"{what} unpickles to a {type(text).__name__}, not a JSON string")
    return text


def _lcb_cases(value: Any, what: str) -> list[dict]:
    if isinstance(value, str) and not value.lstrip().startswith("["):  # base64 never starts with "["
        value = _unpickle_text(value.strip(), what)
    cases = _as_json(value, what)
    keys = {"input", "output", "testtype"}
    if not isinstance(cases, list) or not all(isinstance(c, dict) and keys <= c.keys() for c in cases):
        raise RowProblem("bad_tests", f"{what} is not a list of {{input, output, testtype}}")
    return cases


def _lcb_fn_name(metadata: Any, starter_code: Any) -> str:
    try:
        meta = json.loads(metadata) if isinstance(metadata, str) else metadata
    except json.JSONDecodeError:
        meta = None
    name = meta.get("func_name") if isinstance(meta, dict) else None
    found = re.search(r"\bdef\s+([A-Za-z_]\w*)\s*\(", starter_code) if isinstance(starter_code, str) else None
    if not (name or found):
        raise RowProblem("bad_tests", "functional tests, but no metadata.func_name and no def in starter_code")
    return str(name or found.group(1))


def _lcb_call_case(case: dict) -> dict:
    # LiveCodeBench writes a call's arguments as one JSON value per line; the pool form is one JSON array.
    try:
        args = [json.loads(line) for line in str(case["input"]).splitlines() if line.strip()]
        json.loads(str(case["output"]))
    except json.JSONDecodeError as e:
        raise RowProblem("bad_tests", f"functional case is not one JSON value per line ({e.msg})")
    return {"input": json.dumps(args), "output": str(case["output"])}


def _livecodebench_tests(public: Any, private: Any, starter_code: Any, metadata: Any) -> dict:
    cases = _lcb_cases(public, "public_test_cases")
    if not _blank(private):
        cases += _lcb_cases(private, "private_test_cases")
    if not cases:
        raise RowProblem("bad_tests", "no test cases")
    types = {c["testtype"] for c in cases}
    if len(types) != 1 or not types <= {"stdin", "functional"}:
        raise RowProblem("bad_tests", f"test types {sorted(map(str, types))}: expected all stdin or all functional")
    if types == {"stdin"}:
        return {"kind": "stdin_stdout", "cases": [{"input": str(c["input"]), "output": str(c["output"])}
                                                  for c in cases]}
    return {"kind": "call", "cases": [_lcb_call_case(c) for c in cases],
            "fn_name": _lcb_fn_name(metadata, starter_code)}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_tests(record: dict, mapping: ColumnMapping) -> dict:
    value = record.get(mapping.tests) if mapping.tests else None
    if _blank(value):
        raise RowProblem("bad_tests", "no tests")
    entry_point = record.get(mapping.entry_point) if mapping.entry_point else None
    if mapping.tests_format == "apps_io":
        tests = _apps_tests(value)
    elif mapping.tests_format == "assert_check":
        tests = _assert_check_tests(value, entry_point)
    elif mapping.tests_format == "assert_list":
        setup = record.get(mapping.setup_code) if mapping.setup_code else None
        tests = _assert_list_tests(value, setup, entry_point)
    elif mapping.tests_format == "livecodebench":
        private = record.get(mapping.extra_tests) if mapping.extra_tests else None
        starter = record.get(mapping.starter_code) if mapping.starter_code else None
        tests = _livecodebench_tests(value, private, starter, record.get("metadata"))
    else:
        tests = _native_tests(value)
    return {"kind": tests["kind"], "cases": tests.get("cases"), "fn_name": tests.get("fn_name"),
            "test_code": tests.get("test_code"), "entry_point": tests.get("entry_point")}

"""Does a generated program pass its tests? Code extraction, the three test kinds, verdicts decided harness-side.

`CodeVerifier(config).verify(response, tests)` extracts the program from a response (fenced blocks; which one is
`extract`), runs it in a warm `Sandbox` (`sandbox.py`) and compares what it observed with the expected results, which
never enter the sandbox:
- stdin_stdout: each case's stdout against the expected text, token by token (whitespace-tolerant like the usual
  judges' `wcmp`), floats within `float_tolerance` if set; one case per round trip, stopping at the first failure;
- call: `fn_name(*args)` (or `Solution().fn_name` for LeetCode-style code) for every case in one process; the return
  value comes back as plain data tagged with its exact type and is compared here by value and type (a tuple equals
  a JSON list, `True` does not equal `1`, an object with a custom `__eq__` is never equal to anything);
- assert: the test code is rewritten before it is sent: `assert f(x) == <literal>` becomes "report f(x)", and the
  literal stays here; `assert a == b` reports both sides, any other assert reports its value. It runs in a test
  process of its own, which the program cannot reach: the entry point and the other names the test code takes from
  the program (`_names_from_program`) are proxies that call into the program's process with plain data both ways,
  so a program cannot patch `abs`, `math.isclose` or the reports. Every call of the entry point must return plain
  data; the asserts that must run (`AssertPlan.required`) must all report, and the test code must run to its end.
Time is CPU time: a case that uses up its CPU limit is a timeout; one stopped by the runner's wall-clock backstop
(it sleeps or waits) is re-run once before that timeout counts, and so is a program whose runner was lost.
Every report line a process writes is checked before use (`parse_report`): what the program causes, however odd,
is a verdict about the program.
Verdicts: passed, wrong_answer, runtime_error, timeout, memory_limit, compile_error, no_answer (no code found) and
sandbox_error (`correct` is None, never counted against the model): only what this side observed itself (no
sandbox could start, an exception here) or test code this harness cannot run (arguments that are not plain data).

Not covered: names the test code takes from the program are the program's own, so a program that rewrites a helper
the test relies on (HumanEval/32's `poly`, /38's `encode_cyclic`) can pass those asserts; arguments a candidate
mutates are not seen by the test; values cross between the two processes as plain data, and an object the test
code makes from a class of the program's (MBPP/601's `Pair(5, 24)`) stays in the program's process as a handle the
test code can only pass back; tests that pass the program objects or functions of their own cannot run
(sandbox_error); special judges (several right answers) and interactive problems
are not supported; programs get the standard library only (call tests run after LeetCode's usual pre-imports:
`typing`, `collections`, `heapq`, `bisect`, `itertools`, `functools`).
"""

from __future__ import annotations

import ast
import json
import queue
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from adaptcot.common.schemas import require_columns
from adaptcot.common.settings import ActorPoolSize, Strict
from adaptcot.verify.code_answers import (
    AssertPlan,
    decode_value,
    extract_code,
    outputs_match,
    rewrite_asserts,
    values_equal,
)
from adaptcot.verify.sandbox import Sandbox, SandboxConfig
from adaptcot.verify.sandbox_runner import EXIT_MEMORY, ProgramEnded, UnsupportedTest

VERDICTS = ("passed", "wrong_answer", "runtime_error", "timeout", "memory_limit", "compile_error", "no_answer",
            "sandbox_error")
INPUT_COLUMNS = ("response", "tests")
OUTPUT_FIELDS = (pa.field("verdict", pa.string()), pa.field("correct", pa.bool_()),
                 pa.field("verify_detail", pa.string()), pa.field("tests_passed", pa.int32()),
                 pa.field("tests_total", pa.int32()))


class CodeVerifyConfig(Strict):
    sandbox: SandboxConfig = SandboxConfig()
    extract: Literal["last", "first", "longest", "all"] = "last"  # which fenced python block is the program
    whole_response_fallback: bool = False  # no fenced block: take the whole answer if it compiles
    float_tolerance: float | None = Field(default=None, ge=0)  # stdout/return floats equal within this (abs or rel)
    workers: int = Field(default=2, ge=1)  # sandboxes per verifier (each runs one program at a time)
    concurrency: ActorPoolSize = 1  # Ray actors, or [min, max] to autoscale
    num_cpus: float = Field(default=0.25, gt=0)  # per actor: fractional, so the pool never starves upstream tasks


@dataclass(frozen=True)
class CodeVerdict:
    verdict: str
    correct: bool | None
    detail: str = ""
    tests_passed: int = 0
    tests_total: int = 0

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; expected one of {VERDICTS}")


# --- Reading what the sandbox observed: the program may have written anything -------------------------------------
_SHAPES = {"start": {}, "finished": {}, "case": {"case": int}, "not_plain": {"case": int, "detail": str},
           "pair": {"site": int, "value": list}, "truth": {"site": int, "value": list},
           **{event: {"error_type": str, "detail": str} for event in ("compile_error", "error", "memory")}}
_MAX_REPORT_DEPTH = 2 * 100 + 10  # a tagged value at the runner's 100 levels is about 200 levels of JSON


def parse_report(text: str, value_key: str) -> list[dict]:
    """A process's report lines as records, each field checked; a line that is not a well-formed record becomes
    {"event": "garbled"}. `value_key`: what a "value" record is about, "case" (call tests) or "site" (asserts)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        event = record.get("event") if isinstance(record, dict) else None
        shape = {value_key: int, "value": list} if event == "value" else \
            _SHAPES.get(event) if isinstance(event, str) else None
        if shape is None or any(type(record.get(k)) is not t for k, t in shape.items()) or \
                _depth(record) > _MAX_REPORT_DEPTH:
            record = {"event": "garbled", "line": line[:120]}
        records.append(record)
    return records


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack += [(child, level + 1) for child in children]
    return deepest


def _decoded(tagged: list) -> tuple[Any, str | None]:
    """(value, None), or (None, why not) for a tagged value that is not plain data or is not well formed."""
    try:
        return decode_value(tagged), None
    except TypeError as exc:
        return None, str(exc)  # the runner's "not plain data" note
    except (KeyError, ValueError, IndexError, AttributeError, RecursionError):
        return None, "a garbled value in the program's report"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals, numbers the program made up
        return f"signal {number}"


def _process_failure(result: dict, oom_kills: int) -> tuple[str, str] | None:
    """A verdict for a process that did not run to a normal end, else None."""
    events = {r["event"]: r for r in result["records"]}
    tail = result.get("stderr_tail", "").strip()[-600:]
    if "compile_error" in events:
        return "compile_error", events["compile_error"]["detail"]
    if result.get("problem") == "cpu_limit" or result["signal"] == signal.SIGXCPU:
        return "timeout", "time limit exceeded (CPU time)"
    if result.get("problem") == "wall_backstop":
        return "timeout", "time limit exceeded (stopped by the wall clock twice: the program sleeps or waits)"
    if result.get("problem") == "output_limit":
        return "runtime_error", "output limit exceeded"
    if "garbled" in events:
        return "runtime_error", f"the program wrote on the harness's report descriptor: {events['garbled']['line']!r}"
    if "memory" in events or result["exit_code"] == EXIT_MEMORY or (result["signal"] == signal.SIGKILL and oom_kills):
        return "memory_limit", "memory limit exceeded"
    if result["signal"]:
        return "runtime_error", f"killed by {_signal_name(result['signal'])}; stderr: {tail}"
    if "error" in events:
        return "runtime_error", f"{events['error']['detail']}; stderr: {tail}"
    if result["exit_code"]:
        return "runtime_error", f"exit code {result['exit_code']}; stderr: {tail}"
    return None


def _test_process_failure(result: dict, oom_kills: int) -> CodeVerdict | None:
    """Assert tests: a verdict from the test process, which the program reaches only through its replies."""
    tests = result["test_process"]
    error = next((r for r in tests["records"] if r["event"] == "error"), {})
    if error.get("error_type") == UnsupportedTest.__name__:  # the test code's arguments, never the program's doing
        return CodeVerdict("sandbox_error", None, error["detail"])
    if error.get("error_type") == ProgramEnded.__name__:
        return CodeVerdict("wrong_answer", False, "the tests did not run to the end (the program exited)")
    failure = _process_failure(dict(tests, stderr_tail=result["stderr_tail"]), oom_kills)
    if failure is None:
        return None
    kind = error.get("error_type")
    if failure[0] == "runtime_error" and (kind == "AssertionError" or kind == "TypeError" and
                                          "not plain data" in error["detail"]):
        return CodeVerdict("wrong_answer", False, failure[1])  # the test's own assert failed, or a fake value came
    return CodeVerdict(failure[0], False, failure[1])


def _names_from_program(test_code: str) -> list[str]:
    """Names the test code uses but never binds: the entry point, and helpers the prompt defined and the program
    carries (HumanEval/32's `poly`). The test process takes them from the program, built-ins excepted."""
    loaded, bound = set(), set()
    for node in ast.walk(ast.parse(test_code)):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return sorted(name for name in loaded - bound if not name.startswith("__adaptcot_"))


class CodeVerifier:
    """A pool of warm sandboxes. `verify` is thread-safe; `verify_many` runs up to `workers` programs at once."""

    def __init__(self, config: CodeVerifyConfig = CodeVerifyConfig()):
        self.config = config
        self._idle: queue.Queue[Sandbox] = queue.Queue()
        self._all = [Sandbox(config.sandbox) for _ in range(config.workers)]
        for sandbox in self._all:
            self._idle.put(sandbox)
        self._threads = ThreadPoolExecutor(config.workers, thread_name_prefix="sandbox")

    def close(self) -> None:
        self._threads.shutdown()
        for sandbox in self._all:
            sandbox.close()

    def __enter__(self) -> CodeVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify_many(self, pairs: list[tuple[str | None, dict | None]]) -> list[CodeVerdict]:
        return list(self._threads.map(lambda pair: self.verify(*pair), pairs))

    def verify(self, response: str | None, tests: dict | None) -> CodeVerdict:
        code = extract_code(response, self.config.extract, self.config.whole_response_fallback)
        if code is None:
            return CodeVerdict("no_answer", False, "no python code block in the answer")
        return self.run_tests(code, tests)

    def run_tests(self, code: str, tests: dict | None) -> CodeVerdict:
        kind = (tests or {}).get("kind")
        judge = {"stdin_stdout": self._stdin_stdout, "call": self._call, "assert": self._assert}.get(kind)
        if judge is None:
            raise ValueError(f"tests of kind {kind!r}: expected stdin_stdout, call or assert")
        sandbox = self._idle.get()
        try:
            return judge(sandbox, code, tests)
        except Exception as exc:  # a fault of ours or of the host: never the model's
            return CodeVerdict("sandbox_error", None, f"{type(exc).__name__}: {exc}")
        finally:
            self._idle.put(sandbox)

    def _execute(self, sandbox: Sandbox, request: dict) -> tuple[dict | None, CodeVerdict | None]:
        """The first result of a request (its reports parsed) and the program process's failure, if any.

        A lost runner, or a case stopped by the wall-clock backstop, may be the machine's fault (load, a slow
        start): the program is run once more before it is charged."""
        for _ in range(2):
            reply = sandbox.execute(request)
            if not reply["runner_lost"] and all(r["problem"] != "wall_backstop" for r in reply["results"]):
                break
        if reply["runner_lost"]:
            return None, CodeVerdict("runtime_error", False, f"the program broke the sandbox's runner, twice: "
                                     f"{reply['runner_problem']}")
        result = reply["results"][0]
        result["records"] = parse_report(result["report"], "case")
        if "test_process" in result:
            result["test_process"]["records"] = parse_report(result["test_process"]["report"], "site")
        failure = _process_failure(result, reply["oom_kills"])
        result["oom_kills"] = reply["oom_kills"]
        return result, (CodeVerdict(failure[0], False, failure[1]) if failure else None)

    def _stdin_stdout(self, sandbox: Sandbox, code: str, tests: dict) -> CodeVerdict:
        cases = tests.get("cases") or []
        for index, case in enumerate(cases):
            result, failure = self._execute(sandbox, {"kind": "stdin_stdout", "code": code,
                                                      "cases": [case.get("input") or ""]})
            if failure:
                return _at_case(failure, index, len(cases))
            same, where = outputs_match(result["stdout"], case.get("output") or "", self.config.float_tolerance)
            if not same:
                return CodeVerdict("wrong_answer", False, f"case {index + 1}/{len(cases)}: {where}", index,
                                   len(cases))
        return CodeVerdict("passed", True, f"{len(cases)}/{len(cases)} cases", len(cases), len(cases))

    def _call(self, sandbox: Sandbox, code: str, tests: dict) -> CodeVerdict:
        cases = tests.get("cases") or []
        request = {"kind": "call", "code": code, "fn_name": tests.get("fn_name"),
                   "cases": [case.get("input") or "[]" for case in cases]}
        result, failure = self._execute(sandbox, request)
        values = {} if result is None else {r["case"]: r for r in result["records"]
                                            if r["event"] in ("value", "not_plain")}
        for index, case in enumerate(cases):
            record = values.get(index)
            if record is None:
                return _at_case(failure or CodeVerdict("wrong_answer", False, "the program stopped before this "
                                                       "case ran"), index, len(cases))
            got, problem = (None, record["detail"]) if record["event"] == "not_plain" else _decoded(record["value"])
            if problem:
                return CodeVerdict("wrong_answer", False, f"case {index + 1}: {problem}", index, len(cases))
            want = json.loads(case.get("output") or "null")
            if not values_equal(got, want, self.config.float_tolerance, json_expected=True):
                return CodeVerdict("wrong_answer", False, f"case {index + 1}/{len(cases)}: expected "
                                   f"{_short(want)}, got {_short(got)}", index, len(cases))
        if failure:
            return CodeVerdict(failure.verdict, False, failure.detail, len(cases), len(cases))
        return CodeVerdict("passed", True, f"{len(cases)}/{len(cases)} cases", len(cases), len(cases))

    def _assert(self, sandbox: Sandbox, code: str, tests: dict) -> CodeVerdict:
        plan = rewrite_asserts(tests.get("test_code") or "", tests.get("entry_point"))
        total = max(1, len(plan.required))
        result, failure = self._execute(sandbox, {"kind": "assert", "code": code, "test_code": plan.code,
                                                  "program_names": _names_from_program(plan.code),
                                                  "sites": max(1, len(plan.expected), len(plan.required))})
        if result is None:
            return failure
        seen: set[int] = set()
        for record in result["test_process"]["records"]:  # sites come from the test process only
            if record["event"] not in ("value", "pair", "truth"):
                continue
            site, passed_so_far = record["site"], len(seen & plan.required)
            seen.add(site)
            problem = _assert_problem(record, plan, self.config.float_tolerance)
            if problem:
                return CodeVerdict("wrong_answer", False, f"assert #{site + 1}: {problem}", passed_so_far, total)
        passed = len(seen & plan.required)
        failure = failure or _test_process_failure(result, result["oom_kills"])
        if failure:
            return CodeVerdict(failure.verdict, failure.correct, failure.detail, passed, total)
        finished = any(r["event"] == "finished" for r in result["test_process"]["records"])
        if not finished or not plan.required <= seen:
            return CodeVerdict("wrong_answer", False, "the tests did not run to the end (the program exited or "
                               "skipped asserts)", passed, total)
        return CodeVerdict("passed", True, f"{len(seen)} asserts", total, total)


def _assert_problem(record: dict, plan: AssertPlan, tolerance: float | None) -> str | None:
    if record["event"] == "value":
        if record["site"] not in plan.expected:
            return "a report for an assert that has no expected value"
        (got, problem), want = _decoded(record["value"]), plan.expected[record["site"]]
        same = problem is None and values_equal(got, want, tolerance)
        return None if same else problem or f"expected {_short(want)}, got {_short(got)}"
    if record["event"] == "pair":
        if len(record["value"]) != 2:
            return "a garbled value in the program's report"
        (left, problem), (right, other) = (_decoded(v) for v in record["value"])
        same = problem is other is None and values_equal(left, right, tolerance)
        return None if same else problem or other or f"{_short(left)} != {_short(right)}"
    got, problem = _decoded(record["value"])
    return problem or (None if got else "assertion is false")


def _at_case(verdict: CodeVerdict, index: int, total: int) -> CodeVerdict:
    return CodeVerdict(verdict.verdict, verdict.correct, f"case {index + 1}/{total}: {verdict.detail}", index, total)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# --- Over Arrow tables, and on Ray Data ------------------------------------------------------------------------------
def verify_code_table(table: pa.Table, verifier: CodeVerifier) -> pa.Table:
    """`response`, `tests` (the pool's CODE_TESTS struct) -> the OUTPUT_FIELDS columns appended."""
    require_columns(table, INPUT_COLUMNS, "code verification")
    pairs = list(zip(table.column("response").to_pylist(), table.column("tests").to_pylist()))
    verdicts = verifier.verify_many(pairs)
    for field in OUTPUT_FIELDS:
        if field.name in table.column_names:
            table = table.drop_columns([field.name])
        values = [getattr(v, {"verify_detail": "detail"}.get(field.name, field.name)) for v in verdicts]
        table = table.append_column(field, pa.array(values, field.type))
    return table


class CodeVerifyActor:
    """Ray Data callable class: one `CodeVerifier` (its sandboxes stay warm) per actor."""

    def __init__(self, config: CodeVerifyConfig):
        self.verifier = CodeVerifier(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return verify_code_table(batch, self.verifier)

    def __del__(self):
        self.verifier.close()

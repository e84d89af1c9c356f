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
  literal stays here; `assert a == b` reports both sides, any other assert reports its value; every call of the
  entry point must return plain data. Straight-line asserts (not in a loop or branch) must all report, and the
  test code must run to its end, so a program that exits early or prints "OK" does not pass.
Verdicts: passed, wrong_answer, runtime_error, timeout, memory_limit, compile_error, no_answer (no code found) and
sandbox_error (the harness's fault: `correct` is None, never counted against the model).

Not covered: a program written against this harness's internals could forge the report of an assert whose
expected value is computed by the test code (not a literal); special judges (several right answers) and
interactive problems are not supported; programs get the standard library only (call tests run after
LeetCode's usual pre-imports: `typing`, `collections`, `heapq`, `bisect`, `itertools`, `functools`).
"""

from __future__ import annotations

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
from adaptcot.verify.code_answers import (AssertPlan, decode_value, extract_code, outputs_match, rewrite_asserts,
                                          values_equal)
from adaptcot.verify.sandbox import Sandbox, SandboxConfig
from adaptcot.verify.sandbox_runner import EXIT_MEMORY

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


# --- Judging what the sandbox observed ------------------------------------------------------------------------------
def _process_failure(result: dict, oom_kills: int) -> tuple[str, str] | None:
    """A verdict for a test process that did not run to a normal end, else None."""
    events = {r.get("event"): r for r in result["records"]}
    tail = result["stderr_tail"].strip()[-600:]
    if "compile_error" in events:
        return "compile_error", events["compile_error"]["detail"]
    if result["problem"] == "timeout" or result["signal"] == signal.SIGXCPU:
        return "timeout", "time limit exceeded"
    if result["problem"] == "output_limit":
        return "runtime_error", "output limit exceeded"
    if "memory" in events or result["exit_code"] == EXIT_MEMORY or (result["signal"] == signal.SIGKILL and oom_kills):
        return "memory_limit", "memory limit exceeded"
    if result["signal"]:
        return "runtime_error", f"killed by {signal.Signals(result['signal']).name}; stderr: {tail}"
    if "error" in events:
        return "runtime_error", f"{events['error']['detail']}; stderr: {tail}"
    if result["exit_code"]:
        return "runtime_error", f"exit code {result['exit_code']}; stderr: {tail}"
    return None


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
        reply = sandbox.execute(request)
        if reply.get("status") == "sandbox_error":
            return None, CodeVerdict("sandbox_error", None, reply.get("detail", ""))
        if reply["runner_lost"]:
            return None, CodeVerdict("runtime_error", False, "the program broke the sandbox's runner")
        result = reply["results"][0]
        failure = _process_failure(result, reply["oom_kills"])
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
                                            if r.get("event") in ("value", "not_plain")}
        for index, case in enumerate(cases):
            record = values.get(index)
            if record is None:
                return _at_case(failure or CodeVerdict("wrong_answer", False, "the program stopped before this "
                                                       "case ran"), index, len(cases))
            if record["event"] == "not_plain":
                return CodeVerdict("wrong_answer", False, f"case {index + 1}: {record['detail']}", index, len(cases))
            got, want = decode_value(record["value"]), json.loads(case.get("output") or "null")
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
                                                  "sites": max(1, len(plan.expected), len(plan.required))})
        if result is None:
            return failure
        seen: set[int] = set()
        for record in result["records"]:
            if record.get("event") not in ("value", "pair", "truth"):
                continue
            site, passed_so_far = record["site"], len(seen & plan.required)
            seen.add(site)
            problem = _assert_problem(record, plan, self.config.float_tolerance)
            if problem:
                return CodeVerdict("wrong_answer", False, f"assert #{site + 1}: {problem}", passed_so_far, total)
        passed = len(seen & plan.required)
        if failure:
            verdict = failure.verdict
            if verdict == "runtime_error" and ("AssertionError" in failure.detail or
                                               "not plain data" in failure.detail):
                verdict = "wrong_answer"  # the test code's own assert failed, or the function returned a fake value
            return CodeVerdict(verdict, False, failure.detail, passed, total)
        finished = any(r.get("event") == "finished" for r in result["records"])
        if not finished or not plan.required <= seen:
            return CodeVerdict("wrong_answer", False, "the tests did not run to the end (the program exited or "
                               "skipped asserts)", passed, total)
        return CodeVerdict("passed", True, f"{len(seen)} asserts", total, total)


def _assert_problem(record: dict, plan: AssertPlan, tolerance: float | None) -> str | None:
    try:
        if record["event"] == "value":
            got, want = decode_value(record["value"]), plan.expected[record["site"]]
            return None if values_equal(got, want, tolerance) else f"expected {_short(want)}, got {_short(got)}"
        if record["event"] == "pair":
            left, right = (decode_value(v) for v in record["value"])
            return None if values_equal(left, right, tolerance) else f"{_short(left)} != {_short(right)}"
        return None if decode_value(record["value"]) else "assertion is false"
    except TypeError as exc:
        return str(exc)
    except (KeyError, ValueError, IndexError):
        return "garbled report from the program"


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

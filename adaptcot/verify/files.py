"""`adaptcot verify --input FILE --output FILE`: verdicts for (question, response) rows, math and code alike.

Each input row (JSONL or Parquet; format in docs/verification.md) holds a `response` and either a math
`reference_answer` or code `tests`; the output is every input row with `verdict`, `correct`, `verify_detail`,
`answer_rule`, `tests_passed` and `tests_total` added, in input order. A row that cannot be verified (no response, no reference
or tests, tests of an unknown kind) goes to a rejects file next to the output with its reason; the run goes on.
Math goes through `math_answers.MathVerifier` (time-limited worker processes; a row's own `finish_reason`, if it
has one, says whether it finished, which `math_extraction="math_verify"` needs to read a last expression), code
through `code_tests.CodeVerifier` (warm sandboxes). Runs locally without Ray; Ray jobs use the stages' actors instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from adaptcot.common.schemas import TEST_KINDS
from adaptcot.common.terminal import bar
from adaptcot.pool.assert_styles import UnusableTests, runnable_test_code
from adaptcot.pool.sources import batched, open_source
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
from adaptcot.verify.math_answers import Extraction, MathVerifier, is_finished

VERDICT_COLUMNS = ("verdict", "correct", "verify_detail", "answer_rule", "tests_passed", "tests_total")
REJECT_REASONS = {"malformed_row": "not a record (bad JSON line, invalid UTF-8)",
                  "missing_response": "no `response` text",
                  "missing_answer": "a math row without `reference_answer`",
                  "bad_tests": "a code row whose `tests` are absent, not JSON, or of an unknown kind",
                  "unknown_domain": "`domain` is neither math nor code"}


@dataclass
class VerifyReport:
    rows: int = 0
    verdicts: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)
    code_isolation: str | None = None  # what every code verdict ran under (the sandbox never falls back)
    math_extraction: str | None = None  # how math answers were read (math_answers.Extraction)
    rules: Counter = field(default_factory=Counter)  # answer rule -> math rows whose answer it found
    unfinished: int = 0  # math rows without finish_reason "stop": never read by the last-expression rule

    def lines(self) -> list[str]:
        out = [f"verified {self.rows} rows: " + ", ".join(f"{v} {n}" for v, n in sorted(self.verdicts.items()))]
        if self.math_extraction:
            found = ", ".join(f"{r} {n}" for r, n in sorted(self.rules.items())) or "none"
            out.append(f"math answers found by rule: {found} (extraction {self.math_extraction}; "
                       f"{self.unfinished} rows without finish_reason 'stop' read without the last expression)")
        if self.code_isolation:
            out.append(f"code verdicts ran under isolation: {self.code_isolation}")
        if self.rejects:
            out.append("rejected: " + ", ".join(f"{r} {n}" for r, n in sorted(self.rejects.items())))
        return out


class RowProblem(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def domain_of(record: dict[str, Any]) -> str:
    """The row's `domain`; default: code if it has `tests`, else math."""
    return record.get("domain") or ("code" if record.get("tests") is not None else "math")


def check_row(record: dict[str, Any]) -> tuple[str, str, Any]:
    """(domain, response, reference answer or tests dict) of a row, or RowProblem."""
    response = record.get("response")
    if not isinstance(response, str) or not response.strip():
        raise RowProblem("missing_response", "the row has no response text")
    tests, reference = record.get("tests"), record.get("reference_answer", record.get("answer"))
    domain = domain_of(record)
    if domain == "math":
        if reference is None or not str(reference).strip():
            raise RowProblem("missing_answer", "math row without reference_answer")
        return domain, response, str(reference)
    if domain != "code":
        raise RowProblem("unknown_domain", f"domain {domain!r}: expected math or code")
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as exc:
            raise RowProblem("bad_tests", f"tests are not JSON: {exc}") from None
    if not isinstance(tests, dict) or tests.get("kind") not in TEST_KINDS:
        raise RowProblem("bad_tests", f"tests need a kind of {', '.join(TEST_KINDS)}")
    if tests["kind"] == "assert" and not tests.get("test_code"):
        raise RowProblem("bad_tests", "assert tests without test_code")
    if tests["kind"] == "assert":  # as the pool importer stores them: tests that cannot fail are refused
        try:
            tests = dict(tests, test_code=runnable_test_code(tests["test_code"], tests.get("entry_point")))
        except UnusableTests as exc:
            raise RowProblem("bad_tests", str(exc)) from None
    if tests["kind"] != "assert" and not tests.get("cases"):
        raise RowProblem("bad_tests", f"{tests['kind']} tests without cases")
    if tests["kind"] == "call" and not tests.get("fn_name"):
        raise RowProblem("bad_tests", "call tests without fn_name")
    return domain, response, tests


def verify_records(records: list[dict], math: MathVerifier, code: CodeVerifier) -> list[dict]:
    """The verdict columns for well-formed rows (see `check_row`), in order."""
    checked = [check_row(r) for r in records]
    math_at = [i for i, (domain, _, _) in enumerate(checked) if domain == "math"]
    code_at = [i for i, (domain, _, _) in enumerate(checked) if domain == "code"]
    out: list[dict] = [{}] * len(records)
    finished = [is_finished(records[i].get("finish_reason")) for i in math_at]
    for i, v in zip(math_at, math.verify_many([checked[i][1:] for i in math_at], finished)):
        out[i] = {"verdict": v.verdict, "correct": v.correct, "verify_detail": v.detail, "answer_rule": v.rule,
                  "tests_passed": None, "tests_total": None}
    for i, v in zip(code_at, code.verify_many([checked[i][1:] for i in code_at])):
        out[i] = {"verdict": v.verdict, "correct": v.correct, "verify_detail": v.detail, "answer_rule": None,
                  "tests_passed": v.tests_passed, "tests_total": v.tests_total}
    return out


def rejects_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name.split(".")[0] + ".rejects.jsonl")


def verify_file(input_path: str, output: str, code_config: CodeVerifyConfig = CodeVerifyConfig(),
                math_workers: int = 1, math_timeout_s: float = 5.0, batch_rows: int = 256,
                math_extraction: Extraction = "math_verify") -> VerifyReport:
    """Verify every row of `input_path` into `output` (.jsonl or .parquet); rejects into `rejects_path(output)`."""
    source = open_source(input_path)  # fails here, before any sandbox starts, if the input cannot be read
    output_path = Path(output)
    if output_path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"--output {output}: expected a .jsonl or .parquet file")
    report, parquet_rows = VerifyReport(), []  # Parquet output is built at the end; JSONL streams
    tmp_out = output_path.with_name(output_path.name + ".tmp")
    tmp_rejects = Path(f"{rejects_path(output)}.tmp")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with MathVerifier(math_workers, math_timeout_s, math_extraction) as math, CodeVerifier(code_config) as code, \
            open(tmp_rejects, "w") as rejects, open(tmp_out, "w") as jsonl, \
            bar(desc="verify", unit="row") as progress:
        for batch in batched(source.rows(), batch_rows):
            progress.update(len(batch))
            good = []
            for raw in batch:
                problem = raw.problem or _problem_of(raw.record)
                if problem:
                    report.rejects[problem[0]] += 1
                    rejects.write(json.dumps({"source": raw.source, "source_row": raw.row, "reason": problem[0],
                                              "detail": problem[1], "raw": problem[2]}) + "\n")
                else:
                    good.append(raw.record)
            rows = [dict(record, **verdict) for record, verdict in zip(good, verify_records(good, math, code))]
            report.rows += len(rows)
            report.verdicts.update(r["verdict"] for r in rows)
            if any(r.get("domain") == "code" for r in good):
                report.code_isolation = code_config.sandbox.isolation
            _count_math(report, rows, math_extraction)
            if output_path.suffix == ".jsonl":
                jsonl.writelines(json.dumps(r, default=str) + "\n" for r in rows)
            else:
                parquet_rows.extend(rows)
    if output_path.suffix == ".parquet":
        pq.write_table(_rows_to_table(parquet_rows), tmp_out)
    os.replace(tmp_out, output_path)  # nothing half-written is ever left under the output's name
    os.replace(tmp_rejects, rejects_path(output))
    return report


def _count_math(report: VerifyReport, rows: list[dict], extraction: str) -> None:
    """Which rule found each math answer, and how many math rows could not use the last expression."""
    math_rows = [r for r in rows if domain_of(r) == "math"]
    if math_rows:
        report.math_extraction = extraction
    report.rules.update(r["answer_rule"] for r in math_rows if r["answer_rule"])
    report.unfinished += sum(not is_finished(r.get("finish_reason")) for r in math_rows)


def _rows_to_table(rows: list[dict]) -> pa.Table:
    """Every key of every row becomes a column; a column whose values mix types (a `tests` dict in one row, JSON
    text in another) is written as JSON text."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            columns[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v, default=str)
                                      for v in values], pa.string())
    return pa.table(columns)


def _problem_of(record: dict) -> tuple[str, str, str] | None:
    try:
        check_row(record)
        return None
    except RowProblem as exc:
        return exc.reason, str(exc), json.dumps(record, default=str)[:4096]

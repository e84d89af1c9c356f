"""Grade a question pool for one student: answer, verify, PRM-score the wrong answers, level, store in the bank.

One streaming Ray Data pipeline (the pool is never collected into one process):

    pool parquet -> todo (rows x n samples, minus samples already in the bank's attempts)
      -> student answers (ray.data.llm vLLM processor) -> attempt rows
      -> verification (one actor stage: math-verify worker processes for math, warm sandboxes for code)
      -> PRM scoring of wrong answers (vLLM pooling actors; `prm` mode only) -> part files in the bank

Part files are committed as they are written (step scores first, then the attempts part of the same name, which is
the commit mark), so a killed run keeps what it finished and a rerun generates only the samples not yet stored.
`finalize_bank` then turns the attempts of every question whose n samples are all stored into one bank row.
A code question's program is run against its tests in the sandbox (`verify_code.py`); a sandbox fault makes the
attempt `sandbox_error` with `correct` null, which, like an engine error, leaves the question ungradable, never failed.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptcot import bank, schemas
from adaptcot.answering import StudentConfig, answer_processor, expand_samples, to_attempt_row
from adaptcot.levels import GraderConfig, grade_questions, grader_id
from adaptcot.prm_scoring import PRMConfig, PRMScorer, check_prm
from adaptcot.sandbox import Sandbox
from adaptcot.verify_code import CodeVerifier, CodeVerifyConfig, verify_code_table
from adaptcot.verify_math import MathVerifier, verify_table


class VerifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    workers: int = Field(default=1, ge=1)  # verifier processes per actor
    timeout_s: float = Field(default=5.0, gt=0)
    concurrency: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.25, gt=0)
    code: CodeVerifyConfig = CodeVerifyConfig()  # the sandbox and comparison settings for code answers


class GradeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pool: str | None = None  # pool directory (from `pool import`); in a job config, default: the job's pool
    bank: str | None = None  # bank root; in a job config, default: <run_dir>/bank
    student: StudentConfig
    prm: PRMConfig | None = None
    grader: GraderConfig = GraderConfig()
    verify: VerifyConfig = VerifyConfig()

    @model_validator(mode="after")
    def _prm_for_prm_mode(self):
        if self.grader.mode == "prm" and self.prm is None:
            raise ValueError("grader.mode is 'prm' but no prm model is configured (set prm.model, or "
                             "grader.mode: pass_rate)")
        return self

    def grader_id(self) -> str:
        answering = self.student.answering_key()
        if self.grader.mode == "prm":
            answering["prm"] = self.prm.scoring_key()
        return grader_id(self.grader, answering)


@dataclass
class GradeReport:
    student: str
    grader_id: str
    math_questions: int = 0
    code_questions: int = 0
    samples_todo: int = 0
    generated: int = 0
    generation_errors: int = 0
    newly_graded: int = 0
    ungradable: int = 0
    seconds: float = 0.0
    levels: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"student {self.student} (grader {self.grader_id}): {self.math_questions} math and "
               f"{self.code_questions} code questions, {self.samples_todo} samples to generate, {self.generated} "
               f"generated ({self.generation_errors} errors), {self.newly_graded} newly graded, "
               f"{self.ungradable} ungradable"]
        out.append("  levels: " + ", ".join(f"{k} {v}" for k, v in self.levels.items()))
        return out


# --- preflight -------------------------------------------------------------------------------------------------
def check_model_path(model: str, what: str) -> None:
    """A local model path must exist; a hub id (`org/name`) is left to the loader."""
    looks_local = model.startswith(("/", ".", "~")) or Path(model).exists() or model.count("/") != 1
    if looks_local and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"{what} model not found: {model} (a local directory, or a hub id like org/name)")


def preflight(cfg: GradeConfig) -> None:
    """Everything that can fail before Ray starts: paths, the PRM's step token, the sandbox if there is code."""
    if not Path(cfg.pool).is_dir():
        raise FileNotFoundError(f"pool not found: {cfg.pool} (create it with `adaptcot pool import`)")
    check_model_path(cfg.student.model, "student")
    if cfg.grader.mode == "prm":
        check_model_path(cfg.prm.model, "PRM")
        check_prm(cfg.prm)
    domains = pads.dataset(str(Path(cfg.pool) / "pool"), format="parquet").to_table(columns=["domain"])["domain"]
    if pc.any(pc.equal(domains, "code")).as_py():
        with Sandbox(cfg.verify.code.sandbox) as sandbox:  # fails here if this host cannot contain programs
            sandbox.start()


# --- pipeline stages ------------------------------------------------------------------------------------------
POOL_COLUMNS = ["question_id", "domain", "question", "reference_answer", "tests", "starter_code"]


def _sample_keys(question_ids: pa.Array, sample_index: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(question_ids, pc.cast(sample_index, pa.string()), "#")


def select_todo(batch: pa.Table, n: int, done: pa.Array) -> pa.Table:
    """Rows of a pool batch, expanded to n samples, without the samples already stored.

    Code tests travel as JSON text (`tests_json`): a struct column that is all null in math-only blocks would not
    unify with the struct of code blocks downstream."""
    if "tests" in batch.column_names:
        tests = [None if t is None else json.dumps(t) for t in batch["tests"].to_pylist()]
        batch = batch.drop_columns(["tests"]).append_column("tests_json", pa.array(tests, pa.string()))
    expanded = expand_samples(batch, n)
    if len(done):
        stored = pc.is_in(_sample_keys(expanded["question_id"], expanded["sample_index"]), value_set=done)
        expanded = expanded.filter(pc.invert(stored))
    return expanded


def verify_attempts(batch: pa.Table, math: MathVerifier, code: Callable[[], CodeVerifier]) -> pa.Table:
    """Verdicts for a batch of attempts of both domains, row order kept (`code` builds the sandboxes when needed)."""
    order = pa.array(range(batch.num_rows), pa.int64())
    batch = batch.append_column("_row", order)
    is_math = pc.equal(batch["domain"], "math")
    parts = [verify_table(batch.filter(is_math), math)]
    code_rows = batch.filter(pc.invert(is_math))
    if code_rows.num_rows:
        tests = [None if t is None else json.loads(t) for t in code_rows["tests_json"].to_pylist()]
        checked = verify_code_table(code_rows.append_column("tests", [tests]), code())
        parts.append(checked.select(parts[0].column_names))
    out = pa.concat_tables(parts)
    out = out.take(pc.sort_indices(out["_row"]))
    if out.num_rows != batch.num_rows:  # every row comes out exactly once
        raise RuntimeError(f"verification: {batch.num_rows} rows in, {out.num_rows} out")
    return out.drop_columns(["_row"])


class AttemptVerifier:
    """Ray Data stage: math-verify or sandbox verdicts; an attempt the engine refused keeps verdict `error`."""

    def __init__(self, workers: int, timeout_s: float, code: CodeVerifyConfig = CodeVerifyConfig()):
        self.verifier = MathVerifier(workers=workers, timeout_s=timeout_s)
        self.code_config, self._code = code, None

    def _code_verifier(self) -> CodeVerifier:
        if self._code is None:  # sandboxes start on the first code attempt: a math-only job never needs them
            self._code = CodeVerifier(self.code_config)
        return self._code

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = verify_attempts(batch, self.verifier, self._code_verifier)
        failed = pc.is_valid(batch["error"])
        verdict = pc.if_else(failed, "error", batch["verdict"])
        correct = pc.if_else(failed, pa.scalar(None, pa.bool_()), batch["correct"])
        batch = batch.set_column(batch.schema.get_field_index("verdict"), "verdict", verdict)
        return batch.set_column(batch.schema.get_field_index("correct"), "correct", correct)


def write_attempts(batch: pa.Table, root: str, student: str, gid: str, prm_name: str | None) -> pa.Table:
    """Commit one batch: step scores part, then the attempts part of the same name (the commit mark)."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    n = batch.num_rows
    batch = batch.append_column("student", pa.array([student] * n, pa.string()))
    if "prm_score" in batch.schema.names:
        scored = batch.filter(pc.or_(pc.is_valid(batch["step_scores"]), pc.is_valid(batch["prm_error"])))
        scored = scored.append_column("prm", pa.array([prm_name] * scored.num_rows, pa.string()))
        bank.write_part(scored, bank.partition_dir(root, "step_scores", student, gid), schemas.STEP_SCORES, name)
    bank.write_part(batch, bank.partition_dir(root, "attempts", student, gid), schemas.ATTEMPTS, name)
    errors = pc.sum(pc.is_valid(batch["error"])).as_py() or 0
    return pa.table({"written": [n], "errors": [errors]})


# --- driver ---------------------------------------------------------------------------------------------------
def _count_todo(pool_dir: str, n: int, done: pa.Array) -> tuple[int, int, int]:
    """(math questions, code questions, samples to generate), streaming the pool's id and domain columns."""
    n_math = n_code = todo = 0
    scanner = pads.dataset(pool_dir, format="parquet").scanner(columns=["question_id", "domain"])
    for batch in scanner.to_batches():
        table = pa.Table.from_batches([batch])
        n_math += pc.sum(pc.equal(table["domain"], "math")).as_py() or 0
        n_code += table.num_rows - (pc.sum(pc.equal(table["domain"], "math")).as_py() or 0)
        todo += select_todo(table, n, done).num_rows
    return n_math, n_code, todo


def run_pipeline(cfg: GradeConfig, gid: str, done: pa.Array) -> tuple[int, int]:
    """Answer, verify, score and store every sample still to do; (generated, errors)."""
    import ray

    student, light = cfg.student, cfg.student.resources.cpus_per_light_stage
    pool = ray.data.read_parquet(str(Path(cfg.pool) / "pool"), columns=POOL_COLUMNS, num_cpus=light)
    todo = pool.map_batches(select_todo, fn_kwargs={"n": student.sampling.n, "done": done},
                            batch_format="pyarrow", num_cpus=light)
    attempts = answer_processor(student)(todo).map(to_attempt_row, num_cpus=light)
    attempts = attempts.map_batches(AttemptVerifier, fn_constructor_kwargs={"workers": cfg.verify.workers,
                                    "timeout_s": cfg.verify.timeout_s, "code": cfg.verify.code},
                                    concurrency=cfg.verify.concurrency,
                                    num_cpus=cfg.verify.num_cpus, batch_format="pyarrow")
    prm_name = None
    if cfg.grader.mode == "prm":
        prm = cfg.prm
        prm_name = prm.name or Path(prm.model).name
        attempts = attempts.map_batches(
            PRMScorer, fn_constructor_kwargs={"cfg": prm, "aggregation": cfg.grader.aggregation,
                                              "step_rule": cfg.grader.step_rule},
            concurrency=prm.concurrency, num_cpus=prm.num_cpus, num_gpus=prm.num_gpus or None,
            batch_size=prm.batch_size, batch_format="pyarrow")
    written = attempts.map_batches(write_attempts, fn_kwargs={"root": cfg.bank, "student": student.display_name,
                                   "gid": gid, "prm_name": prm_name}, batch_format="pyarrow", num_cpus=light)
    counts = written.to_arrow_refs()
    tables = [ray.get(ref) for ref in counts]
    generated = sum(pc.sum(t["written"]).as_py() or 0 for t in tables)
    errors = sum(pc.sum(t["errors"]).as_py() or 0 for t in tables)
    return generated, errors


def finalize_bank(root: str, student: str, gid: str, n: int, grader: GraderConfig) -> tuple[int, int]:
    """Bank rows for questions whose n samples are all stored and that are not in the bank yet."""
    attempts = bank.read_partition(root, "attempts", student, gid,
                                   ["question_id", "domain", "sample_index", "correct"])
    scores = bank.read_partition(root, "step_scores", student, gid, ["question_id", "sample_index", "prm_score"])
    joined = attempts.join(scores, ["question_id", "sample_index"], join_type="left outer")
    per_question = joined.group_by("question_id").aggregate([("sample_index", "count_distinct")])
    complete = per_question.filter(pc.greater_equal(per_question["sample_index_count_distinct"], n))["question_id"]
    graded = bank.read_partition(root, "bank", student, gid, ["question_id"])["question_id"]
    new = pc.and_(pc.is_in(joined["question_id"], value_set=complete),
                  pc.invert(pc.is_in(joined["question_id"], value_set=graded)))
    ref = str(bank.partition_dir(root, "attempts", student, gid))
    rows, ungradable = grade_questions(joined.filter(new), grader, student, gid, ref)
    bank.write_part(rows, bank.partition_dir(root, "bank", student, gid), schemas.BANK)
    return rows.num_rows, len(ungradable)


def grade(cfg: GradeConfig) -> GradeReport:
    """Grade `cfg.pool` for `cfg.student` into `cfg.bank` (Ray must be initialised)."""
    started = time.time()
    student, gid = cfg.student.display_name, cfg.grader_id()
    bank.save_grader(cfg.bank, gid, {"grader": cfg.grader.model_dump(mode="json"),
                                     "student": cfg.student.answering_key(),
                                     "prm": cfg.prm.scoring_key() if cfg.prm else None})
    bank.remove_uncommitted(cfg.bank, student, gid)
    stored = bank.read_partition(cfg.bank, "attempts", student, gid, ["question_id", "sample_index"])
    done = _sample_keys(stored["question_id"], stored["sample_index"]).combine_chunks() if stored.num_rows \
        else pa.array([], pa.string())
    report = GradeReport(student=student, grader_id=gid)
    report.math_questions, report.code_questions, report.samples_todo = _count_todo(
        str(Path(cfg.pool) / "pool"), cfg.student.sampling.n, done)
    if report.samples_todo:
        report.generated, report.generation_errors = run_pipeline(cfg, gid, done)
    report.newly_graded, report.ungradable = finalize_bank(cfg.bank, student, gid, cfg.student.sampling.n,
                                                          cfg.grader)
    levels = bank.read_partition(cfg.bank, "bank", student, gid, ["level"])["level"].to_pylist()
    report.levels = {lv.value: levels.count(lv.value) for lv in schemas.LEVELS_EASIEST_FIRST}
    report.seconds = round(time.time() - started, 1)
    return report


def report_dict(report: GradeReport) -> dict:
    return asdict(report)

"""Grade a question pool for one student: answer, verify, PRM-score the wrong answers, level, store in the bank.

One streaming Ray Data pipeline (the pool is never collected into one process):

    pool parquet -> todo (rows x n samples, minus samples already in the bank's attempts)
      -> student answers (ray.data.llm vLLM processor) -> attempt rows
      -> verification (one actor stage: math-verify worker processes for math, warm sandboxes for code)
      -> PRM scoring of wrong answers (vLLM pooling actors; `prm` mode only) -> part files in the bank

Part files are committed as they are written (step scores first, then the attempts part of the same name, which is
the commit mark), so a killed run keeps what it finished and a rerun generates only the samples not yet stored.
`finalize_bank` then turns the attempts of every question whose n samples are all stored into one bank row.
A code question's program is run against its tests in the sandbox (`verify/code_tests.py`); a sandbox fault makes the
attempt `sandbox_error` with `correct` null, which, like an engine error, leaves the question ungradable, never failed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import model_validator

from adaptcot.common import schemas, storage
from adaptcot.common.settings import Strict
from adaptcot.common.terminal import bar
from adaptcot.grade import bank
from adaptcot.grade.answering import StudentConfig, answer_processor, expand_samples, to_attempt_row
from adaptcot.grade.finalize import finalize_bank
from adaptcot.grade.levels import GraderConfig, grader_id
from adaptcot.grade.prm import PRMConfig, PRMScorer, check_prm
from adaptcot.verify.attempts import VerifyConfig, verify_dataset
from adaptcot.verify.sandbox import Sandbox


class GradeConfig(Strict):
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
    code_isolation: str | None = None  # what every code verdict ran under (the sandbox never falls back)

    def lines(self) -> list[str]:
        out = [f"student {self.student} (grader {self.grader_id}): {self.math_questions} math and "
               f"{self.code_questions} code questions, {self.samples_todo} samples to generate, {self.generated} "
               f"generated ({self.generation_errors} errors), {self.newly_graded} newly graded, "
               f"{self.ungradable} ungradable"
               + (f"; code verdicts under isolation: {self.code_isolation}" if self.code_isolation else "")]
        out.append("  bank levels (every question graded for this student): "
                   + ", ".join(f"{k} {v}" for k, v in self.levels.items()))
        return out


# --- preflight -------------------------------------------------------------------------------------------------
def check_model_path(model: str, what: str, remote_ok: bool = True) -> None:
    """A local model path must exist; a hub id (`org/name`) is left to the loader, and so is a cloud URI
    (`ray.data.llm` downloads s3:// and gs:// models to each node) where `remote_ok`."""
    if storage.is_remote(model):
        if not remote_ok:
            raise ValueError(f"{what} model {model}: give a local directory or a hub id (this stage loads it "
                             "with vllm.LLM, which does not read cloud URIs)")
        return
    looks_local = model.startswith(("/", ".", "~")) or Path(model).exists() or model.count("/") != 1
    if looks_local and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"{what} model not found: {model} (a local directory, or a hub id like org/name)")


def pool_has_code(pool: str) -> bool:
    domains = storage.dataset(storage.list_files(storage.join(pool, "pool"), "*.parquet")).to_table(
        columns=["domain"])["domain"]
    return pc.any(pc.equal(domains, "code")).as_py()


def preflight(cfg: GradeConfig) -> None:
    """Everything that can fail before Ray starts: paths, the PRM's step token, the sandbox if there is code."""
    check_model_path(cfg.student.model, "student")
    if cfg.grader.mode == "prm":
        check_model_path(cfg.prm.model, "PRM", remote_ok=False)
        check_prm(cfg.prm)
    pool_files = storage.list_files(storage.join(cfg.pool, "pool"), "*.parquet")
    if not pool_files:
        raise FileNotFoundError(f"pool not found or empty: {cfg.pool} (create it with `adaptcot pool import`)")
    if pool_has_code(cfg.pool):
        with Sandbox(cfg.verify.code.sandbox) as sandbox:  # fails here if this host cannot contain programs
            sandbox.start()


# --- pipeline stages ------------------------------------------------------------------------------------------
POOL_COLUMNS = ["question_id", "domain", "question", "reference_answer", "tests", "starter_code"]


def _sample_keys(question_ids: pa.Array, sample_index: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(question_ids, pc.cast(sample_index, pa.string()), "#")


def select_todo(batch: pa.Table, n: int, done: pa.Array | None = None) -> pa.Table:
    """Rows of a pool batch, expanded to n samples (minus any in `done`), each with its `sample_key`.

    Code tests travel as JSON text (`schemas.with_tests_json`)."""
    expanded = expand_samples(schemas.with_tests_json(batch), n)
    keys = _sample_keys(expanded["question_id"], expanded["sample_index"])
    if done is not None and len(done):
        expanded = expanded.filter(pc.invert(pc.is_in(keys, value_set=done)))
        keys = _sample_keys(expanded["question_id"], expanded["sample_index"])
    return expanded.append_column("sample_key", keys)


def _sample_key_only(batch: pa.Table) -> pa.Table:
    return pa.table({"sample_key": _sample_keys(batch["question_id"], batch["sample_index"])})


def write_attempts(batch: pa.Table, root: str, student: str, gid: str, prm_name: str | None) -> pa.Table:
    """Commit one batch: step scores part, then the attempts part of the same name (the commit mark).

    The name is a hash of the batch's sample keys: when Ray re-runs this task (its node died after it wrote, and
    the lineage is replayed), the rerun overwrites the same files instead of storing the samples twice."""
    keys = sorted(_sample_keys(batch["question_id"], batch["sample_index"]).to_pylist())
    name = f"part-{hashlib.sha256(chr(10).join(keys).encode()).hexdigest()[:32]}.parquet"
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
def _count_domains(pool_files: list[str]) -> tuple[int, int]:
    """(math questions, code questions), streaming the pool's domain column."""
    n_math = n_all = 0
    for batch in storage.dataset(pool_files).scanner(columns=["domain"]).to_batches():
        n_math += pc.sum(pc.equal(batch.column(0), "math")).as_py() or 0
        n_all += batch.num_rows
    return n_math, n_all - n_math


def todo_dataset(cfg: GradeConfig, gid: str, pool_files: list[str],
                 in_process_max_rows: int = bank.IN_PROCESS_MAX_ROWS) -> tuple[object, int]:
    """(the pool's questions x n samples minus the samples already stored for this student and grader, how many).

    Up to `in_process_max_rows` stored samples travel to every task as a set of keys; more are removed by a
    distributed anti-join on the sample key (a bank of millions of attempts is no set to send around), whose
    result is materialized (object store, spilled to disk when large) so that the job can tell how many are left
    and start no engine when none are. Without stored samples the rows stream straight into the engines."""
    light, n = cfg.student.resources.cpus_per_light_stage, cfg.student.sampling.n
    pool = storage.ray_dataset(pool_files, POOL_COLUMNS, light)
    stored = bank.part_files(cfg.bank, "attempts", cfg.student.display_name, gid)
    if not stored:
        rows = storage.row_count(pool_files)
        return pool.map_batches(select_todo, fn_kwargs={"n": n}, batch_format="pyarrow", num_cpus=light), rows * n
    if storage.row_count(stored) <= in_process_max_rows:
        keys = storage.dataset(stored, schemas.ATTEMPTS).to_table(columns=["question_id", "sample_index"])
        done = _sample_keys(keys["question_id"], keys["sample_index"]).combine_chunks()
        left = sum(select_todo(pa.Table.from_batches([b]), n, done).num_rows
                   for b in storage.dataset(pool_files).scanner(columns=["question_id"]).to_batches())
        return pool.map_batches(select_todo, fn_kwargs={"n": n, "done": done}, batch_format="pyarrow",
                                num_cpus=light), left
    keys = storage.ray_dataset(stored, ["question_id", "sample_index"], light).map_batches(
        _sample_key_only, batch_format="pyarrow", num_cpus=light)
    todo = pool.map_batches(select_todo, fn_kwargs={"n": n}, batch_format="pyarrow", num_cpus=light).join(
        keys, join_type="left_anti", on=("sample_key",), num_partitions=storage.hash_partitions(stored + pool_files))
    todo = todo.materialize()
    return todo, todo.count()


def run_pipeline(cfg: GradeConfig, gid: str, todo, samples: int) -> tuple[int, int]:
    """Answer, verify, score and store every sample of `todo` (`samples` of them); (generated, errors)."""
    student, light = cfg.student, cfg.student.resources.cpus_per_light_stage
    attempts = verify_dataset(answer_processor(student)(todo).map(to_attempt_row, num_cpus=light), cfg.verify,
                              expect_code=pool_has_code(cfg.pool))
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
    # Consumed as they come, so a finished block's count is in the driver before a node that holds it can die.
    generated = errors = 0
    with bar(samples, f"grade {student.display_name} on {storage.name(cfg.pool)}", "sample") as progress:
        for t in written.iter_batches(batch_format="pyarrow", batch_size=None):
            done = pc.sum(t["written"]).as_py() or 0
            generated, errors = generated + done, errors + (pc.sum(t["errors"]).as_py() or 0)
            progress.update(done)
    return generated, errors


def grade(cfg: GradeConfig) -> GradeReport:
    """Grade `cfg.pool` for `cfg.student` into `cfg.bank` (Ray must be initialised)."""
    started = time.time()
    student, gid = cfg.student.display_name, cfg.grader_id()
    bank.save_grader(cfg.bank, gid, {"grader": cfg.grader.model_dump(mode="json"),
                                     "student": cfg.student.answering_key(),
                                     "prm": cfg.prm.scoring_key() if cfg.prm else None})
    bank.remove_uncommitted(cfg.bank, student, gid)
    pool_files = storage.list_files(storage.join(cfg.pool, "pool"), "*.parquet")
    report = GradeReport(student=student, grader_id=gid)
    report.math_questions, report.code_questions = _count_domains(pool_files)
    report.code_isolation = cfg.verify.code.sandbox.isolation if report.code_questions else None
    todo, report.samples_todo = todo_dataset(cfg, gid, pool_files)
    if report.samples_todo:
        report.generated, report.generation_errors = run_pipeline(cfg, gid, todo, report.samples_todo)
    report.newly_graded, report.ungradable = finalize_bank(cfg.bank, student, gid, cfg.student.sampling.n,
                                                          cfg.grader)
    report.levels = bank.level_counts(bank.part_files(cfg.bank, "bank", student, gid))
    report.seconds = round(time.time() - started, 1)
    return report


def report_dict(report: GradeReport) -> dict:
    return asdict(report)

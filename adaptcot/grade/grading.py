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

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from adaptcot.common import schemas, storage
from adaptcot.common.settings import Strict, pool_max
from adaptcot.common.terminal import bar
from adaptcot.grade import bank, calibration, manifest, todo
from adaptcot.grade.answerer import answerer
from adaptcot.grade.answering import StudentConfig, to_attempt_row
from adaptcot.grade.finalize import finalize_bank
from adaptcot.grade.levels import CutPoints, GraderConfig, grader_id, level_warnings
from adaptcot.grade.prm import PRMConfig, PRMScorer, check_prm
from adaptcot.pool import layout as pool_layout
from adaptcot.verify.attempts import VerifyConfig, verify_dataset
from adaptcot.verify.sandbox import Sandbox


class CutPointPanel(Strict):
    """The models whose wrong answers calibrate a scorer's cut points (`thresholds: calibrated`), once per bank."""

    students: list[StudentConfig] = Field(min_length=1)
    questions: int = Field(default=600, ge=1)  # pool questions each answers: the same ones, chosen by id hash
    min_wrong_answers: int = Field(default=100, ge=1)  # per panel model, or calibration stops


class GradeConfig(Strict):
    pool: str | None = None  # pool directory (from `pool import`); in a job config, default: the job's pool
    bank: str | None = None  # bank root; in a job config, default: <run_dir>/bank
    student: StudentConfig
    prm: PRMConfig | None = None
    grader: GraderConfig = GraderConfig()
    panel: CutPointPanel | None = None  # thresholds: calibrated, where the bank has no cut points for the scorer yet
    verify: VerifyConfig = VerifyConfig()

    @model_validator(mode="after")
    def _prm_for_prm_mode(self):
        if self.grader.mode == "prm" and self.prm is None:
            raise ValueError("grader.mode is 'prm' but no prm model is configured (set prm.model, or "
                             "grader.mode: pass_rate)")
        return self

    @model_validator(mode="after")
    def _panel_for_calibrated_cuts(self):
        if self.panel is not None and self.grader.thresholds != "calibrated":
            raise ValueError("panel is set, but grader.thresholds are given: the panel calibrates cut points only "
                             "with grader.thresholds: calibrated")
        names = [s.display_name for s in self.panel.students] if self.panel else []
        if len(set(names)) != len(names):
            raise ValueError(f"panel.students must have distinct names (set `name`); got {names}")
        return self

    def grader_id(self) -> str:
        answering = self.student.answering_key()
        answering["math_extraction"] = self.verify.math_extraction  # which answers count as right
        if self.grader.mode == "prm":
            answering["prm"] = self.prm.scoring_key()
        return grader_id(self.grader, answering)

    def scorer_id(self) -> str | None:
        """The id cut points are calibrated and stored under (prm mode only)."""
        return calibration.scorer_id(self.grader.scorer_key(self.prm.scoring_key())) if self.prm else None


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
    cut_points: list | None = None     # the four cut points the wrong levels were cut at (prm mode)
    cut_points_from: str | None = None  # "given", or the calibration panel
    # The student's scored wrong answers: how many, a 10-bin histogram of their scores over [0, 1], and how many
    # were scored on their first steps only (too long for the PRM).
    wrong_answers_scored: int = 0
    score_histogram: list = field(default_factory=list)
    answers_cut_for_prm: int = 0
    warnings: list = field(default_factory=list)
    panel: list = field(default_factory=list)  # the panel's grading, when this run calibrated the cut points

    def lines(self) -> list[str]:
        out = [f"student {self.student} (grader {self.grader_id}): {self.math_questions} math and "
               f"{self.code_questions} code questions, {self.samples_todo} samples to generate, {self.generated} "
               f"generated ({self.generation_errors} errors), {self.newly_graded} newly graded, "
               f"{self.ungradable} ungradable"
               + (f"; code verdicts under isolation: {self.code_isolation}" if self.code_isolation else "")]
        out.append("  bank levels (every question graded for this student): "
                   + ", ".join(f"{k} {v}" for k, v in self.levels.items()))
        if self.cut_points:
            out.append(f"  cut points {', '.join(f'{c:.3f}' for c in self.cut_points)} ({self.cut_points_from})"
                       + (f"; {self.answers_cut_for_prm} answers scored on their first steps only (too long for the "
                          "PRM)" if self.answers_cut_for_prm else ""))
        out += [f"  warning: {w}" for w in self.warnings]
        for member in self.panel:
            out.append(f"  cut-point panel {member['student']}: {member['generated']} answers generated, "
                       f"{member['wrong_answers_scored']} wrong ones scored; levels on its questions: "
                       + ", ".join(f"{k} {v}" for k, v in member["levels"].items()))
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
    domains = storage.dataset(pool_layout.pool_files(pool)).to_table(columns=["domain"])["domain"]
    return pc.any(pc.equal(domains, "code")).as_py()


def preflight(cfg: GradeConfig) -> None:
    """Everything that can fail before Ray starts: paths, the PRM's step token, the sandbox if there is code."""
    check_model_path(cfg.student.model, "student")
    for member in cfg.panel.students if cfg.panel else []:
        check_model_path(member.model, f"panel student {member.display_name}")
    if cfg.grader.mode == "prm":
        check_model_path(cfg.prm.model, "PRM", remote_ok=False)
        check_prm(cfg.prm)
    if not pool_layout.files_by_bucket(cfg.pool):  # a pool before buckets: the command that migrates it
        raise FileNotFoundError(f"pool not found or empty: {cfg.pool} (create it with `adaptcot pool import`)")
    manifest.check_layout(cfg.bank)
    if pool_has_code(cfg.pool):
        with Sandbox(cfg.verify.code.sandbox) as sandbox:  # fails here if this host cannot contain programs
            sandbox.start()


# --- pipeline stages ------------------------------------------------------------------------------------------
def write_attempts(batch: pa.Table, root: str, student: str, gid: str, prm_name: str | None) -> pa.Table:
    """Commit one batch (`manifest.commit`): its attempts and step scores, split by question bucket, then the
    commit record. Parts are named by their content: when Ray re-runs this task (its node died after it wrote),
    the rerun overwrites the same files instead of storing the samples twice."""
    n = batch.num_rows
    batch = batch.append_column("student", pa.array([student] * n, pa.string()))
    tables = {"attempts": batch}
    if "prm_score" in batch.schema.names:
        scored = batch.filter(pc.or_(pc.is_valid(batch["step_scores"]), pc.is_valid(batch["prm_error"])))
        tables["step_scores"] = scored.append_column("prm", pa.array([prm_name] * scored.num_rows, pa.string()))
    manifest.commit(root, student, gid, tables)
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


def block_rows(cfg: GradeConfig) -> int:
    """Samples per block fed to an engine: 64 of its batches (at least 256, at most `todo.MAX_BLOCK_ROWS`)."""
    return max(256, min(todo.MAX_BLOCK_ROWS, 64 * cfg.student.resources.batch_size))


def todo_dataset(cfg: GradeConfig, gid: str, share: float | None = None) -> tuple[object, int]:
    """(the samples left to answer as a streaming Ray dataset, how many): the pool's questions x n minus the samples
    stored for this student and grader, bucket group by bucket group (`todo.py`). The count is exact: from the
    manifests where nothing is stored, from ids and stored keys elsewhere (with `share`, the share's ids)."""
    n, light = cfg.student.sampling.n, cfg.student.resources.cpus_per_light_stage
    stored = manifest.read_manifest(cfg.bank, cfg.student.display_name, gid)
    pool_rows = pool_layout.rows_by_bucket(cfg.pool)
    on_ray = sum(pool_rows.values()) * n > bank.IN_PROCESS_MAX_ROWS
    res = cfg.student.resources
    # Two blocks per engine at the least: a small todo is not all handed to the first engine up.
    groups, left = todo.todo_groups(pool_layout.files_by_bucket(cfg.pool), pool_rows, stored, n, block_rows(cfg),
                                    on_ray, min_blocks=2 * pool_max(res.concurrency), smallest_block=res.batch_size)
    if share is not None:
        ids = storage.dataset(pool_layout.pool_files(cfg.pool)).to_table(columns=["question_id"])["question_id"]
        chosen = ids.filter(pa.array(todo.in_share(ids.to_pylist(), share), pa.bool_()))
        keys = storage.dataset(stored.files("attempts"), schemas.ATTEMPTS).to_table(
            columns=["question_id", "sample_index"])
        mine = keys.filter(pc.and_(pc.is_in(keys["question_id"], value_set=chosen), pc.less(keys["sample_index"], n)))
        left = len(chosen) * n - len(pc.unique(todo.sample_keys(mine["question_id"], mine["sample_index"])))
    return todo.todo_stream(groups, n, share, light), left


def run_pipeline(cfg: GradeConfig, gid: str, todo, samples: int) -> tuple[int, int]:
    """Answer, verify, score and store every sample of `todo` (`samples` of them); (generated, errors)."""
    student, light = cfg.student, cfg.student.resources.cpus_per_light_stage
    attempts = verify_dataset(answerer(student)(todo).map(to_attempt_row, num_cpus=light), cfg.verify,
                              expect_code=pool_has_code(cfg.pool))
    prm_name = None
    if cfg.grader.mode == "prm":
        prm = cfg.prm
        prm_name = prm.name or Path(prm.model).name
        attempts = attempts.map_batches(
            PRMScorer, fn_constructor_kwargs={"cfg": prm, "aggregation": cfg.grader.aggregation,
                                              "step_rule": cfg.grader.step_rule,
                                              "step_threshold": cfg.grader.step_threshold},
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


def store_answers(cfg: GradeConfig, share: float | None = None) -> GradeReport:
    """Answer, verify and score every sample of the pool (or of its `share` subset) not yet stored for this student
    and grader; the report's counts. Levels come after, from `finalize_levels`."""
    student, gid = cfg.student.display_name, cfg.grader_id()
    manifest.check_layout(cfg.bank, create=True, bits=max(len(b) for b in pool_layout.files_by_bucket(cfg.pool)))
    bank.save_grader(cfg.bank, gid, {"grader": cfg.grader.model_dump(mode="json"),
                                     "student": cfg.student.answering_key(),
                                     "prm": cfg.prm.scoring_key() if cfg.prm else None,
                                     "scorer_id": cfg.scorer_id()})
    bank.remove_uncommitted(cfg.bank, student, gid)
    report = GradeReport(student=student, grader_id=gid)
    report.math_questions, report.code_questions = _count_domains(pool_layout.pool_files(cfg.pool))
    report.code_isolation = cfg.verify.code.sandbox.isolation if report.code_questions else None
    left, report.samples_todo = todo_dataset(cfg, gid, share=share)
    if report.samples_todo:
        report.generated, report.generation_errors = run_pipeline(cfg, gid, left, report.samples_todo)
    return report


def finalize_levels(cfg: GradeConfig, report: GradeReport, cut_points: CutPoints | None, cut_points_from: str
                    ) -> GradeReport:
    """Bank rows for the questions whose samples are all stored; the level histogram and what to warn about."""
    student, gid = cfg.student.display_name, report.grader_id
    report.newly_graded, report.ungradable = finalize_bank(cfg.bank, student, gid, cfg.student.sampling.n,
                                                          cfg.grader, cut_points=cut_points)
    report.levels = bank.level_counts(bank.part_files(cfg.bank, "bank", student, gid))
    if cfg.grader.mode == "prm":
        report.cut_points = list(cut_points or cfg.grader.thresholds)
        report.cut_points_from = cut_points_from
        scores = calibration.wrong_answer_scores(cfg.bank, student, gid)
        report.wrong_answers_scored = int(len(scores))
        report.score_histogram = np.histogram(scores, bins=10, range=(0.0, 1.0))[0].tolist()
        report.answers_cut_for_prm = answers_cut(cfg.bank, student, gid)
    report.warnings = level_warnings(report.levels)
    return report


def answers_cut(root: str, student: str, gid: str) -> int:
    files = bank.part_files(root, "step_scores", student, gid)
    if not files:
        return 0
    t = storage.dataset(files, schemas.STEP_SCORES).to_table(columns=["steps_scored", "steps_total"])
    return pc.sum(pc.fill_null(pc.less(t["steps_scored"], t["steps_total"]), False)).as_py() or 0


def calibrated_cut_points(cfg: GradeConfig) -> tuple[CutPoints | None, str, list[GradeReport]]:
    """(cut points, where they come from, the panel's reports): the given ones (None), the bank's record for this
    scorer, or, the first time, fitted on the panel's answers to a fixed share of the pool and recorded."""
    if cfg.grader.mode != "prm" or cfg.grader.thresholds != "calibrated":
        return None, "given", []
    sid = cfg.scorer_id()
    record = calibration.load(cfg.bank, sid)
    if record is None:
        if cfg.panel is None:
            raise calibration.CalibrationError(
                f"grader.thresholds is calibrated, but {cfg.bank} has no cut points for this scorer (id {sid}) and "
                "no grade.panel is set to fit them: give grade.panel.students, or thresholds")
        share = min(1.0, cfg.panel.questions / max(1, sum(pool_layout.rows_by_bucket(cfg.pool).values())))
        members = [cfg.model_copy(update={"student": s, "panel": None}) for s in cfg.panel.students]
        reports = [leased(m, store_answers, m, share) for m in members]
        record = calibration.save(cfg.bank, calibration.fit(
            cfg.bank, sid, cfg.grader.scorer_key(cfg.prm.scoring_key()),
            [(m.student.display_name, m.grader_id()) for m in members], cfg.panel.min_wrong_answers))
        source = _panel_text(record)
        return record.cut_points, source, [leased(m, finalize_levels, m, r, record.cut_points, source)
                                           for m, r in zip(members, reports)]
    return record.cut_points, _panel_text(record), []


def leased(cfg: GradeConfig, step, *args):
    """`step(*args)` holding the lease of `cfg`'s bank partition (a second grader of it stops with a message)."""
    with bank.lease(cfg.bank, cfg.student.display_name, cfg.grader_id()):
        return step(*args)


def _panel_text(record: calibration.CutPointRecord) -> str:
    return "calibrated on " + ", ".join(f"{m['student']} ({m['wrong_answers']} wrong answers)" for m in record.panel)


def grade(cfg: GradeConfig) -> GradeReport:
    """Grade `cfg.pool` for `cfg.student` into `cfg.bank` (Ray must be initialised)."""
    started = time.time()
    cut_points, cut_points_from, panel = calibrated_cut_points(cfg)
    with bank.lease(cfg.bank, cfg.student.display_name, cfg.grader_id()):
        report = finalize_levels(cfg, store_answers(cfg), cut_points, cut_points_from)
    report.panel = [asdict(r) for r in panel]
    report.seconds = round(time.time() - started, 1)
    return report


def report_dict(report: GradeReport) -> dict:
    return asdict(report)

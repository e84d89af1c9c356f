"""The one place where each stage is wired from a job config. The CLI (`adaptcot grade`, ...), `ray_jobs/*.py`, the
whole job (`pipeline.run`) and the ablation all call these functions; nothing else turns a config into stage calls.

    models     <run_dir>/models/          the tiny student, teacher and PRM (local default only)
    import     <run_dir>/pool/, eval_pool/ (raw/ for a synthetic pool)
    grade      <run_dir>/bank/            attempts, PRM step scores, one level per question (pool and eval set)
    sample     <run_dir>/samples/         samples.parquet, distribution.json, sample_report.json
    teach      <run_dir>/teach/           journal/, parts/ (every CoT as it arrived), cots.parquet, filter_report.json
    build-sft  <run_dir>/sft/             sft_records.parquet, sft_report.json
    train      <run_dir>/train/           model/, metrics.jsonl, train_report.json, ray/ (checkpoints)
    evaluate   <run_dir>/eval/<model>/    metrics.json, samples.parquet (before and after SFT)
    report     <run_dir>/report.html

Each `Stage` has a `check` (what can fail before Ray starts: paths, models, benchmark files) and a `run` that
returns a report with `lines()` (what the terminal shows) and `summary()` (what `run_summary.json` keeps). The
config a stage receives is resolved (`job/config.py`): its paths are final.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import storage
from adaptcot.evaluate.evaluation import EvalConfig, LevelsConfig, evaluate, format_metrics, load_benchmark
from adaptcot.evaluate.report import write_report
from adaptcot.grade import grading
from adaptcot.grade.grading import GradeReport
from adaptcot.job.config import JobConfig
from adaptcot.pool.importer import ImportReport, PoolImportConfig, import_pool_remote
from adaptcot.pool.sources import open_source
from adaptcot.sample.draw import SampleReport
from adaptcot.sample.draw import sample as draw_sample
from adaptcot.sft.ray_train import TrainReport
from adaptcot.sft.ray_train import train as train_on_ray
from adaptcot.sft.records import build_sft, write_records
from adaptcot.teach import teacher
from adaptcot.teach.cost import spend_lines, spend_of
from adaptcot.teach.cot_filter import FilterReport, filter_on_ray
from adaptcot.teach.journal import collect


@dataclass(frozen=True)
class Stage:
    name: str                                   # what the terminal, the logs and `run_summary.json` call it
    section: str | None                         # the config section it needs (None: always runs)
    run: Callable[[JobConfig], Any]             # Ray is up (when `uses_ray`); returns a report
    doing: str = ""                             # what its start line says
    check: Callable[[JobConfig], None] = lambda cfg: None  # before Ray starts
    uses_ray: bool = True


# --- models and pools ----------------------------------------------------------------------------------------------
@dataclass
class ModelsReport:
    paths: dict[str, str]

    def lines(self) -> list[str]:
        return [", ".join(f"{name} {path}" for name, path in self.paths.items())]

    def summary(self) -> dict:
        return self.paths


def build_models(cfg: JobConfig) -> ModelsReport:
    """The local default's student, teacher and PRM (a cached build returns at once), trained on one Ray node."""
    import ray

    tiny = cfg.tiny_models
    if tiny.kind == "world":
        from adaptcot.demo.world_models import build_world_models

        task = ray.remote(num_cpus=1)(build_world_models).remote(tiny.out, tiny.seed, tiny.world)
    else:
        from adaptcot.demo.tiny_models import build_tiny_models

        task = ray.remote(num_cpus=1)(build_tiny_models).remote(tiny.out, tiny.seed)
    return ModelsReport({name: str(path) for name, path in ray.get(task).items()})


def pool_imports(cfg: JobConfig) -> list[PoolImportConfig]:
    """Every import the job runs: the configured ones, then the synthetic pool's (if enabled)."""
    limit = {"max_question_chars": cfg.pool.max_question_chars}
    imports = [PoolImportConfig(**{**group.model_dump(), "out": group.out or cfg.pool.out}, **limit,
                                near_duplicates=cfg.pool.near_duplicates) for group in cfg.pool.imports]
    syn = cfg.synthetic_pool
    if syn.enabled:
        # Generated from templates: its questions look alike by construction, and each is a different question.
        limit["near_duplicates"] = {"enabled": False}
        for name, count, domain, preset in (("math", syn.math_questions, "math", "gsm8k"),
                                            ("code", syn.code_questions, "code", "apps")):
            if count:
                imports.append(PoolImportConfig(sources=[storage.join(syn.out, f"{name}.jsonl")], domain=domain,
                                                preset=preset, out=cfg.pool.out, **limit))
        if syn.kind == "world" and syn.calibration_questions:  # its own pool: P_eval's split, never sampled from
            imports.append(PoolImportConfig(sources=[storage.join(syn.out, "calibration.jsonl")], domain="math",
                                            preset="gsm8k", out=syn.eval_pool_out, **limit))
    return imports


def write_synthetic_pool(cfg: JobConfig) -> None:
    from adaptcot.demo import world
    from adaptcot.demo.synthetic import code_rows, math_rows, write_jsonl

    syn = cfg.synthetic_pool
    if syn.kind == "world":
        pool = world.split_rows("pool", syn.math_questions, syn.seed)
        write_jsonl(iter(pool), storage.join(syn.out, "math.jsonl"))
        seen = {row["question"] for row in pool}  # held-out means no question of the pool, nor of another split
        for split, n in (("eval", syn.eval_questions), ("ood", syn.ood_questions),
                         ("calibration", syn.calibration_questions)):
            if n:
                rows = world.split_rows(split, n, syn.seed, exclude=seen)
                seen.update(row["question"] for row in rows)
                write_jsonl(iter(rows), storage.join(syn.out, f"{split}.jsonl"))
        return
    if syn.math_questions:
        write_jsonl(math_rows(syn.math_questions, syn.seed), storage.join(syn.out, "math.jsonl"))
    if syn.code_questions:
        write_jsonl(code_rows(syn.code_questions, syn.seed + 1), storage.join(syn.out, "code.jsonl"))


@dataclass
class ImportsReport:
    imports: list[tuple[PoolImportConfig, ImportReport]]

    def lines(self) -> list[str]:
        out = []
        for imp, report in self.imports:
            first, *rest = report.lines()
            out += [f"{imp.domain} {', '.join(storage.name(s) for s in imp.sources)} -> {imp.out}: {first}", *rest]
        return out

    def summary(self) -> list[dict]:
        return [report.as_dict() for _, report in self.imports]


def check_imports(cfg: JobConfig) -> None:
    """Configured sources must exist and be readable (the synthetic ones are written by the stage)."""
    if not pool_imports(cfg):
        raise ValueError("nothing to import (no `pool.imports`, and `synthetic_pool` is disabled)")
    for group in cfg.pool.imports:
        for spec in group.sources:
            open_source(spec, group.hf_split, group.hf_config)


def import_pools(cfg: JobConfig) -> ImportsReport:
    if cfg.synthetic_pool.enabled:
        write_synthetic_pool(cfg)
    return ImportsReport([(imp, import_pool_remote(imp)) for imp in pool_imports(cfg)])


# --- grading ---------------------------------------------------------------------------------------------------------
@dataclass
class GradeOutcome:
    """The pool's grading, and the eval set's when the sampling distribution is P_eval (same bank partition)."""

    pool: GradeReport
    eval_set: GradeReport | None = None

    def lines(self) -> list[str]:
        out = self.pool.lines()
        if self.eval_set is not None:
            out += ["eval set (for P_eval): " + self.eval_set.lines()[0].split(": ", 1)[-1]]
        return out

    def summary(self) -> dict:
        return {**grading.report_dict(self.pool),
                "eval_set": grading.report_dict(self.eval_set) if self.eval_set else None}


def _eval_pool(cfg: JobConfig) -> str | None:
    """The eval set P_eval is measured on, when the job samples by P_eval: graded into the same bank partition."""
    if cfg.sample is not None and cfg.sample.distribution.kind == "eval":
        return cfg.sample.distribution.eval_pool
    return None


def check_grade(cfg: JobConfig) -> None:
    grading.preflight(cfg.grade)


def grade(cfg: JobConfig) -> GradeOutcome:
    outcome = GradeOutcome(grading.grade(cfg.grade))
    if (eval_pool := _eval_pool(cfg)) is not None:
        outcome.eval_set = grading.grade(cfg.grade.model_copy(update={"pool": eval_pool}))
    return outcome


# --- sampling, teaching, SFT records ----------------------------------------------------------------------------------
def samples_path(cfg: JobConfig) -> str:
    return cfg.path("samples", "samples.parquet")


def reported_questions(cfg: JobConfig) -> list[str]:
    """The questions of the benchmarks the job evaluates on (P_eval's eval set may not hold any of them)."""
    if cfg.eval is None:
        return []
    config = eval_config(cfg, "before")
    return [q for spec in config.specs() for q in load_benchmark(spec, config.out)["question"].to_pylist()]


def sample(cfg: JobConfig) -> SampleReport:
    g = cfg.grade
    return draw_sample(g.bank, g.pool, g.student.display_name, g.grader_id(), cfg.sample, cfg.path("samples"),
                       benchmark_questions=reported_questions(cfg))


@dataclass
class TeachOutcome:
    teach: teacher.TeachReport
    filter: FilterReport
    spend: dict  # `cost.spend_of` the job's CoTs: total, per level, per kept CoT

    def lines(self) -> list[str]:
        return self.teach.lines() + self.filter.lines() + spend_lines(self.spend)

    def summary(self) -> dict:
        return {"requests": self.teach.requests_todo, "stored": self.teach.stored,
                "kept": sum(self.filter.kept.values()), "dropped": dict(self.filter.dropped), "spend": self.spend,
                **({"capped": self.teach.capped} if self.teach.capped else {})}


def teach_plan(cfg: JobConfig) -> teacher.Plan:
    """`adaptcot teach --dry-run`: what the teacher would send for the job's sample, and its estimated cost."""
    if cfg.teacher is None:
        raise ValueError("the config has no `teacher` section (a trace-style job's teachers are each a job's teacher)")
    if not storage.exists(samples_path(cfg)):
        raise FileNotFoundError(f"{samples_path(cfg)}: no sample yet; run `adaptcot sample` (or `adaptcot run`) first")
    return teacher.plan(storage.read_table(samples_path(cfg)), cfg.teacher, cfg.path("teach"))


def teach(cfg: JobConfig, journal_dir: str | None = None) -> TeachOutcome:
    """Generate the CoTs still missing, then verify all stored ones into `teach/cots.parquet`.

    `journal_dir` (default `teach/`) is where CoTs are stored as they arrive; jobs that share one (the ablation's
    arms) never pay twice for the same request."""
    out, teacher_cfg = cfg.path("teach"), cfg.teacher
    journal = journal_dir or out
    report = teacher.teach(samples_path(cfg), teacher_cfg, journal)
    samples = storage.read_table(samples_path(cfg))
    stored = collect(journal)
    # CoTs of questions no longer in the sample (it was redrawn), or from other prompts or sampling settings, stay
    # stored for later but are not used now.
    in_sample = pc.and_(pc.is_in(stored["question_id"], value_set=samples["question_id"].combine_chunks()),
                        pc.and_(pc.equal(stored["teacher"], teacher_cfg.name),
                                pc.equal(stored["sampling_key"], teacher_cfg.sampling_key())))
    filtered = filter_on_ray(stored.filter(in_sample), samples, cfg.filter)
    storage.write_table(filtered, storage.join(out, "cots.parquet"))
    outcome = TeachOutcome(report, FilterReport.of(filtered, cfg.filter.math_extraction), spend_of(filtered))
    storage.write_text(storage.join(out, "filter_report.json"), json.dumps(
        {"teach": report.__dict__, "filter": outcome.filter.__dict__}, indent=2, default=dict))
    return outcome


def build_sft_records(cfg: JobConfig):
    cots = storage.read_table(cfg.path("teach", "cots.parquet"))
    table, report = build_sft(cots, storage.read_table(samples_path(cfg)), cfg.sft)
    write_records(table, cfg.path("sft"), report)
    return report


# --- training and evaluation ------------------------------------------------------------------------------------------
@dataclass
class TrainOutcome:
    report: TrainReport | None = None
    skipped: str | None = None

    def lines(self) -> list[str]:
        if self.report is None:
            return [f"skipped: {self.skipped}"]
        from adaptcot.sft.order import DataReport

        return DataReport(**self.report.data).lines() + self.report.lines()

    def summary(self) -> dict:
        return self.report.as_dict() if self.report else {"skipped": self.skipped}


def train(cfg: JobConfig) -> TrainOutcome:
    return TrainOutcome(train_on_ray(cfg.train))


def records_to_train(cfg: JobConfig) -> int | None:
    """How many records of the objective's kinds the job's own SFT stage made (None: the job trains on given data)."""
    if cfg.sft is None or cfg.train.data != cfg.path("sft", "sft_records.parquet"):
        return None
    path = cfg.path("sft", "sft_records.parquet")
    if not storage.exists(path):
        return 0
    kinds = storage.read_table(path, columns=["kind"])["kind"]
    return pc.sum(pc.is_in(kinds, value_set=pa.array(cfg.train.kinds()))).as_py() or 0


def eval_config(cfg: JobConfig, which: str) -> EvalConfig:
    """The evaluation of the graded student ("before") or of the model trained from it ("after")."""
    student = cfg.grade.student
    if which == "before":
        model, cascaded = student.model_copy(update={"name": f"{student.display_name}-before",
                                                     "sampling": cfg.eval.sampling}), False
    else:
        model = student.model_copy(update={"model": storage.join(cfg.train.out, "model"),
                                           "sampling": cfg.eval.sampling, "name": f"{student.display_name}-after-sft"})
        cascaded = cfg.eval.cascaded if cfg.eval.cascaded is not None else cfg.train.objective == "cascod"
    levels = LevelsConfig(bank=cfg.grade.bank, student=f"{student.display_name}@{cfg.grade.grader_id()}") \
        if cfg.eval.levels else None
    # A cascaded student answers its second turn in the words it was trained on: the SFT records' own prompts.
    sft_records = cfg.train.data if cascaded and cfg.train is not None else None
    return EvalConfig(model=model, benchmarks=cfg.eval.benchmarks, out=cfg.path("eval"), cascaded=cascaded,
                      levels=levels, verify=cfg.grade.verify, sft_records=sft_records)


@dataclass
class EvalOutcome:
    metrics: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        return format_metrics(self.metrics)

    def summary(self) -> dict:
        return {bench: m["overall"] for bench, m in self.metrics["benchmarks"].items()}


def check_eval(cfg: JobConfig) -> None:
    """Benchmark files must be readable before any model starts (each is imported once, then reused)."""
    config = eval_config(cfg, "before")
    for spec in config.specs():
        load_benchmark(spec, config.out)


def evaluate_before(cfg: JobConfig) -> EvalOutcome:
    return EvalOutcome(evaluate(eval_config(cfg, "before")))


def evaluate_after(cfg: JobConfig) -> EvalOutcome:
    return EvalOutcome(evaluate(eval_config(cfg, "after")))


@dataclass
class ReportPage:
    path: str

    def lines(self) -> list[str]:
        return [self.path]

    def summary(self) -> str:
        return self.path


def report(cfg: JobConfig) -> ReportPage:
    return ReportPage(write_report(cfg.run_dir, (code_isolation_note(cfg),)))


def code_isolation_note(cfg: JobConfig) -> str:
    """What every code verdict of the run ran under (the sandbox never falls back, so the config says it)."""
    where = {"grading": cfg.grade.verify.code, "the CoT filter": cfg.filter.code,
             "evaluation": eval_config(cfg, "before").verify.code}
    return "Sandbox isolation of code verdicts: " + ", ".join(
        f"{config.sandbox.isolation} ({stage})" for stage, config in where.items()) + "."


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("models", "tiny_models", build_models, "the students, teacher and PRM, built on the spot (later runs "
          "reuse them)"),
    Stage("import", None, import_pools, "importing the question pool", check=check_imports),
    Stage("grade", "grade", grade, "the student answers the pool; answers are verified, wrong ones scored by the "
          "PRM, each question gets a level", check=check_grade),
    Stage("eval-before", "eval", evaluate_before, "evaluating the student", check=check_eval),
    Stage("sample", "sample", sample, "drawing questions by the difficulty distribution"),
    Stage("teach", "teacher", teach, "teacher CoTs, then verification"),
    Stage("build-sft", "sft", build_sft_records, "SFT records from the kept CoTs", uses_ray=False),
    Stage("train", "train", train, "fine-tuning the student (Ray Train)"),
    Stage("eval-after", "eval", evaluate_after, "evaluating the trained student", check=check_eval),
    Stage("report", None, report, "writing the report", uses_ray=False),
)}

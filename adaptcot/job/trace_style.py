"""Seed 004's protocol as a job (`trace_style` section of `adaptcot run`; configs/trace_style.yaml).

The job's graded, sampled questions go to every teacher of `trace_style.teachers`; each teacher is a *side* with its
own run directory `<run_dir>/<trace_style.out>/<teacher name>/` (samples, teach, sft, train, eval), wired by the
same stage functions as `adaptcot run` (`job/stages.py`). After every side is taught and filtered, the joint filter
(`teach/joint_filter.py`, the paper's: keep a problem only where every teacher's answer is verified) cuts each side
to the same problems; each side then trains a copy of the student and evaluates it; `compare` writes
`<out>/comparison.{json,html}` (tokens per CoT on the shared problems, loss curves, accuracy against tokens).
Every step resumes: teacher journals never pay twice, finished training and evaluations are read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from adaptcot.common import storage, terminal
from adaptcot.evaluate.compare import format_comparison, write_comparison
from adaptcot.job import stages
from adaptcot.job.config import JobConfig
from adaptcot.teach.cot_filter import FilterReport
from adaptcot.teach.joint_filter import joint_filter


def side_config(cfg: JobConfig, name: str) -> JobConfig:
    """The job config of one teacher's side: the job's bank, sample and student, its own run directory."""
    teacher = next(t for t in cfg.trace_style.teachers if t.name == name)
    run_dir = storage.join(cfg.trace_style.out, name)
    return cfg.model_copy(update={
        "run_dir": run_dir, "teacher": teacher, "trace_style": None,
        "train": cfg.train.model_copy(update={"out": storage.join(run_dir, "train"),
                                              "data": storage.join(run_dir, "sft", "sft_records.parquet")}),
        "eval": cfg.eval.model_copy(update={"before": False, "after": True}),
    })


@dataclass
class TraceStyleReport:
    sides: dict[str, dict] = field(default_factory=dict)  # teacher name -> CoTs, records, loss, metrics
    joint_questions: int | None = None  # None: the joint filter is off
    comparison_lines: list[str] = field(default_factory=list)
    page: str | None = None

    def lines(self) -> list[str]:
        out = []
        if self.joint_questions is not None:
            out.append(f"joint filter: {self.joint_questions} questions with a verified CoT from every teacher")
        for name, side in self.sides.items():
            out.append(f"{name}: {side['kept']} CoTs kept of {side['cots']}, {side['sft_records']} SFT records"
                       + (f", final loss {side['final_loss']:.3f}" if side.get("final_loss") is not None else ""))
        return out + self.comparison_lines + ([f"comparison: {self.page}"] if self.page else [])

    def summary(self) -> dict:
        return {"joint_questions": self.joint_questions, "sides": self.sides, "comparison": self.page}


def run(cfg: JobConfig) -> TraceStyleReport:
    """Teach and filter every side, the joint filter, then SFT, training and evaluation per side; the comparison."""
    report, names = TraceStyleReport(), [t.name for t in cfg.trace_style.teachers]
    sides = {name: side_config(cfg, name) for name in names}
    samples = storage.read_table(stages.samples_path(cfg))
    filtered = {}
    for name, side in sides.items():
        storage.write_table(samples, stages.samples_path(side))  # every side answers the job's one sample
        with terminal.stage(f"trace-style teach {name}") as shown:
            shown.lines(stages.teach(side).lines())
        filtered[name] = storage.read_table(side.path("teach", "cots.parquet"))
    if cfg.trace_style.joint_filter:
        filtered, joint = joint_filter(filtered)
        report.joint_questions = len(joint)
        for name, table in filtered.items():  # the sides' cots.parquet now hold the joint set (rewritten each run)
            storage.write_table(table, sides[name].path("teach", "cots.parquet"))
    for name, side in sides.items():
        with terminal.stage(f"trace-style train {name}") as shown:
            report.sides[name] = train_and_evaluate(side, filtered[name])
            shown.lines([f"{report.sides[name]['sft_records']} SFT records"])
    compared = {name: side.run_dir for name, side in sides.items()}
    before = stages.eval_config(cfg, "before")
    before_dir = storage.join(before.out, before.model.display_name)
    if storage.exists(storage.join(before_dir, "metrics.json")):
        compared = {"before": before_dir, **compared}
    comparison, report.page = write_comparison(compared, cfg.trace_style.out)
    report.comparison_lines = format_comparison(comparison)
    storage.write_text(storage.join(cfg.trace_style.out, "trace_style.json"), json.dumps(report.summary(), indent=2))
    return report


def train_and_evaluate(side: JobConfig, cots) -> dict:
    built = stages.build_sft_records(side)
    result = {"cots": cots.num_rows, "kept": sum(FilterReport.of(cots).kept.values()),
              "sft_records": built.as_dict().get("records"), "final_loss": None, "benchmarks": {}}
    if not stages.records_to_train(side):
        result["skipped"] = "no SFT records"
        return result
    result["final_loss"] = stages.train(side).report.final_loss
    metrics = stages.evaluate_after(side).metrics
    result["benchmarks"] = {b: m["overall"] for b, m in metrics["benchmarks"].items()}
    return result

"""The whole job (`adaptcot run`, `ray_jobs/pipeline.py`): every stage whose config section is present, in pipeline
order, each through `job/stages.py`; then `run_summary.json` and the report.

    models -> import -> grade (pool, and the eval set for P_eval) -> eval-before -> sample -> teach (+ filter)
      -> build-sft -> train -> eval-after -> report

Every stage resumes: a rerun reads back what a previous run finished and does only what is missing.
"""

from __future__ import annotations

import json

from adaptcot.common import storage, terminal
from adaptcot.job import ablation, stages, trace_style
from adaptcot.job.config import JobConfig, token_limit_problems

ORDER = ("models", "import", "grade", "eval-before", "sample", "teach", "build-sft", "train", "eval-after",
         "trace-style", "report")
PER_TEACHER = ("teach", "build-sft", "train", "eval-after")  # done per side when the job compares trace styles
STAGES = {**stages.STAGES, "trace-style": stages.Stage(
    "trace-style", "trace_style", trace_style.run, "the sample taught by every teacher, cut to the problems all of "
    "them solved, one student trained per teacher, compared")}
def wanted(cfg: JobConfig, name: str) -> bool:
    """Whether the job runs this stage: its section is present (and, for some, switched on)."""
    if name == "models":
        return cfg.tiny_models.enabled
    if name == "import":
        return bool(stages.pool_imports(cfg))
    if cfg.trace_style is not None and name in PER_TEACHER:
        return False
    if name in ("eval-before", "eval-after"):
        return cfg.eval is not None and getattr(cfg.eval, name.split("-")[1])
    section = STAGES[name].section
    return section is None or getattr(cfg, section) is not None


def checks(cfg: JobConfig) -> dict:
    """The checks that can run before anything does (the others read what earlier stages make)."""
    return {name: STAGES[name].check for name in ("import",) if wanted(cfg, name)}


def run_stage(cfg: JobConfig, name: str, summary: dict, check: bool = True):
    """One stage between its start and end lines; its summary into `summary["stages"][name]`. `check`: run the
    stage's check first (the launcher ran it already for a command of one stage)."""
    stage = STAGES[name]
    with terminal.stage(name, stage.doing) as shown:
        if check:
            stage.check(cfg)
        report = stage.run(cfg)
        shown.lines(report.lines())
        summary["stages"][name] = report.summary()
    return report


def run(cfg: JobConfig) -> dict:
    """Every wanted stage in order (Ray is up); `run_summary.json` in the run directory."""
    summary: dict = {"run_dir": cfg.run_dir, "stages": {}}
    for problem in token_limit_problems(cfg):
        terminal.say(f"warning: {problem}")
    for name in ORDER:
        if not wanted(cfg, name):
            continue
        if name == "train" and stages.records_to_train(cfg) == 0:
            # Only here, where the job made the records itself: `adaptcot train` on an empty dataset is an error.
            terminal.say(f"[train] skipped: the SFT stage made no {cfg.train.objective} records (see [teach] for why "
                         "CoTs were dropped)")
            summary["stages"]["train"] = {"skipped": "no SFT records"}
            continue
        trained = summary["stages"].get("train")
        if name == "eval-after" and (trained is None or "skipped" in trained):
            continue
        run_stage(cfg, name, summary)
    summary["report"] = summary["stages"].get("report")
    storage.write_text(cfg.path("run_summary.json"), json.dumps(summary, indent=2))
    return summary


def ablate(cfg: JobConfig) -> dict:
    """`adaptcot ablate`: the shared stages (read back when `adaptcot run` did them), then every arm and seed."""
    summary: dict = {"run_dir": cfg.run_dir, "stages": {}}
    for name in ("models", "import", "grade"):
        if wanted(cfg, name):
            run_stage(cfg, name, summary)
    result = ablation.run_ablation(cfg)
    return {**result, "report": run_stage(cfg, "report", summary).path}

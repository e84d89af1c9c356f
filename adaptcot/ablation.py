"""The method's central comparisons in miniature, over several seeds (`adaptcot ablate`).

Arms, each fine-tuning the job's graded student from the same weights on teacher CoTs of `n` sampled questions:
- `adaptive-cot`: questions drawn by the job's distribution (P_eval or P_C), standard CoT SFT;
- `uniform-cot`: as many questions drawn uniformly from the graded pool (each level at its share there), CoT SFT;
- `adaptive-cascod`: the adaptive sample, CasCoD SFT, cascaded inference at evaluation.
Comparisons (`COMPARISONS`): adaptive vs uniform sampling, and CasCoD vs CoT, each as per-seed paired differences
on every benchmark of the job's `eval` section (the local default has a held-out split and a longer, OOD one).

A seed changes the sample draw and the SFT data order. Each arm of each seed is one small job under
`<run_dir>/<out>/<arm>/seed=<s>/` (samples, teach/cots.parquet, sft, train, eval) that resumes like `adaptcot run`;
teacher CoTs live in one journal (`<out>/teach/`) shared by all of them, so a question two draws share is taught once.
`summarize` (pure) gives each arm's mean and a 95% t interval over seeds, and the same for each paired difference;
`summary.json` is what the report shows. Whatever comes out is reported: an interval across zero is a null result.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adaptcot import storage
from adaptcot.distributions import DistributionConfig

ARMS = ("adaptive-cot", "uniform-cot", "adaptive-cascod")
# (name, arm, baseline): the difference arm - baseline, seed by seed.
COMPARISONS = (("adaptive vs uniform sampling (CoT SFT)", "adaptive-cot", "uniform-cot"),
               ("CasCoD vs standard CoT (adaptive sample)", "adaptive-cascod", "adaptive-cot"))
METRICS = ("accuracy", "tokens_mean")
# Two-sided 95% Student t quantiles by degrees of freedom (no scipy in the environment); 1.96 beyond 30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    arms: list[Literal["adaptive-cot", "uniform-cot", "adaptive-cascod"]] = list(ARMS)
    n: int | None = Field(default=None, ge=1)  # questions per sample (default: the job's sample.n)
    out: str = "ablation"

    @field_validator("seeds", "arms")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"repeated entries: {value}")
        return value


def t_interval(values: list[float]) -> dict:
    """Mean and a two-sided 95% Student t interval (None with one value: no spread to measure)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": len(values)}
    df = len(values) - 1
    half = (_T975[df - 1] if df <= len(_T975) else 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def summarize(results: list[dict]) -> dict:
    """Per-(arm, seed) results -> per-arm intervals and paired-difference intervals, per benchmark and metric.

    `results` rows: {"arm", "seed", "benchmarks": {bench: {metric: value}}}."""
    by_arm: dict[str, dict[int, dict]] = {}
    for row in results:
        by_arm.setdefault(row["arm"], {})[row["seed"]] = row["benchmarks"]
    benches = sorted({b for row in results for b in row["benchmarks"]})
    arms = {arm: {b: {m: t_interval([seeds[s][b][m] for s in sorted(seeds) if seeds[s][b].get(m) is not None])
                      for m in METRICS} for b in benches}
            for arm, seeds in by_arm.items()}
    comparisons = []
    for name, arm, base in COMPARISONS:
        if arm not in by_arm or base not in by_arm:
            continue
        paired = sorted(set(by_arm[arm]) & set(by_arm[base]))
        diffs = {b: {m: t_interval([by_arm[arm][s][b][m] - by_arm[base][s][b][m] for s in paired])
                     for m in METRICS} for b in benches} if paired else {}
        for b, per_metric in diffs.items():
            acc = per_metric["accuracy"]
            per_metric["verdict"] = verdict(acc)
        comparisons.append({"name": name, "arm": arm, "baseline": base, "seeds": paired, "difference": diffs})
    return {"arms": arms, "comparisons": comparisons, "seeds": sorted({r["seed"] for r in results})}


def verdict(interval: dict) -> str:
    if interval["low"] is None:
        return "one seed: no interval"
    if interval["low"] > 0:
        return "better (interval above 0)"
    if interval["high"] < 0:
        return "worse (interval below 0)"
    return "no detectable difference (interval spans 0)"


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for c in summary["comparisons"]:
        lines.append(f"{c['name']}: {c['arm']} - {c['baseline']}, {len(c['seeds'])} seeds")
        for bench, d in c["difference"].items():
            acc, tok = d["accuracy"], d["tokens_mean"]
            ci = "" if acc["low"] is None else f" [{acc['low']:+.3f}, {acc['high']:+.3f}]"
            lines.append(f"  {bench}: accuracy {acc['mean']:+.3f}{ci} ({d['verdict']}); tokens/response "
                         f"{tok['mean']:+.1f}")
    return lines


def arm_config(cfg, arm: str, seed: int, ablation: AblationConfig):
    """The job config of one arm and seed: the job's bank, pool, student and teacher, its own run directory."""
    from adaptcot.config import resolve_grade, resolve_sample, resolve_teacher

    if cfg.sample is None or cfg.teacher is None or cfg.sft is None or cfg.train is None or cfg.eval is None:
        raise ValueError("adaptcot ablate needs the job's sample, teacher, sft, train and eval sections")
    grade = resolve_grade(cfg)
    sample = resolve_sample(cfg)  # its paths filled with the job's run_dir, not the arm's
    distribution = sample.distribution if arm.startswith("adaptive") else DistributionConfig(kind="uniform")
    cascod = arm.endswith("cascod")
    benchmarks = [b if isinstance(b, str) else b.model_copy(update={"source": b.source.replace("{run_dir}",
                                                                                               cfg.run_dir)})
                  for b in cfg.eval.benchmarks]
    return cfg.model_copy(update={
        "run_dir": storage.join(cfg.path(ablation.out), arm, f"seed={seed}"),
        "grade": grade, "teacher": resolve_teacher(cfg),
        "sample": sample.model_copy(update={"seed": seed, "n": ablation.n or sample.n, "distribution": distribution}),
        "sft": cfg.sft.model_copy(update={"formats": ["cascod" if cascod else "cot"]}),
        "train": cfg.train.model_copy(update={"objective": "cascod" if cascod else "cot", "seed": seed,
                                              "data": None, "model": grade.student.model}),
        "eval": cfg.eval.model_copy(update={"benchmarks": benchmarks, "before": False, "after": True,
                                            "cascaded": cascod}),
    })


def run_arm(cfg, arm: str, seed: int, ablation: AblationConfig, log=print) -> dict:
    """Sample, teach (shared journal), filter, build SFT records, train and evaluate one arm and seed."""
    from adaptcot.config import resolve_eval
    from adaptcot.evaluation import evaluate
    from ray_jobs import stages

    arm_cfg = arm_config(cfg, arm, seed, ablation)
    result_path = arm_cfg.path("result.json")
    if storage.exists(result_path):
        return json.loads(storage.read_text(result_path))
    sampled = stages.run_sample(arm_cfg)
    taught = stages.run_teach(arm_cfg, journal_dir=cfg.path(ablation.out, "teach"))
    built = stages.run_build_sft(arm_cfg)
    trained = stages.run_train(arm_cfg)
    metrics = evaluate(resolve_eval(arm_cfg, "after"))
    result = {"arm": arm, "seed": seed, "drawn": sampled.drawn, "cots_kept": sum(taught["filter"].kept.values()),
              "sft_records": built.as_dict().get("records"), "final_loss": trained.as_dict().get("final_loss"),
              "benchmarks": {b: {m: v["overall"].get(m) for m in METRICS} for b, v in metrics["benchmarks"].items()}}
    storage.write_text(result_path, json.dumps(result, indent=2))
    log(f"[ablate] {arm} seed {seed}: " + ", ".join(f"{b} accuracy {v['accuracy']:.3f}"
                                                    for b, v in result["benchmarks"].items()))
    return result


def run_ablation(cfg, ablation: AblationConfig, log=print) -> dict:
    results = [run_arm(cfg, arm, seed, ablation, log) for seed in ablation.seeds for arm in ablation.arms]
    summary = {"config": ablation.model_dump(), "results": results, **summarize(results)}
    storage.write_text(cfg.path(ablation.out, "summary.json"), json.dumps(summary, indent=2))
    for line in summary_lines(summary):
        log(f"[ablate] {line}")
    return summary

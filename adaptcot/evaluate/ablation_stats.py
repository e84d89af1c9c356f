"""Statistics of an ablation (`adaptcot ablate`): each arm's mean and a 95% Student t interval over seeds, and the
same for each paired difference (arm minus baseline, seed by seed). An interval across zero is a null result and is
reported as one. `summarize` is pure: per-(arm, seed) results in, the summary the report shows out.
"""

from __future__ import annotations

import math
import statistics

ARMS = ("adaptive-cot", "uniform-cot", "curriculum-cot", "transfer-cot", "adaptive-cascod")
# (name, arm, baseline): the difference arm - baseline, seed by seed.
COMPARISONS = (("adaptive vs uniform sampling (CoT SFT)", "adaptive-cot", "uniform-cot"),
               ("adaptive (P_eval) vs the curriculum prior P_C (CoT SFT)", "adaptive-cot", "curriculum-cot"),
               ("own P_eval vs another student's P_eval (transfer, CoT SFT)", "adaptive-cot", "transfer-cot"),
               ("CasCoD vs standard CoT (adaptive sample)", "adaptive-cascod", "adaptive-cot"))
METRICS = ("accuracy", "tokens_mean")
# Two-sided 95% Student t quantiles by degrees of freedom (no scipy in the environment); 1.96 beyond 30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


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
            # The interval's half-width: the smallest accuracy difference this many seeds can tell from 0 (a true
            # difference of that size is called about half the time; twice it, nearly always).
            per_metric["detectable"] = None if acc["high"] is None else acc["high"] - acc["mean"]
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
            detectable = f", detectable ±{d['detectable']:.3f}" if d.get("detectable") is not None else ""
            lines.append(f"  {bench}: accuracy {acc['mean']:+.3f}{ci} ({d['verdict']}{detectable}); tokens/response "
                         f"{tok['mean']:+.1f}")
    return lines

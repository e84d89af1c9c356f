"""Trace-style comparison (METHOD.md §3): teachers' CoT sets, and the students trained on them, side by side.

    adaptcot compare r1=runs/r1 gptoss=runs/gptoss [--out runs/compare]

Each side is NAME=PATH, where PATH is a run directory (its `teach/cots.parquet`, `train/metrics.jsonl` and
`eval/*/metrics.json` are read, whichever exist), a CoT file (`cots.parquet`), or one evaluated model's directory
(`eval/<model>/`, holding `metrics.json`). Written to `--out`: `comparison.json` and `comparison.html` (offline).

What is compared, per side:
- the CoT set: CoTs, questions, keep rate (verified and kept for SFT), completion tokens per kept CoT (mean,
  median, p90), truncation rate, cost, and keep rate and tokens per difficulty level;
- on the *shared* questions (every side has a kept CoT for it, as the paper kept problems both teachers solved),
  tokens per kept CoT and their ratio to the first side: the trace-length difference with the questions held fixed;
- training loss: first, last and lowest (the paper: a style the base model already knows starts low);
- the students: accuracy (± SE) against mean tokens per response on every benchmark they were evaluated on.
Not covered: significance tests between sides (the accuracy SEs are shown), and mixing teachers per level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from adaptcot.common import html_page, storage
from adaptcot.common.schemas import require_columns
from adaptcot.evaluate import report
from adaptcot.teach.joint_filter import joint_filter

COT_COLUMNS = ("question_id", "teacher", "level", "completion_tokens", "finish_reason", "drop_reason", "cost_usd")


# --- pure parts ------------------------------------------------------------------------------------------------------
def _token_stats(tokens: list[int]) -> dict:
    if not tokens:
        return {"mean": None, "median": None, "p90": None}
    values = np.array(tokens, dtype=float)
    return {"mean": float(values.mean()), "median": float(np.median(values)), "p90": float(np.percentile(values, 90))}


def cot_set_stats(cots: pa.Table) -> dict:
    """Keep rate and lengths of one CoT set (a `teacher_cots` table after the filter)."""
    require_columns(cots, COT_COLUMNS, "compare")
    rows = cots.select(list(COT_COLUMNS)).to_pylist()
    kept = [r for r in rows if r["drop_reason"] is None]
    by_level: dict[str, dict] = {}
    for r in rows:
        level = by_level.setdefault(r["level"] or "(none)", {"cots": 0, "kept": 0, "kept_tokens": []})
        level["cots"] += 1
        if r["drop_reason"] is None:
            level["kept"] += 1
            level["kept_tokens"].append(r["completion_tokens"] or 0)
    return {
        "teachers": sorted({r["teacher"] for r in rows}),
        "cots": len(rows), "questions": len({r["question_id"] for r in rows}), "kept": len(kept),
        "keep_rate": len(kept) / len(rows) if rows else None,
        "kept_tokens": _token_stats([r["completion_tokens"] or 0 for r in kept]),
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows) if rows else None,
        "cost_usd": float(sum(r["cost_usd"] or 0.0 for r in rows)),
        "by_level": {lv: {"cots": v["cots"], "kept": v["kept"], "keep_rate": v["kept"] / v["cots"],
                          "kept_tokens_mean": _token_stats(v["kept_tokens"])["mean"]}
                     for lv, v in _level_sorted(by_level).items()},
    }


def _level_sorted(by_level: dict) -> dict:
    order = [lv for lv in report.LEVEL_ORDER if lv in by_level] + sorted(set(by_level) - set(report.LEVEL_ORDER))
    return {lv: by_level[lv] for lv in order}


def shared_questions(sets: dict[str, pa.Table]) -> dict:
    """Tokens per kept CoT on the questions every side kept a CoT for, and each side's ratio to the first side."""
    kept_tokens: dict[str, dict[str, list[int]]] = {}
    for name, cots in sets.items():
        per_question: dict[str, list[int]] = {}
        for q, drop, n in zip(cots["question_id"].to_pylist(), cots["drop_reason"].to_pylist(),
                              cots["completion_tokens"].to_pylist()):
            if drop is None:
                per_question.setdefault(q, []).append(n or 0)
        kept_tokens[name] = per_question
    shared = set.intersection(*(set(v) for v in kept_tokens.values())) if kept_tokens else set()
    # Each question weighs the same on every side: its kept CoTs' mean, then the mean over questions.
    means = {name: float(np.mean([np.mean(v[q]) for q in shared])) if shared else None
             for name, v in kept_tokens.items()}
    first = next(iter(means.values()), None)
    return {"questions": len(shared), "kept_tokens_mean": means,
            "ratio_to_first": {name: (m / first if m is not None and first else None) for name, m in means.items()}}


def loss_summary(rows: list[dict]) -> dict | None:
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not losses:
        return None
    return {"steps": losses[-1][0], "first_loss": losses[0][1], "last_loss": losses[-1][1],
            "lowest_loss": min(v for _, v in losses)}


# --- reading a side --------------------------------------------------------------------------------------------------
def read_side(path: str | Path) -> dict:
    """What a side's path holds: {"cots": Table|None, "training": [rows]|None, "evals": [metrics]}."""
    path = str(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"compare: {path} does not exist")
    side = {"cots": None, "training": None, "evals": []}
    if path.endswith(".parquet"):
        side["cots"] = storage.read_table(path)
    elif storage.exists(storage.join(path, "metrics.json")):
        side["evals"] = [json.loads(storage.read_text(storage.join(path, "metrics.json")))]
    else:
        if storage.exists(storage.join(path, "teach", "cots.parquet")):
            side["cots"] = storage.read_table(storage.join(path, "teach", "cots.parquet"))
        side["training"] = report.training_rows(path)
        side["evals"] = report.eval_metrics(path)
    if side["cots"] is None and side["training"] is None and not side["evals"]:
        raise FileNotFoundError(f"compare: {path} holds no teach/cots.parquet, train/metrics.jsonl or "
                                "eval/*/metrics.json (give a run directory, a cots.parquet or an eval model directory)")
    return side


def student_rows(name: str, evals: list[dict]) -> list[dict]:
    rows = []
    for metrics in evals:
        for bench, m in metrics.get("benchmarks", {}).items():
            o = m.get("overall", {})
            if o.get("questions"):
                model = metrics.get("name", "?")
                rows.append({"side": name, "model": model, "label": f"{name}: {model}", "benchmark": bench,
                             "accuracy": o["accuracy"], "accuracy_se": o.get("accuracy_se") or 0.0,
                             "tokens_mean": o["tokens_mean"], "tokens_per_correct": o.get("tokens_per_correct"),
                             "questions": o["questions"], "samples_per_question": o.get("samples_per_question")})
    return rows


def compare(sides: dict[str, str | Path], joint: bool = False) -> tuple[dict, dict]:
    """(comparison, the sides as read): the numbers of `comparison.json`. `joint`: every CoT set is first cut to
    the questions all sets kept a CoT for (seed 004's joint filter; the rest are dropped as `not_joint`)."""
    if len(sides) < 2:
        raise ValueError("compare needs at least two sides (NAME=PATH NAME=PATH)")
    missing = [str(p) for p in sides.values() if not storage.exists(str(p))]  # all of them, before reading any
    if missing:
        raise FileNotFoundError(f"compare: {', '.join(missing)} does not exist")
    read = {name: read_side(path) for name, path in sides.items()}
    out: dict = {"sides": {}, "joint_questions": None}
    if joint:
        with_cots = {name: s["cots"] for name, s in read.items() if s["cots"] is not None}
        cut, questions = joint_filter(with_cots)
        for name, table in cut.items():
            read[name]["cots"] = table
        out["joint_questions"] = len(questions)
    for name, side in read.items():
        out["sides"][name] = {
            "path": str(sides[name]),
            "cots": cot_set_stats(side["cots"]) if side["cots"] is not None else None,
            "training": loss_summary(side["training"]) if side["training"] else None,
            "students": student_rows(name, side["evals"]),
        }
    with_cots = {name: s["cots"] for name, s in read.items() if s["cots"] is not None}
    out["shared"] = shared_questions(with_cots) if len(with_cots) >= 2 else None
    return out, read


# --- the page --------------------------------------------------------------------------------------------------------
def trace_lengths(read: dict):
    sets = {name: s["cots"] for name, s in read.items() if s["cots"] is not None}
    if not sets:
        return None, "no side has a CoT set"
    plt, fig, (left, right) = html_page.figure(10, 3.8, ncols=2)
    kept = {name: [n or 0 for n, d in zip(cots["completion_tokens"].to_pylist(), cots["drop_reason"].to_pylist())
                   if d is None] for name, cots in sets.items()}
    everything = [n for tokens in kept.values() for n in tokens]
    bins = np.histogram_bin_edges(everything, bins=30) if everything else 30  # the same bins on every side
    for name, tokens in kept.items():
        if tokens:
            left.hist(tokens, bins=bins, alpha=0.5, label=f"{name} (mean {np.mean(tokens):.0f})")
    left.set_xlabel("completion tokens per kept CoT")
    left.set_ylabel("CoTs")
    left.legend(fontsize=8)
    left.set_title("Trace length")
    stats = {name: cot_set_stats(cots) for name, cots in sets.items()}
    levels = list(dict.fromkeys(lv for s in stats.values() for lv in s["by_level"]))
    html_page.grouped_bars(right, {name: {lv: v["keep_rate"] for lv, v in s["by_level"].items()}
                                   for name, s in stats.items()}, levels)
    right.set_ylim(0, 1)
    right.set_ylabel("keep rate")
    right.set_title("Verified and kept, per level")
    return html_page.png(plt, fig), None


def training_curves(read: dict):
    curves = {name: [(r["step"], r["loss"]) for r in s["training"] if "loss" in r]
              for name, s in read.items() if s["training"]}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None, "no side has train/metrics.jsonl"
    plt, fig, ax = html_page.figure()
    for name, points in curves.items():
        ax.plot(*zip(*points), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("Training loss")
    return html_page.png(plt, fig), None


def students(comparison: dict):
    rows = [r for s in comparison["sides"].values() for r in s["students"]]
    if not rows:
        return None, "no side has an evaluated model (eval/*/metrics.json)"
    plt, fig, ax = html_page.figure()
    report.scatter_accuracy_tokens(ax, rows, label_key="label")
    ax.set_title("Students: accuracy against tokens per answer")
    return html_page.png(plt, fig), None


def render(comparison: dict, read: dict) -> str:
    shared = comparison["shared"] or {}
    cot_rows = [[name, ", ".join(c["teachers"]), c["cots"], c["questions"], f"{c['keep_rate']:.0%}",
                 c["kept_tokens"]["mean"], c["kept_tokens"]["median"], c["kept_tokens"]["p90"],
                 (shared.get("kept_tokens_mean") or {}).get(name), (shared.get("ratio_to_first") or {}).get(name),
                 f"{c['truncation_rate']:.1%}", f"${c['cost_usd']:.2f}"]
                for name, s in comparison["sides"].items() if (c := s["cots"])]
    cot_table = html_page.table("cots", ["side", "teacher", "CoTs", "questions", "keep rate", "tokens / kept (mean)",
                                         "median", "p90", f"on {shared.get('questions', 0)} shared questions",
                                         "ratio to first", "truncated", "cost"], cot_rows)
    train_table = html_page.table("training", ["side", "steps", "first loss", "last loss", "lowest loss"],
                                  [[name, t["steps"], t["first_loss"], t["last_loss"], t["lowest_loss"]]
                                   for name, s in comparison["sides"].items() if (t := s["training"])])
    student_table = html_page.table("students", ["side", "model", "benchmark", "questions × n", "accuracy", "± SE",
                                                 "tokens / response", "tokens / correct"],
                                    [[r["side"], r["model"], r["benchmark"],
                                      f"{r['questions']} × {r['samples_per_question']}", r["accuracy"],
                                      r["accuracy_se"], r["tokens_mean"], r["tokens_per_correct"]]
                                     for s in comparison["sides"].values() for r in s["students"]])
    body = [html_page.section("trace_lengths", "Teacher CoT sets", *trace_lengths(read), cot_table),
            html_page.section("training", "Training", *training_curves(read), train_table),
            html_page.section("students", "Students", *students(comparison), student_table)]
    return html_page.page("adaptcot comparison: " + " vs ".join(comparison["sides"]), body)


def write_comparison(sides: dict[str, str | Path], out: str | Path, joint: bool = False) -> tuple[dict, str]:
    comparison, read = compare(sides, joint)
    if joint:
        for name, side in read.items():
            if side["cots"] is not None:
                storage.write_table(side["cots"], storage.join(str(out), "joint", name, "cots.parquet"))
    storage.write_text(storage.join(str(out), "comparison.json"), json.dumps(comparison, indent=2))
    page = storage.join(str(out), "comparison.html")
    storage.write_text(page, render(comparison, read))
    return comparison, page


def format_comparison(comparison: dict) -> list[str]:
    lines = []
    if comparison.get("joint_questions") is not None:
        lines.append(f"joint filter: {comparison['joint_questions']} questions with a kept CoT on every side")
    shared = comparison["shared"] or {}
    for name, side in comparison["sides"].items():
        c = side["cots"]
        if c:
            ratio = (shared.get("ratio_to_first") or {}).get(name)
            lines.append(f"{name}: {c['cots']} CoTs, keep rate {c['keep_rate']:.0%}, tokens per kept CoT "
                         f"{c['kept_tokens']['mean'] or 0:.0f}"
                         + (f" ({ratio:.2f}x the first side on {shared['questions']} shared questions)"
                            if ratio is not None else ""))
        for r in side["students"]:
            lines.append(f"{name}: {r['model']} on {r['benchmark']}: accuracy {r['accuracy']:.3f} ± "
                         f"{r['accuracy_se']:.3f}, {r['tokens_mean']:.0f} tokens per response")
    return lines

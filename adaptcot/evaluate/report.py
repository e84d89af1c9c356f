"""`adaptcot report RUN_DIR`: one static HTML page (figures embedded as PNG, no network, no scripts) of a run.

Figures, each drawn when its data is in the run directory and otherwise listed with what is missing:
- level histogram per student and grader (`bank/`);
- the raw PRM scores of each student's wrong answers with the cut points, and warnings when a wrong level holds
  under 5% of the wrong questions or one holds most of them (`bank/step_scores`, `bank/graders`);
- P_eval and P_C against the sampled set's levels (`samples/distribution.json`, `samples.parquet`; P_eval also from
  the levels of the evaluated questions in `eval/*-before/samples.parquet` when sampling used P_C);
- teacher CoTs kept and dropped per level, keep rate and teacher tokens per level (`teach/cots.parquet`);
- training loss per step, with CasCoD's two losses when present (`train/metrics.jsonl`);
- accuracy per difficulty level for every evaluated model, i.e. before and after SFT (`eval/*/metrics.json`);
- accuracy against mean tokens per response, per model and benchmark, with a table of the numbers;
- the ablation (`adaptcot ablate`, `ablation/summary.json`): accuracy per arm and benchmark, mean and 95% interval
  over seeds, and a table of the paired differences with their verdicts.
Comparing two runs (two teachers' trace styles, two students) is `adaptcot compare` (`compare.py`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from adaptcot.common import html_page, storage
from adaptcot.common.html_page import figure, grouped_bars, png
from adaptcot.evaluate.report_levels import (
    LEVEL_ORDER,
    grading_answer_rules,
    level_histograms,
    level_warning_table,
    prm_score_histograms,
    sampling_distribution,
    sampling_notes,
)
from adaptcot.teach.cost import spend_of


def teacher_levels(run: str) -> list[dict]:
    """Per level: CoTs, kept, keep rate, mean completion tokens of all and of kept CoTs."""
    path = storage.join(run, "teach", "cots.parquet")
    if not storage.exists(path):
        return []
    table = storage.read_table(path, columns=["level", "drop_reason", "completion_tokens", "cost_usd"])
    spend = spend_of(table, no_level="(none)")["by_level"]
    rows: dict[str, dict] = {}
    for level, reason, n in zip(*(table[c].to_pylist() for c in ("level", "drop_reason", "completion_tokens"))):
        row = rows.setdefault(level or "(none)", {"level": level or "(none)", "cots": 0, "kept": 0, "tokens": [],
                                                  "kept_tokens": []})
        row["cots"] += 1
        row["tokens"].append(n or 0)
        if reason is None:
            row["kept"] += 1
            row["kept_tokens"].append(n or 0)
    order = [lv for lv in LEVEL_ORDER if lv in rows] + sorted(set(rows) - set(LEVEL_ORDER))
    out = []
    for level in order:
        r = rows[level]
        out.append({"level": level, "cots": r["cots"], "kept": r["kept"], "keep_rate": r["kept"] / r["cots"],
                    "tokens_mean": sum(r["tokens"]) / len(r["tokens"]),
                    "kept_tokens_mean": sum(r["kept_tokens"]) / len(r["kept_tokens"]) if r["kept_tokens"] else None,
                    "usd": spend[level]["usd"], "usd_per_kept": spend[level]["usd_per_kept_cot"]})
    return out


def teacher_per_level(run: str):
    rows = teacher_levels(run)
    if not rows:
        return None, "no teach/cots.parquet"
    levels = [r["level"] for r in rows]
    plt, fig, ax = figure()
    ax.bar(levels, [r["kept"] for r in rows], label="kept")
    ax.bar(levels, [r["cots"] - r["kept"] for r in rows], bottom=[r["kept"] for r in rows], label="dropped")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['keep_rate']:.0%}", (i, r["cots"]), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.3 * max(r["cots"] for r in rows))  # room for the keep rates and the legend
    ax2 = ax.twinx()
    ax2.plot(levels, [r["tokens_mean"] for r in rows], "k.-", label="mean teacher tokens")
    ax2.set_ylabel("tokens per CoT")
    ax.set_ylabel("CoTs (keep rate on top)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Teacher CoTs per level: kept, dropped, length")
    return png(plt, fig), None


def training_loss(run: str):
    rows = training_rows(run)
    if rows is None:
        return None, "no train/metrics.jsonl"
    if not rows:
        return None, "train/metrics.jsonl is empty"
    plt, fig, ax = figure()
    for key in ("loss", "loss_rationale", "loss_answer"):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("Training loss")
    return png(plt, fig), None


def training_rows(run: str) -> list[dict] | None:
    """The lines of train/metrics.jsonl, or None without one."""
    path = storage.join(run, "train", "metrics.jsonl")
    if not storage.exists(path):
        return None
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def eval_metrics(run: str) -> list[dict]:
    """Every eval/*/metrics.json of the run: models evaluated before SFT first, then by name."""
    models = sorted(storage.list_dirs(storage.join(run, "eval")), key=lambda m: (not m.endswith("-before"), m))
    paths = [storage.join(run, "eval", m, "metrics.json") for m in models]
    return [json.loads(storage.read_text(p)) for p in paths if storage.exists(p)]


def eval_results(run: str) -> list[dict]:
    """One row per (model, benchmark)."""
    out = []
    for metrics in eval_metrics(run):
        for bench, m in metrics.get("benchmarks", {}).items():
            o = m.get("overall", {})
            if o.get("questions"):
                ks = o.get("pass_at_k") or {}
                top = max(ks, key=int) if ks else None
                out.append({"model": metrics.get("name", "?"), "benchmark": bench, "accuracy": o["accuracy"],
                            "accuracy_se": o.get("accuracy_se") or 0.0, "tokens_mean": o["tokens_mean"],
                            "tokens_per_correct": o.get("tokens_per_correct"), "questions": o["questions"],
                            "samples_per_question": o.get("samples_per_question"),
                            "pass_at_n": ks.get(top) if top else None, "majority_vote": o.get("majority_vote"),
                            "truncation_rate": o.get("truncation_rate", 0.0),
                            "answer_rules": rule_text(m.get("answer_rules") or {})})
    return out


def accuracy_per_level(run: str):
    """Before and after SFT: accuracy per difficulty level of every evaluated model, one panel per benchmark."""
    per_bench: dict[str, dict[str, dict[str, float]]] = {}
    for metrics in eval_metrics(run):
        for bench, m in metrics.get("benchmarks", {}).items():
            by_level = m.get("by_level") or {}
            if by_level:
                per_bench.setdefault(bench, {})[metrics.get("name", "?")] = {
                    lv: v["accuracy"] for lv, v in by_level.items() if v.get("questions")}
    if not per_bench:
        return None, "no evaluation with per-level metrics (eval levels off, or no evaluated question in the bank)"
    plt, fig, axes = figure(7, 3.4 * len(per_bench), nrows=len(per_bench))
    for ax, (bench, models) in zip(axes if len(per_bench) > 1 else [axes], per_bench.items()):
        present = [lv for lv in LEVEL_ORDER if any(lv in m for m in models.values())]
        present += sorted({lv for m in models.values() for lv in m} - set(LEVEL_ORDER))
        grouped_bars(ax, models, present)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{bench}: accuracy per level of the graded student")
    return png(plt, fig), None


def accuracy_vs_tokens(run: str):
    rows = eval_results(run)
    if not rows:
        return None, "no eval/*/metrics.json"
    plt, fig, ax = figure()
    scatter_accuracy_tokens(ax, rows)
    ax.set_title("Accuracy against tokens per answer")
    return png(plt, fig), None


def scatter_accuracy_tokens(ax, rows: list[dict], label_key: str = "model") -> None:
    """Accuracy (± SE) against mean tokens per response, one series per benchmark, points labelled."""
    for bench in sorted({r["benchmark"] for r in rows}):
        mine = [r for r in rows if r["benchmark"] == bench]
        ax.errorbar([r["tokens_mean"] for r in mine], [r["accuracy"] for r in mine],
                    yerr=[r["accuracy_se"] for r in mine], fmt="o", capsize=3, label=bench)
        for r in mine:
            ax.annotate(r[label_key], (r["tokens_mean"], r["accuracy"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.margins(x=0.2)  # room for the labels
    ax.set_xlabel("mean tokens per response")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)


def ablation_summary(run: str) -> dict | None:
    path = storage.join(run, "ablation", "summary.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def ablation_figure(run: str):
    """Accuracy of every arm on every benchmark: mean over seeds with its 95% t interval."""
    summary = ablation_summary(run)
    if not summary or not summary.get("arms"):
        return None, "no ablation/summary.json (run `adaptcot ablate --config ...`)"
    arms = list(summary["arms"])
    benches = sorted({b for per in summary["arms"].values() for b in per})
    plt, fig, ax = figure(7, 3.6)
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        cells = [summary["arms"][arm].get(b, {}).get("accuracy", {}) for b in benches]
        means = [c.get("mean", 0) for c in cells]
        errors = [[m - c["low"] if c.get("low") is not None else 0 for m, c in zip(means, cells)],
                  [c["high"] - m if c.get("high") is not None else 0 for m, c in zip(means, cells)]]
        ax.bar([j + i * width for j in range(len(benches))], means, width, yerr=errors, capsize=3, label=arm)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(benches))], benches, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (mean, 95% CI)")
    ax.set_title(f"Ablation over seeds {summary.get('seeds')}")
    ax.legend(fontsize=8)
    return png(plt, fig), None


def ablation_table(run: str) -> str:
    summary = ablation_summary(run)
    if not summary:
        return ""
    rows = []
    for c in summary.get("comparisons", []):
        for bench, d in c["difference"].items():
            acc, tok = d["accuracy"], d["tokens_mean"]
            interval = "" if acc["low"] is None else f"[{acc['low']:+.3f}, {acc['high']:+.3f}]"
            detectable = None if d.get("detectable") is None else f"±{d['detectable']:.3f}"
            rows.append([c["name"], bench, len(c["seeds"]), f"{acc['mean']:+.3f}", interval, d["verdict"],
                         detectable, f"{tok['mean']:+.1f}"])
    return html_page.table("ablation", ["comparison", "benchmark", "seeds", "accuracy difference", "95% CI",
                                        "verdict", "smallest detectable", "tokens / response difference"], rows)


def rule_text(rules: dict) -> str:
    """{rule: {"answers", "correct"}} -> "boxed 600 (423 right), last_expression 21 (2 right)"."""
    return ", ".join(f"{rule} {c['answers']} ({c['correct']} right)" for rule, c in rules.items())


def eval_table(rows: list[dict]) -> str:
    return html_page.table("evaluation", ["model", "benchmark", "questions × n", "accuracy", "± SE", "pass@n",
                                          "maj@n", "tokens / response", "tokens / correct", "truncated",
                                          "math answers found by rule"],
                           [[r["model"], r["benchmark"], f"{r['questions']} × {r['samples_per_question']}",
                             r["accuracy"], r["accuracy_se"], r["pass_at_n"], r["majority_vote"],
                             f"{r['tokens_mean']:.0f}", None if r["tokens_per_correct"] is None
                             else f"{r['tokens_per_correct']:.0f}", f"{r['truncation_rate']:.1%}",
                             r["answer_rules"]] for r in rows])


def teacher_table(rows: list[dict]) -> str:
    """Per level; spend is the teacher's estimated cost of all the level's CoTs (dropped ones too), so `$ / kept CoT`
    is what one CoT in the SFT data cost."""
    def usd(value):
        return None if value is None else f"${value:,.4f}"

    return html_page.table("teacher", ["level", "CoTs", "kept", "keep rate", "tokens / CoT", "tokens / kept CoT",
                                       "spend", "$ / kept CoT"],
                           [[r["level"], r["cots"], r["kept"], f"{r['keep_rate']:.0%}", f"{r['tokens_mean']:.0f}",
                             None if r["kept_tokens_mean"] is None else f"{r['kept_tokens_mean']:.0f}",
                             usd(r["usd"]), usd(r["usd_per_kept"])] for r in rows])


FIGURES = (("levels", "Difficulty levels", level_histograms),
           ("prm_scores", "PRM scores of wrong answers", prm_score_histograms),
           ("sampling", "Sampling distribution", sampling_distribution),
           ("teacher", "Teacher CoTs", teacher_per_level),
           ("training", "Training", training_loss),
           ("levels_eval", "Before and after SFT, per level", accuracy_per_level),
           ("evaluation", "Accuracy against tokens", accuracy_vs_tokens),
           ("ablation", "Ablation: P_eval vs uniform, P_C and another student's P_eval; CasCoD vs CoT",
            ablation_figure))


def render(run_dir: str | Path, notes: tuple[str, ...] = ()) -> str:
    """The report page; `notes`: lines about how the run was made, shown under the title."""
    run = str(run_dir)
    tables = {"teacher": lambda: teacher_table(teacher_levels(run)),
              "evaluation": lambda: eval_table(eval_results(run)),
              "ablation": lambda: ablation_table(run),
              "prm_scores": lambda: level_warning_table(run),
              "levels": lambda: grading_answer_rules(run),
              "sampling": lambda: sampling_notes(run)}
    body = [f"<p class='note' data-note='{i}'>{html.escape(note)}</p>" for i, note in enumerate(notes)]
    for key, title, draw in FIGURES:
        image, missing = draw(run)
        body.append(html_page.section(key, title, image, missing, tables[key]() if key in tables else ""))
    return html_page.page(f"adaptcot run: {run}", body)


def write_report(run_dir: str | Path, notes: tuple[str, ...] = ()) -> str:
    path = storage.join(str(run_dir), "report.html")
    storage.write_text(path, render(run_dir, notes))
    return path

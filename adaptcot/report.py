"""`adaptcot report RUN_DIR`: one static HTML page (figures embedded as PNG, no network, no scripts) of a run.

Figures, each drawn when its data is in the run directory and otherwise listed with what is missing:
- level histogram per student and grader (`bank/`);
- the sampling distribution against the sampled set's levels (`samples/distribution.json`, `samples.parquet`);
- teacher CoTs kept and dropped per level, and teacher tokens per level (`teach/cots.parquet`);
- training loss per step, with CasCoD's two losses when present (`train/metrics.jsonl`);
- accuracy against mean tokens per response, per model and benchmark (`eval/*/metrics.json`): the trace-style and
  before/after comparison in one plot, with a table of the numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from adaptcot.schemas import LEVELS_EASIEST_FIRST

LEVEL_ORDER = [lv.value for lv in LEVELS_EASIEST_FIRST]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _bars(ax, groups: dict[str, dict[str, float]], levels: list[str]) -> None:
    width = 0.8 / max(1, len(groups))
    for i, (name, values) in enumerate(groups.items()):
        ax.bar([j + i * width for j in range(len(levels))], [values.get(lv, 0) for lv in levels], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], levels, rotation=20, fontsize=8)
    ax.legend(fontsize=8)


def level_histograms(run: Path):
    from adaptcot import bank

    rows = bank.summary(run / "bank") if (run / "bank" / "bank").exists() else []
    if not rows:
        return None, "no graded student in bank/"
    plt, fig, ax = _figure()
    _bars(ax, {f"{r['student']} ({r['questions']} q)": r["levels"] for r in rows}, LEVEL_ORDER)
    ax.set_ylabel("questions")
    ax.set_title("Difficulty levels per student")
    return _png(plt, fig), None


def sampling_distribution(run: Path):
    dist_path, samples_path = run / "samples" / "distribution.json", run / "samples" / "samples.parquet"
    if not dist_path.exists() or not samples_path.exists():
        return None, "no samples/distribution.json and samples.parquet"
    dist = json.loads(dist_path.read_text())
    counts = Counter(pq.read_table(samples_path, columns=["level"])["level"].to_pylist())
    total = sum(counts.values()) or 1
    plt, fig, ax = _figure()
    label = {"eval": "P_eval (student on the eval set)", "curriculum": "P_C (curriculum prior)"}.get(dist["kind"],
                                                                                                    dist["kind"])
    _bars(ax, {label: dist["weights"], f"sampled set ({total})": {k: v / total for k, v in counts.items()}},
          LEVEL_ORDER)
    ax.set_ylabel("share of questions")
    ax.set_title("Sampling distribution and the sampled questions")
    return _png(plt, fig), None


def teacher_per_level(run: Path):
    path = run / "teach" / "cots.parquet"
    if not path.exists():
        return None, "no teach/cots.parquet"
    table = pq.read_table(path, columns=["level", "drop_reason", "completion_tokens"])
    levels = [lv for lv in LEVEL_ORDER if lv in set(table["level"].to_pylist())] or ["(none)"]
    kept, dropped, tokens = Counter(), Counter(), {}
    for level, reason, n in zip(*(table[c].to_pylist() for c in ("level", "drop_reason", "completion_tokens"))):
        (kept if reason is None else dropped)[level] += 1
        tokens.setdefault(level, []).append(n or 0)
    plt, fig, ax = _figure()
    ax.bar(levels, [kept[lv] for lv in levels], label="kept")
    ax.bar(levels, [dropped[lv] for lv in levels], bottom=[kept[lv] for lv in levels], label="dropped")
    ax2 = ax.twinx()
    ax2.plot(levels, [sum(tokens.get(lv, [0])) / max(1, len(tokens.get(lv, []))) for lv in levels], "k.-",
             label="mean teacher tokens")
    ax2.set_ylabel("tokens per CoT")
    ax.set_ylabel("CoTs")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Teacher CoTs per level: kept, dropped, length")
    return _png(plt, fig), None


def training_loss(run: Path):
    path = run / "train" / "metrics.jsonl"
    if not path.exists():
        return None, "no train/metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None, "train/metrics.jsonl is empty"
    plt, fig, ax = _figure()
    for key in ("loss", "loss_rationale", "loss_answer"):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("Training loss")
    return _png(plt, fig), None


def eval_results(run: Path) -> list[dict]:
    """One row per (model, benchmark) from every eval/*/metrics.json."""
    out = []
    for path in sorted((run / "eval").glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        for bench, m in metrics.get("benchmarks", {}).items():
            o = m.get("overall", {})
            if o.get("questions"):
                out.append({"model": metrics.get("name", path.parent.name), "benchmark": bench,
                            "accuracy": o["accuracy"], "accuracy_se": o.get("accuracy_se") or 0.0,
                            "tokens_mean": o["tokens_mean"], "questions": o["questions"],
                            "samples_per_question": o.get("samples_per_question"),
                            "truncation_rate": o.get("truncation_rate", 0.0)})
    return out


def accuracy_vs_tokens(run: Path):
    rows = eval_results(run)
    if not rows:
        return None, "no eval/*/metrics.json"
    plt, fig, ax = _figure()
    for bench in sorted({r["benchmark"] for r in rows}):
        mine = [r for r in rows if r["benchmark"] == bench]
        ax.errorbar([r["tokens_mean"] for r in mine], [r["accuracy"] for r in mine],
                    yerr=[r["accuracy_se"] for r in mine], fmt="o", capsize=3, label=bench)
        for r in mine:
            ax.annotate(r["model"], (r["tokens_mean"], r["accuracy"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xlabel("mean tokens per response")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy against tokens per answer")
    return _png(plt, fig), None


FIGURES = (("levels", "Difficulty levels", level_histograms),
           ("sampling", "Sampling distribution", sampling_distribution),
           ("teacher", "Teacher CoTs", teacher_per_level),
           ("training", "Training", training_loss),
           ("evaluation", "Evaluation", accuracy_vs_tokens))


def render(run_dir: str | Path) -> str:
    run = Path(run_dir)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>adaptcot run {html.escape(run.name)}</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
             ".missing{color:#888}</style></head><body>",
             f"<h1>adaptcot run: {html.escape(str(run))}</h1>"]
    for key, title, draw in FIGURES:
        png, missing = draw(run)
        parts.append(f"<h2 id='{key}'>{title}</h2>")
        if png:
            parts.append(f"<figure data-figure='{key}'><img alt='{title}' src='data:image/png;base64,{png}'>"
                         "</figure>")
        else:
            parts.append(f"<p class='missing' data-missing='{key}'>Not available: {html.escape(missing)}.</p>")
        if key == "evaluation":
            parts.append(_eval_table(eval_results(run)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _eval_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = "<tr><th>model</th><th>benchmark</th><th>questions × n</th><th>accuracy ± SE</th>" \
           "<th>tokens / response</th><th>truncated</th></tr>"
    body = "".join(f"<tr><td>{html.escape(r['model'])}</td><td>{html.escape(r['benchmark'])}</td>"
                   f"<td>{r['questions']} × {r['samples_per_question']}</td>"
                   f"<td>{r['accuracy']:.3f} ± {r['accuracy_se']:.3f}</td><td>{r['tokens_mean']:.0f}</td>"
                   f"<td>{r['truncation_rate']:.1%}</td></tr>" for r in rows)
    return f"<table data-table='evaluation'>{head}{body}</table>"


def write_report(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(render(run_dir), encoding="utf-8")
    tmp.replace(path)
    return path

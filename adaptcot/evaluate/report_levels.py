"""The report's figures and tables about levels and sampling (`report.py` assembles the page): level histograms,
the PRM scores of wrong answers with the cut points and the level warnings, how grading found math answers, and the
sampling distribution with what its provenance says a reader must know."""

from __future__ import annotations

import html
import json
from collections import Counter

from adaptcot.common import html_page, storage
from adaptcot.common.html_page import figure, grouped_bars, png
from adaptcot.common.schemas import LEVELS_EASIEST_FIRST

LEVEL_ORDER = [lv.value for lv in LEVELS_EASIEST_FIRST]


def level_histograms(run: str):
    from adaptcot.grade import bank

    rows = bank.summary(storage.join(run, "bank"))
    if not rows:
        return None, "no graded student in bank/"
    plt, fig, ax = figure()
    grouped_bars(ax, {f"{r['student']} ({r['questions']} q)": r["levels"] for r in rows}, LEVEL_ORDER)
    ax.set_ylabel("questions")
    ax.set_title("Difficulty levels per student")
    return png(plt, fig), None


def wrong_answer_scores(run: str) -> list[dict]:
    """Per bank partition with PRM scores: the student, its scored wrong answers' scores, the cut points its wrong
    levels were cut at, and the level warnings (`levels.level_warnings`)."""
    from adaptcot.grade import bank
    from adaptcot.grade.calibration import wrong_answer_scores as scores_of
    from adaptcot.grade.levels import level_warnings

    root = storage.join(run, "bank")
    out = []
    for row in bank.summary(root):
        scores = scores_of(root, row["student"], row["grader_id"])
        if len(scores):
            out.append({"student": row["student"], "grader_id": row["grader_id"], "scores": scores,
                        "cut_points": bank.grader_cut_points(root, row["grader_id"]),
                        "warnings": level_warnings(row["levels"])})
    return out


def prm_score_histograms(run: str):
    """The raw PRM scores of each student's wrong answers, with the cut points between the wrong levels: why the
    levels spread, or do not."""
    rows = wrong_answer_scores(run)
    if not rows:
        return None, "no PRM-scored wrong answers in bank/step_scores"
    plt, fig, ax = figure()
    shared = len({tuple(r["cut_points"] or ()) for r in rows}) == 1  # one scorer's calibrated cut points
    for i, r in enumerate(rows):
        color = f"C{i}"
        ax.hist(r["scores"], bins=20, range=(0, 1), histtype="step", density=True, color=color,
                label=f"{r['student']} ({len(r['scores'])} wrong answers)")
        for cut in (r["cut_points"] or []) if not shared or i == 0 else []:
            ax.axvline(cut, color="k" if shared else color, linestyle="--", linewidth=1, alpha=0.7)
    ax.set_xlabel("PRM score of a wrong answer (dashed: cut points, hardest level on the left)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("PRM scores of wrong answers and the cut points between levels")
    return png(plt, fig), None


def level_warning_table(run: str) -> str:
    rows = [[r["student"], r["grader_id"], len(r["scores"]),
             ", ".join(f"{c:.3f}" for c in r["cut_points"]) if r["cut_points"] else "",
             "; ".join(r["warnings"]) or "none"] for r in wrong_answer_scores(run)]
    return html_page.table("level_warnings", ["student", "grader", "wrong answers scored", "cut points",
                                              "warnings"], rows) if rows else ""


def grading_answer_rules(run: str) -> str:
    """Per graded student: how many of its math attempts had their answer found by each rule (none: no answer)."""
    from adaptcot.grade import bank

    root, rows = storage.join(run, "bank"), []
    for slug, gid in bank.partitions(root):
        table = bank.read_partition(root, "attempts", slug, gid, ["domain", "answer_rule"])
        rules = Counter(r for d, r in zip(table["domain"].to_pylist(), table["answer_rule"].to_pylist())
                        if d == "math")
        if rules:
            rows.append([slug, gid, ", ".join(f"{rule or 'none'} {n}" for rule, n in rules.most_common())])
    return html_page.table("grading_answer_rules", ["student", "grader", "math answers found by rule (grading)"],
                           rows)


def eval_level_shares(run: str) -> tuple[dict[str, float], int] | None:
    """P_eval read off an evaluation of the graded student: the level shares of its evaluated questions that the
    bank holds (the student's own levels, so this is its level histogram on the eval set)."""
    for model in storage.list_dirs(storage.join(run, "eval")):
        path = storage.join(run, "eval", model, "samples.parquet")
        if not model.endswith("-before") or not storage.exists(path):
            continue
        table = storage.read_table(path, columns=["question_id", "level"])
        levels = {q: lv for q, lv in zip(table["question_id"].to_pylist(), table["level"].to_pylist()) if lv}
        if levels:
            counts = Counter(levels.values())
            return {lv: counts.get(lv, 0) / len(levels) for lv in LEVEL_ORDER}, len(levels)
    return None


def sampling_distribution(run: str):
    dist_path, samples_path = storage.join(run, "samples", "distribution.json"), storage.join(run, "samples",
                                                                                           "samples.parquet")
    if not storage.exists(dist_path) or not storage.exists(samples_path):
        return None, "no samples/distribution.json and samples.parquet"
    dist = json.loads(storage.read_text(dist_path))
    counts = Counter(storage.read_table(samples_path, columns=["level"])["level"].to_pylist())
    total = sum(counts.values()) or 1
    groups = {}
    if dist["kind"] == "eval":
        provenance = dist.get("provenance", {})
        whose = f"{provenance['student']}'s " if provenance.get("student") else ""
        groups[f"P_eval (used: {whose}levels on {provenance.get('graded_eval_questions')} eval questions)"] = \
            dist["weights"]
    else:
        groups["P_C (curriculum prior, used)"] = dist["weights"]
        measured = eval_level_shares(run)
        if measured:
            groups[f"P_eval (student's levels on {measured[1]} eval questions)"] = measured[0]
    groups[f"sampled set ({total} questions)"] = {k: v / total for k, v in counts.items()}
    plt, fig, ax = figure()
    grouped_bars(ax, groups, LEVEL_ORDER)
    ax.set_ylabel("share of questions")
    ax.set_title("Difficulty distributions and the sampled questions")
    return png(plt, fig), None


def sampling_notes(run: str) -> str:
    """What a reader must know about the sample: an eval set overlapping a benchmark (from the distribution's
    provenance), and what decontamination excluded, with examples (from sample_report.json)."""
    return _overlap_warning(run) + _exclusions_table(run)


def _overlap_warning(run: str) -> str:
    path = storage.join(run, "samples", "distribution.json")
    if not storage.exists(path):
        return ""
    overlap = json.loads(storage.read_text(path)).get("provenance", {}).get("benchmark_overlap")
    if not overlap:
        return ""
    return (f"<p class='warning' data-warning='overlap'>P_eval was measured on {overlap['questions']} of "
            f"{overlap['of']} questions that a reported benchmark also holds (allow_overlap: true): the sample is "
            "tuned on the test set, and the benchmark's numbers overstate the method.</p>")


def _exclusions_table(run: str) -> str:
    path = storage.join(run, "samples", "sample_report.json")
    if not storage.exists(path):
        return ""
    report = json.loads(storage.read_text(path))
    rows = [[reason, count, ""] for reason, count in report.get("excluded", {}).items()]
    if not rows:
        return ""
    rows += [[reason, "", f"{e['question']} ~ {e['benchmark_question']}"]
             for reason, examples in report.get("examples", {}).items() for e in examples[:5]]
    d = report.get("decontamination") or {}
    rule = (f"{d.get('benchmark_questions')} benchmark questions, by identity"
            + (f" and shared word {d['ngram']}-grams" if d.get("ngram") else " only")) if d else "not recorded"
    return (f"<p>Excluded from the sample (decontamination: {html.escape(rule)}):</p>"
            + html_page.table("sample_exclusions", ["reason", "questions", "example (pool ~ benchmark)"], rows))

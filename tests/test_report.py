"""`adaptcot report`: one offline HTML page; every figure present and a real, non-empty PNG when its data exists."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from adaptcot.common.schemas import BANK, LEVELS_EASIEST_FIRST
from adaptcot.evaluate.report import FIGURES, write_report
from adaptcot.evaluate.report_levels import eval_level_shares
from adaptcot.grade import bank
from adaptcot.job.ablation import summarize


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures, self.missing, self.images, self.remote = {}, set(), [], []
        self._figure = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._figure = attrs["data-figure"]
        if tag == "img":
            self.figures[self._figure] = attrs["src"]
        if "data-missing" in attrs:
            self.missing.add(attrs["data-missing"])
        for key in ("src", "href"):
            if key in attrs and attrs[key].startswith(("http:", "https:", "//")):
                self.remote.append(attrs[key])


def make_run(run):
    levels = [lv.value for lv in LEVELS_EASIEST_FIRST]
    for student, n in (("student-a", 30), ("student-b", 20)):
        rows = [{"question_id": f"q{i}", "domain": "math", "student": student, "grader_id": "g1",
                 "level": levels[i % 6], "difficulty_rank": i % 6, "pass_rate": 0.5, "num_samples": 4,
                 "prm_score": None, "attempts_ref": None} for i in range(n)]
        bank.add_rows(run / "bank", "bank", student, "g1", pa.Table.from_pylist(rows, schema=BANK))
    # The PRM scores of student-a's wrong answers, cut at points calibrated for its scorer.
    scores = pa.table({"question_id": [f"q{i}" for i in range(25)], "student": ["student-a"] * 25,
                       "sample_index": pa.array([0] * 25, pa.int32()), "prm": ["prm"] * 25,
                       "prm_score": pa.array([i / 25 for i in range(25)], pa.float32())})
    bank.add_rows(run / "bank", "step_scores", "student-a", "g1", scores)
    bank.save_grader(run / "bank", "g1", {"grader": {"mode": "prm", "thresholds": "calibrated"}, "scorer_id": "s1"})
    (run / "bank" / "graders" / "cut_points-s1.json").write_text(json.dumps({"cut_points": [0.7, 0.5, 0.3, 0.1]}))
    (run / "samples").mkdir()
    (run / "samples" / "distribution.json").write_text(json.dumps(
        {"kind": "curriculum", "weights": {lv: w for lv, w in zip(levels, (0.3, 0.25, 0.2, 0.12, 0.08, 0.05))}}))
    pq.write_table(pa.table({"level": levels * 3}), run / "samples" / "samples.parquet")
    (run / "teach").mkdir()
    pq.write_table(pa.table({"level": levels * 2, "drop_reason": [None] * 6 + ["wrong_answer"] * 6,
                             "completion_tokens": list(range(100, 1300, 100)),
                             "cost_usd": [t / 1e4 for t in range(100, 1300, 100)]}), run / "teach" / "cots.parquet")
    (run / "train").mkdir()
    (run / "train" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 2 / s, "loss_rationale": 2.5 / s, "loss_answer": 1.5 / s}) + "\n"
        for s in range(1, 11)))
    for name, acc, tokens in (("student-before", 0.2, 900.0), ("student-after-sft", 0.35, 700.0)):
        (run / "eval" / name).mkdir(parents=True)
        by_level = {lv: {"questions": 2, "accuracy": acc / (1 + i)} for i, lv in enumerate(levels[:3])}
        (run / "eval" / name / "metrics.json").write_text(json.dumps({"name": name, "benchmarks": {"toy": {
            "overall": {"questions": 10, "samples_per_question": 4, "accuracy": acc, "accuracy_se": 0.05,
                        "pass_at_k": {"1": acc, "4": acc + 0.2}, "tokens_mean": tokens, "tokens_per_correct": 640.0,
                        "truncation_rate": 0.1}, "by_level": by_level}}}))
    # The ablation: two arms over three seeds; adaptive is ahead by 0.05 on every seed.
    results = [{"arm": arm, "seed": s, "benchmarks": {"toy": {"accuracy": 0.3 + 0.02 * s + bonus,
                                                              "tokens_mean": 80.0}}}
               for arm, bonus in (("adaptive-cot", 0.05), ("uniform-cot", 0.0)) for s in range(3)]
    (run / "ablation").mkdir()
    (run / "ablation" / "summary.json").write_text(json.dumps({"results": results, **summarize(results)}))
    # The evaluated questions of the graded student carry its levels: 3 easy, 1 wrong_mid (one row per sample).
    pq.write_table(pa.table({"question_id": ["e1", "e1", "e2", "e3", "h1", "h1", "x"],
                             "level": ["easy", "easy", "easy", "easy", "wrong_mid", "wrong_mid", None]}),
                   run / "eval" / "student-before" / "samples.parquet")


def test_report_renders_every_figure_offline(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    make_run(run)
    page = Page()
    page.feed(Path(write_report(run)).read_text())
    assert set(page.figures) == {key for key, _, _ in FIGURES} and not page.missing and not page.remote
    for key, src in page.figures.items():
        png = base64.b64decode(src.split(",", 1)[1])
        assert src.startswith("data:image/png;base64,") and png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, key
    text = (run / "report.html").read_text()
    assert "<td>student-after-sft</td><td>toy</td><td>10 × 4</td><td>0.350</td><td>0.050</td><td>0.550</td>" in text
    assert ("<td>adaptive vs uniform sampling (CoT SFT)</td><td>toy</td><td>3</td><td>+0.050</td>"
            "<td>[+0.050, +0.050]</td><td>better (interval above 0)</td>") in text
    # The cut points of the students with scored wrong answers, and no warning: their wrong levels spread.
    assert "<tr><td>student-a</td><td>g1</td><td>25</td><td>0.700, 0.500, 0.300, 0.100</td><td>none</td></tr>" in text
    # Teacher per level: 2 CoTs per level, one kept (the one with fewer tokens); both were paid for ($0.01 + $0.07),
    # so the kept one cost $0.08.
    assert ("<tr><td>easy</td><td>2</td><td>1</td><td>50%</td><td>400</td><td>100</td><td>$0.0800</td>"
            "<td>$0.0800</td></tr>") in text


def test_p_eval_is_read_off_the_graded_students_evaluated_questions(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    make_run(run)
    shares, questions = eval_level_shares(run)
    assert questions == 4 and shares["easy"] == 0.75 and shares["wrong_mid"] == 0.25 and shares["wrong_hardest"] == 0


def test_report_says_what_is_missing(tmp_path):
    page = Page()
    page.feed(Path(write_report(tmp_path)).read_text())
    assert page.figures == {} and page.missing == {key for key, _, _ in FIGURES}


def test_report_warns_when_wrong_levels_collapse_and_when_p_eval_overlaps_a_benchmark(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    make_run(run)
    rows = [{"question_id": f"c{i}", "domain": "math", "student": "student-c", "grader_id": "g2",
             "level": "wrong_hardest" if i < 40 else "wrong_hard", "difficulty_rank": 5, "pass_rate": 0.0,
             "num_samples": 1, "prm_score": 0.01, "attempts_ref": None} for i in range(45)]
    bank.add_rows(run / "bank", "bank", "student-c", "g2", pa.Table.from_pylist(rows, schema=BANK))
    scores = pa.table({"question_id": [r["question_id"] for r in rows], "student": ["student-c"] * 45,
                       "sample_index": pa.array([0] * 45, pa.int32()), "prm": ["prm"] * 45,
                       "prm_score": pa.array([0.01] * 45, pa.float32())})
    bank.add_rows(run / "bank", "step_scores", "student-c", "g2", scores)
    (run / "samples" / "distribution.json").write_text(json.dumps(
        {"kind": "eval", "weights": {lv.value: 1 / 6 for lv in LEVELS_EASIEST_FIRST},
         "provenance": {"graded_eval_questions": 30, "benchmark_overlap": {"questions": 7, "of": 30,
                                                                           "allowed": True}}}))
    text = Path(write_report(run)).read_text()
    assert "wrong_hardest holds 89%" in text and "wrong_near 0%" in text
    assert "P_eval was measured on 7 of 30 questions that a reported benchmark also holds" in text


def test_the_report_lists_what_decontamination_excluded_with_examples(tmp_path):
    from adaptcot.evaluate.report_levels import sampling_notes

    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "sample_report.json").write_text(json.dumps({
        "excluded": {"benchmark": 1, "benchmark_ngram": 2},
        "decontamination": {"benchmark_questions": 500, "ngram": 8},
        "examples": {"benchmark_ngram": [{"question_id": "q1", "question": "Natalia sold clips to 48 of her friends",
                                          "benchmark_question": "Natalia sold clips to 48 of her friends in April"}]}}))
    notes = sampling_notes(str(tmp_path))
    assert "data-table='sample_exclusions'" in notes and "shared word 8-grams" in notes
    assert "benchmark_ngram" in notes and "Natalia sold clips to 48 of her friends in April" in notes
    assert sampling_notes(str(tmp_path / "elsewhere")) == ""

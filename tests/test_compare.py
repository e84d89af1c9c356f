"""Trace-style comparison: two teachers' CoT sets and the students trained on them, in numbers and on one page."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_report import Page

from adaptcot.evaluate.compare import compare, cot_set_stats, shared_questions
from adaptcot.job.cli import main as cli


def cots(rows):
    """rows: (question_id, level, completion_tokens, drop_reason)."""
    return pa.Table.from_pylist([{"question_id": q, "teacher": "t", "level": lv, "completion_tokens": n,
                                  "finish_reason": "length" if d == "truncated" else "stop", "drop_reason": d,
                                  "cost_usd": 0.01} for q, lv, n, d in rows])


# A long-trace teacher that solves everything, and a short-trace one that misses q3 and truncates once.
LONG = cots([("q1", "easy", 4000, None), ("q1", "easy", 6000, None), ("q2", "wrong_mid", 8000, None),
             ("q3", "wrong_hard", 12000, None)])
SHORT = cots([("q1", "easy", 1000, None), ("q1", "easy", 1000, "wrong_answer"), ("q2", "wrong_mid", 3000, None),
              ("q3", "wrong_hard", 4096, "truncated")])


def test_cot_set_stats_by_hand():
    s = cot_set_stats(SHORT)
    assert (s["cots"], s["questions"], s["kept"], s["keep_rate"]) == (4, 3, 2, 0.5)
    assert s["kept_tokens"]["mean"] == 2000 and s["truncation_rate"] == 0.25 and s["cost_usd"] == pytest.approx(0.04)
    assert list(s["by_level"]) == ["easy", "wrong_mid", "wrong_hard"]  # easiest first
    assert s["by_level"]["easy"] == {"cots": 2, "kept": 1, "keep_rate": 0.5, "kept_tokens_mean": 1000}


def test_shared_questions_hold_the_questions_fixed():
    shared = shared_questions({"long": LONG, "short": SHORT})
    # q3 has no kept short CoT: only q1 and q2 count. long: mean(5000, 8000); short: mean(1000, 3000).
    assert shared["questions"] == 2
    assert shared["kept_tokens_mean"] == {"long": 6500, "short": 2000}
    assert shared["ratio_to_first"]["short"] == pytest.approx(2000 / 6500)


def make_side(root, name, cot_table, first_loss, accuracy, tokens):
    run = root / name
    (run / "teach").mkdir(parents=True)
    pq.write_table(cot_table, run / "teach" / "cots.parquet")
    (run / "train").mkdir()
    (run / "train" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": first_loss / s}) + "\n" for s in range(1, 6)))
    (run / "eval" / "student-after-sft").mkdir(parents=True)
    (run / "eval" / "student-after-sft" / "metrics.json").write_text(json.dumps({
        "name": "student-after-sft", "benchmarks": {"math500": {"overall": {
            "questions": 500, "samples_per_question": 8, "accuracy": accuracy, "accuracy_se": 0.02,
            "tokens_mean": tokens, "tokens_per_correct": tokens * 0.9}}}}))
    return run


def test_compare_two_runs_through_the_cli(tmp_path, capsys):
    make_side(tmp_path, "r1", LONG, 0.8, 0.71, 15500.0)
    make_side(tmp_path, "gptoss", SHORT, 1.6, 0.73, 3500.0)
    rc = cli(["compare", f"r1={tmp_path / 'r1'}", f"gptoss={tmp_path / 'gptoss'}", "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out
    assert rc == 0 and "0.31x the first side on 2 shared questions" in out
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["sides"]["r1"]["training"] == {"steps": 5, "first_loss": 0.8, "last_loss": 0.16, "lowest_loss": 0.16}
    assert [r["accuracy"] for s in saved["sides"].values() for r in s["students"]] == [0.71, 0.73]
    page = Page()
    page.feed((tmp_path / "cmp" / "comparison.html").read_text())
    assert set(page.figures) == {"trace_lengths", "training", "students"} and not page.missing and not page.remote


def test_compare_a_cot_file_with_an_eval_directory_lists_what_is_missing(tmp_path):
    run = make_side(tmp_path, "r1", LONG, 0.8, 0.71, 15500.0)
    comparison, read = compare({"cots": run / "teach" / "cots.parquet", "student": run / "eval" / "student-after-sft"})
    assert comparison["sides"]["cots"]["students"] == [] and comparison["sides"]["student"]["cots"] is None
    assert comparison["shared"] is None  # one CoT set: nothing to hold fixed


def test_bad_sides_are_refused_with_a_reason(tmp_path, capsys):
    assert cli(["compare", f"a={tmp_path}", "--out", str(tmp_path / "o")]) == 2
    assert "at least two sides" in capsys.readouterr().err
    assert cli(["compare", f"a={tmp_path}", f"b={tmp_path / 'nope'}", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["compare", f"a={tmp_path}", f"a={tmp_path}"]) == 2
    assert "given twice" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["compare", f"a={tmp_path / 'empty'}", f"b={tmp_path / 'empty'}", "--out", str(tmp_path / "o")]) == 2
    assert "holds no teach/cots.parquet" in capsys.readouterr().err


def test_the_joint_filter_keeps_only_questions_every_teacher_solved():
    from adaptcot.teach.joint_filter import joint_filter

    cut, joint = joint_filter({"long": LONG, "short": SHORT})
    assert joint == {"q1", "q2"}  # short kept no CoT of q3
    long_reasons = list(zip(cut["long"]["question_id"].to_pylist(), cut["long"]["drop_reason"].to_pylist()))
    assert long_reasons == [("q1", None), ("q1", None), ("q2", None), ("q3", "not_joint")]
    # Rows keep their own reasons; nothing is deleted; the two students now train on the same problems.
    assert cut["short"]["drop_reason"].to_pylist() == SHORT["drop_reason"].to_pylist()
    assert {q for q, d in long_reasons if d is None} == \
        {q for q, d in zip(cut["short"]["question_id"].to_pylist(), cut["short"]["drop_reason"].to_pylist())
         if d is None}
    with pytest.raises(ValueError, match="two or more"):
        joint_filter({"long": LONG})


def test_compare_joint_cuts_both_sets_and_writes_them(tmp_path, capsys):
    make_side(tmp_path, "r1", LONG, 0.8, 0.71, 15500.0)
    make_side(tmp_path, "gptoss", SHORT, 1.6, 0.73, 3500.0)
    rc = cli(["compare", f"r1={tmp_path / 'r1'}", f"gptoss={tmp_path / 'gptoss'}", "--out", str(tmp_path / "cmp"),
              "--joint"])
    out = capsys.readouterr().out
    assert rc == 0 and "joint filter: 2 questions with a kept CoT on every side" in out
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["sides"]["r1"]["cots"]["kept"] == 3  # q3's CoT is dropped as not_joint
    written = pq.read_table(tmp_path / "cmp" / "joint" / "r1" / "cots.parquet")
    assert written["drop_reason"].to_pylist().count("not_joint") == 1

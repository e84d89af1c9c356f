"""What a level means (issue 19): aggregations that measure how far a wrong answer got, cut points calibrated once
per scorer and shared by every student it grades, warnings when levels do not spread, no test-set leak into P_eval,
and PRM inputs that keep the start of a long answer. Pure parts and the bank on disk; no Ray, no engine."""

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from adaptcot.common.schemas import Level
from adaptcot.common.text import normalise_text, question_id
from adaptcot.grade import bank, calibration
from adaptcot.grade.finalize import finalize_bank
from adaptcot.grade.grading import GradeConfig
from adaptcot.grade.levels import GraderConfig, level_for, level_warnings
from adaptcot.grade.prm import PRMConfig, aggregate, fitting_prefix, prm_input
from adaptcot.grade.todo import in_share
from adaptcot.pool.importer import PoolImportConfig, import_pool
from adaptcot.sample.distributions import DistributionConfig, DistributionError, curriculum_distribution
from adaptcot.sample.draw import check_eval_set_overlap

CALIBRATED = GraderConfig(thresholds="calibrated")


# --- aggregation ---------------------------------------------------------------------------------------------------
def test_progress_tells_an_early_error_from_a_late_one_where_min_cannot():
    early = [0.05, 0.9, 0.9, 0.9]  # wrong at the first step
    late = [0.95, 0.95, 0.95, 0.05]  # wrong at the last
    assert aggregate(early, "min") == aggregate(late, "min") == 0.05
    assert aggregate(early, "progress") < 0.1 < 0.6 < aggregate(late, "progress")
    # first_error: the share of steps before the first one under the threshold
    assert aggregate(early, "first_error") == 0.0
    assert aggregate(late, "first_error") == 0.75
    assert aggregate([0.9, 0.4, 0.9], "first_error", step_threshold=0.3) == 1.0


def test_progress_of_an_answer_scored_on_its_first_steps_only_counts_the_rest_as_not_reached():
    whole = aggregate([1.0, 1.0], "progress")
    cut = aggregate([1.0, 1.0], "progress", total_steps=8)
    assert whole == 1.0 and cut == pytest.approx(0.25)


# --- levels at the calibrated cut points ---------------------------------------------------------------------------
@pytest.mark.parametrize("score,level", [(0.5, Level.WRONG_NEAR), (0.31, Level.WRONG_NEAR), (0.3099, Level.WRONG_MILD),
                                         (0.2, Level.WRONG_MILD), (0.1999, Level.WRONG_MID), (0.11, Level.WRONG_HARD),
                                         (0.0999, Level.WRONG_HARDEST)])
def test_levels_at_calibrated_cut_points(score, level):
    assert level_for(0.0, score, CALIBRATED, (0.31, 0.2, 0.15, 0.1)) == level


def test_calibrated_thresholds_need_cut_points_and_a_prm_mode():
    with pytest.raises(ValueError, match="no cut points"):
        level_for(0.0, 0.5, CALIBRATED)
    with pytest.raises(ValidationError, match="pass_rate"):
        GraderConfig(mode="pass_rate", thresholds="calibrated")
    with pytest.raises(ValidationError, match="panel is set"):
        GradeConfig(student={"model": "m"}, prm={"model": "p"}, panel={"students": [{"model": "x"}]})


# --- calibration ---------------------------------------------------------------------------------------------------
def test_fit_weights_each_panel_model_equally_and_refuses_ties():
    weak = np.linspace(0.0, 0.5, 1000)  # many answers
    strong = np.linspace(0.5, 1.0, 10)  # few answers, same weight in the panel
    cuts = calibration.fit_cut_points([weak, strong])
    # Half the weight is the strong model's: the 60% quantile is among its scores (pooled unweighted, it would be ~0.3).
    assert cuts[1] > 0.5 and cuts[2] == pytest.approx(0.4, abs=0.01) and cuts[3] == pytest.approx(0.2, abs=0.01)
    assert all(a > b for a, b in zip(cuts, cuts[1:]))
    with pytest.raises(calibration.CalibrationError, match="ties"):
        calibration.fit_cut_points([np.array([0.03] * 90 + [0.5] * 10)])


def _write_answers(root, student, gid, scores, correct_too=0):
    """Attempts (one sample per question) and step scores of a student, as grading stores them."""
    n = len(scores) + correct_too
    qids = [f"q{i:04d}" for i in range(n)]
    correct = [False] * len(scores) + [True] * correct_too
    attempts = pa.table({"question_id": qids, "domain": ["math"] * n, "student": [student] * n,
                         "sample_index": pa.array([0] * n, pa.int32()), "correct": correct,
                         "verdict": ["wrong_answer" if not c else "passed" for c in correct]})
    step = pa.table({"question_id": qids[:len(scores)], "student": [student] * len(scores),
                     "sample_index": pa.array([0] * len(scores), pa.int32()), "prm": ["prm"] * len(scores),
                     "prm_score": pa.array(scores, pa.float32())})
    bank.add_rows(root, "step_scores", student, gid, step)
    bank.add_rows(root, "attempts", student, gid, attempts)


def _save_grader(root, gid, sid):
    bank.save_grader(root, gid, {"grader": CALIBRATED.model_dump(mode="json"), "scorer_id": sid})


def test_cut_points_are_fitted_once_kept_in_the_bank_and_reproducible_from_it(tmp_path):
    root = str(tmp_path / "bank")
    rng = np.random.default_rng(0)
    _write_answers(root, "weak", "g1", rng.beta(1, 4, 400).tolist())
    _write_answers(root, "strong", "g2", rng.beta(3, 2, 150).tolist())
    scorer = CALIBRATED.scorer_key({"model": "prm"})
    sid = calibration.scorer_id(scorer)
    record = calibration.save(root, calibration.fit(root, sid, scorer, [("weak", "g1"), ("strong", "g2")], 100))
    assert calibration.load(root, sid) == record
    assert calibration.refit(root, record) == record.cut_points  # from the bank alone
    # A later fit (another panel, or more answers) never replaces the record: levels were cut by it.
    _write_answers(root, "other", "g3", rng.uniform(0, 1, 300).tolist())
    again = calibration.save(root, calibration.fit(root, sid, scorer, [("other", "g3")], 100))
    assert again.cut_points == record.cut_points
    assert [m["student"] for m in calibration.load(root, sid).panel] == ["weak", "strong"]


def test_a_panel_model_with_too_few_wrong_answers_stops_calibration_naming_it(tmp_path):
    root = str(tmp_path / "bank")
    _write_answers(root, "teacher", "g", [0.5] * 20)
    with pytest.raises(calibration.CalibrationError, match="panel student teacher has 20 scored wrong answers"):
        calibration.fit(root, "s", {}, [("teacher", "g")], 100)


def test_two_students_of_one_scorer_are_cut_at_the_same_points_and_their_histograms_differ(tmp_path):
    root = str(tmp_path / "bank")
    rng = np.random.default_rng(1)
    _write_answers(root, "panel", "gp", rng.uniform(0, 1, 500).tolist())
    scorer = CALIBRATED.scorer_key({"model": "prm"})
    sid = calibration.scorer_id(scorer)
    record = calibration.save(root, calibration.fit(root, sid, scorer, [("panel", "gp")], 100))
    _write_answers(root, "a", "ga", rng.beta(4, 2, 300).tolist(), correct_too=100)
    _write_answers(root, "b", "gb", rng.beta(2, 4, 300).tolist(), correct_too=20)
    for student, gid in (("a", "ga"), ("b", "gb")):
        _save_grader(root, gid, sid)
        finalize_bank(root, student, gid, 1, CALIBRATED, cut_points=record.cut_points)
    assert bank.grader_cut_points(root, "ga") == bank.grader_cut_points(root, "gb") == list(record.cut_points)
    a = bank.level_counts(bank.part_files(root, "bank", "a", "ga"))
    b = bank.level_counts(bank.part_files(root, "bank", "b", "gb"))
    assert a["easy"] == 100 and b["easy"] == 20
    assert a["wrong_near"] > b["wrong_near"] and a["wrong_hardest"] < b["wrong_hardest"]
    result = bank.compare(root, "a", "b")
    assert result["same_cut_points"]
    assert "warning" not in bank.format_compare(result)


def test_bank_compare_warns_when_two_students_were_cut_at_different_points(tmp_path):
    root = str(tmp_path / "bank")
    for student, gid, cuts in (("a", "ga", (0.8, 0.6, 0.4, 0.2)), ("b", "gb", (0.9, 0.5, 0.3, 0.1))):
        grader = GraderConfig(thresholds=cuts)
        _write_answers(root, student, gid, [0.1, 0.5, 0.7, 0.95])
        bank.save_grader(root, gid, {"grader": grader.model_dump(mode="json")})
        finalize_bank(root, student, gid, 1, grader)
    text = bank.format_compare(bank.compare(root, "a", "b"))
    assert "warning: the two were cut at different points" in text


def test_the_panel_answers_the_same_fixed_share_of_any_pool():
    ids = [f"question-{i}" for i in range(5000)]
    chosen = in_share(ids, 0.1)
    assert 400 < sum(chosen) < 600
    assert in_share(ids[::-1], 0.1) == chosen[::-1]  # by id, not by position


# --- warnings ------------------------------------------------------------------------------------------------------
def test_a_collapsed_histogram_is_warned_about_and_a_spread_one_is_not():
    collapsed = {"easy": 954, "wrong_near": 2, "wrong_mild": 0, "wrong_mid": 3, "wrong_hard": 27,
                 "wrong_hardest": 1014}  # the demo before issue 19
    text = " ".join(level_warnings(collapsed))
    assert "wrong_near 0%" in text and "wrong_mild 0%" in text and "wrong_hardest holds 97%" in text
    assert level_warnings({"easy": 10, "wrong_near": 20, "wrong_mild": 25, "wrong_mid": 20, "wrong_hard": 20,
                           "wrong_hardest": 15}) == []


# --- the seeds' curriculum prior ------------------------------------------------------------------------------------
def test_the_seeds_five_level_curriculum_prior_draws_no_easy_question():
    dist = curriculum_distribution({"wrong_near": 5, "wrong_mild": 4, "wrong_mid": 3, "wrong_hard": 2,
                                    "wrong_hardest": 1})
    assert dist.weights["easy"] == 0.0
    assert dist.weights["wrong_near"] == pytest.approx(5 / 15)
    with pytest.raises(DistributionError, match="wrong_mild"):
        curriculum_distribution({"wrong_near": 1, "wrong_mild": 4, "wrong_mid": 3, "wrong_hard": 2,
                                 "wrong_hardest": 1})


# --- no test-set leak -----------------------------------------------------------------------------------------------
def _eval_pool(tmp_path, questions):
    src = tmp_path / "calibration.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in questions))
    out = str(tmp_path / "eval_pool")
    import_pool(PoolImportConfig(sources=[str(src)], domain="math", preset="gsm8k", out=out))
    return out


def test_p_eval_on_questions_a_reported_benchmark_holds_stops_the_job_naming_them(tmp_path):
    pool = _eval_pool(tmp_path, ["Ada has 3 apples. How many?", "Ben has 2 coins. How many?", "Chen has 1 book."])
    dist = DistributionConfig(kind="eval", eval_pool=pool)
    benchmark = ["ben has 2   coins. How many?", "Something else entirely."]  # equal up to case and spaces
    with pytest.raises(DistributionError, match="1 of the 3 questions .*Ben has 2 coins"):
        check_eval_set_overlap(dist, benchmark)
    allowed = check_eval_set_overlap(dist.model_copy(update={"allow_overlap": True}), benchmark)
    assert allowed == {"questions": 1, "of": 3, "allowed": True}
    assert check_eval_set_overlap(dist, ["Something else entirely."]) is None


def test_the_overlap_rule_is_the_exclusion_rule():
    text = "Ada has 3 apples.  How many?"
    assert question_id(normalise_text("ada has 3 apples. how many?"), "math") == \
        question_id(normalise_text(text), "math")


# --- PRM input keeps the start ---------------------------------------------------------------------------------------
def test_fitting_prefix_keeps_as_many_first_steps_as_fit():
    steps = [f"step {i}" for i in range(100)]
    assert fitting_prefix(steps, 64, lambda k: True) == 64
    assert fitting_prefix(steps, 64, lambda k: k <= 17) == 17
    assert fitting_prefix(steps, 64, lambda k: k <= 1) == 1


def test_a_long_answer_is_scored_on_its_first_steps_and_says_how_many(tiny_models_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir["prm"])
    response = "\n\n".join(f"Step {i}: the value is now {i * 7}." for i in range(1, 201))
    cfg = PRMConfig(model=str(tiny_models_dir["prm"]), max_model_len=512, max_steps=64)
    text, scored, total = prm_input(tokenizer, "What is 7 times 200?", response, cfg, "double_newline")
    assert total == 200 and 1 < scored < 64
    assert "Step 1: the value is now 7." in text and "Step 200" not in text
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 512
    assert text.count(cfg.step_token) == scored
    # a question longer than the context: still scored, on its start and the first step
    text, scored, total = prm_input(tokenizer, "word " * 2000, response, cfg, "double_newline")
    assert scored == 1 and len(tokenizer.encode(text, add_special_tokens=False)) <= 512

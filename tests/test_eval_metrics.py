"""Evaluation metrics: pass@k against brute-force enumeration, and every metric on a hand-made per-sample table."""

import itertools
import random
from math import comb

import pyarrow as pa
import pytest

from adaptcot.evaluate.metrics import pass_at_k, summarize, summarize_by


def brute_force_pass_at_k(outcomes: list[bool], k: int) -> float:
    """The share of all k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_on_random_cases():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 10)
        outcomes = [rng.random() < rng.random() for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(outcomes), k) == pytest.approx(brute_force_pass_at_k(outcomes, k), abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 8, 1) == 1.0 and pass_at_k(8, 1, 1) == pytest.approx(1 / 8)
    assert pass_at_k(200, 3, 10) == pytest.approx(1 - comb(197, 10) / comb(200, 10), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def table(rows):
    return pa.Table.from_pylist([dict(zip(("question_id", "correct", "num_tokens", "finish_reason", "answer_key",
                                           "level"), r)) for r in rows])


# Two questions x 4 samples, worked by hand.
HAND = table([
    ("a", True, 10, "stop", "4", "easy"), ("a", True, 20, "stop", "4", "easy"),
    ("a", False, 30, "stop", "5", "easy"), ("a", False, 100, "length", None, "easy"),
    ("b", False, 40, "stop", "7", "hard"), ("b", False, 50, "stop", "7", "hard"),
    ("b", True, 60, "stop", "6", "hard"), ("b", False, 100, "length", None, "hard"),
])


def test_every_metric_on_a_hand_made_table():
    m = summarize(HAND)
    assert (m["questions"], m["samples"], m["samples_per_question"]) == (2, 8, 4)
    assert m["accuracy"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["accuracy_se"] == pytest.approx(0.125)  # sample std of (0.5, 0.25) = 0.1768, over sqrt(2) questions
    # a: n=4, c=2 -> pass@1 0.5, pass@2 1-C(2,2)/C(4,2)=5/6, pass@3 1; b: c=1 -> 0.25, 0.5, 0.75.
    assert m["pass_at_k"] == pytest.approx({"1": 0.375, "2": (5 / 6 + 0.5) / 2, "3": (1 + 0.75) / 2, "4": 1.0})
    assert m["majority_vote"] == 0.5  # a: "4" wins (2 votes) and is right; b: "7" wins and is wrong
    assert m["tokens_mean"] == pytest.approx(410 / 8) and m["tokens_median"] == 45
    assert m["tokens_p90"] == pytest.approx(100) and m["tokens_per_correct"] == pytest.approx(30)
    assert m["truncation_rate"] == 0.25


def test_metrics_per_level_and_majority_ties():
    by = summarize_by(HAND, "level")
    assert set(by) == {"easy", "hard"} and by["easy"]["accuracy"] == 0.5 and by["hard"]["pass_at_k"]["1"] == 0.25
    tie = table([("q", False, 5, "stop", "1", None), ("q", True, 5, "stop", "2", None)])
    assert summarize(tie)["majority_vote"] == 0.0  # a tie goes to the answer seen first
    assert summarize_by(tie, "level")["unknown"]["questions"] == 1
    unequal = table([("a", True, 1, "stop", "1", None)] * 3 + [("b", False, 1, "stop", "2", None)] * 2)
    assert list(summarize(unequal)["pass_at_k"]) == ["1", "2"]  # k only up to the smallest n
    assert summarize(unequal)["accuracy"] == 0.5  # per-question mean, not 3/5

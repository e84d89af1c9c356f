"""The ablation's statistics: per-arm intervals over seeds and paired differences, against hand computation."""

import math
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

from adaptcot.evaluate.ablation_stats import summarize, t_interval
from adaptcot.job.ablation import arm_config
from adaptcot.job.config import AblationConfig, load_config


def _row(arm, seed, acc, tokens, bench="heldout"):
    return {"arm": arm, "seed": seed, "benchmarks": {bench: {"accuracy": acc, "tokens_mean": tokens}}}


def test_t_interval_matches_the_textbook_formula():
    values = [0.40, 0.55, 0.47]
    out = t_interval(values)
    half = 4.303 * statistics.stdev(values) / math.sqrt(3)  # t(0.975, df=2)
    assert out["mean"] == pytest.approx(statistics.fmean(values))
    assert (out["low"], out["high"]) == (pytest.approx(out["mean"] - half), pytest.approx(out["mean"] + half))
    assert t_interval([0.5])["low"] is None


def test_paired_differences_are_taken_seed_by_seed():
    # Arms far apart but with a large shared seed effect: the paired interval is narrow and above zero, which an
    # unpaired comparison of the two arms' intervals would not show.
    seed_effect = {0: 0.1, 1: 0.5, 2: 0.3}
    rows = [_row("adaptive-cot", s, 0.2 + e, 50) for s, e in seed_effect.items()]
    rows += [_row("uniform-cot", s, 0.15 + e + 0.01 * s, 60) for s, e in seed_effect.items()]
    summary = summarize(rows)
    diff = summary["comparisons"][0]["difference"]["heldout"]
    expected = [0.05, 0.04, 0.03]
    assert diff["accuracy"]["mean"] == pytest.approx(statistics.fmean(expected))
    assert diff["accuracy"]["low"] > 0 and diff["verdict"].startswith("better")
    assert diff["tokens_mean"]["mean"] == pytest.approx(-10)
    arm = summary["arms"]["adaptive-cot"]["heldout"]["accuracy"]
    assert arm["low"] < 0.4 < arm["high"]
    assert [c["name"] for c in summary["comparisons"]] == ["adaptive vs uniform sampling (CoT SFT)"]


def test_a_difference_whose_interval_spans_zero_is_reported_as_null():
    rows = [_row("adaptive-cot", s, a, 50) for s, a in enumerate([0.3, 0.5, 0.4])]
    rows += [_row("adaptive-cascod", s, a, 70) for s, a in enumerate([0.45, 0.35, 0.42])]
    c = summarize(rows)["comparisons"][0]
    assert c["arm"] == "adaptive-cascod" and c["seeds"] == [0, 1, 2]
    assert c["difference"]["heldout"]["verdict"].startswith("no detectable difference")


def test_the_ablation_config_refuses_repeated_seeds_and_unknown_arms():
    with pytest.raises(ValueError, match="repeated"):
        AblationConfig(seeds=[1, 1])
    with pytest.raises(ValueError):
        AblationConfig(arms=["adaptive-cot", "random-cot"])


def test_each_arm_changes_only_what_it_compares_and_reads_the_jobs_bank_and_eval_set():
    cfg = load_config(ROOT / "configs" / "local.yaml", ["run_dir=/runs/job", "ablation.seeds=[3]", "ablation.n=50"])
    adaptive, uniform, cascod = (arm_config(cfg, arm, 3) for arm in
                                 ("adaptive-cot", "uniform-cot", "adaptive-cascod"))
    assert adaptive.run_dir == "/runs/job/ablation/adaptive-cot/seed=3"
    # P_eval is read off the job's graded eval set, not a directory of the arm.
    assert adaptive.sample.distribution.eval_pool == "/runs/job/eval_pool" == cascod.sample.distribution.eval_pool
    assert uniform.sample.distribution.kind == "uniform"
    assert {c.sample.n for c in (adaptive, uniform, cascod)} == {50}
    assert {c.sample.seed for c in (adaptive, uniform, cascod)} == {3} == {c.train.seed for c in (adaptive, cascod)}
    # Every arm starts from the job's graded student and is evaluated after SFT only, on the job's benchmarks.
    assert {c.train.model for c in (adaptive, uniform, cascod)} == {"/runs/job/models/student"}
    assert [b.source for b in adaptive.eval.benchmarks] == ["/runs/job/raw/eval.jsonl", "/runs/job/raw/ood.jsonl"]
    assert (adaptive.train.objective, adaptive.eval.cascaded) == ("cot", False)
    assert (cascod.train.objective, cascod.eval.cascaded, cascod.sft.formats) == ("cascod", True, ["cascod"])
    assert not adaptive.eval.before and adaptive.eval.after
    # Each arm's outputs are its own: its SFT records and training under its run_dir, the job's bank and pool shared.
    assert (adaptive.train.data, adaptive.train.out) == ("/runs/job/ablation/adaptive-cot/seed=3/sft/sft_records.parquet",
                                                          "/runs/job/ablation/adaptive-cot/seed=3/train")
    assert (adaptive.grade.bank, adaptive.grade.pool) == ("/runs/job/bank", "/runs/job/pool")


def test_the_curriculum_and_transfer_arms_draw_by_the_seeds_prior_and_by_the_peers_p_eval():
    cfg = load_config(ROOT / "configs" / "local.yaml", ["run_dir=/runs/job", "ablation.seeds=[3]"])
    curriculum, transfer, adaptive = (arm_config(cfg, arm, 3) for arm in
                                      ("curriculum-cot", "transfer-cot", "adaptive-cot"))
    assert curriculum.sample.distribution.kind == "curriculum"
    assert set(curriculum.sample.distribution.weights) == {"wrong_near", "wrong_mild", "wrong_mid", "wrong_hard",
                                                           "wrong_hardest"}  # the seeds' five-level P_C
    # The transfer arm: the same eval pool, another student's levels on it (same grader settings, so cut points).
    peer = transfer.sample.distribution
    assert (peer.kind, peer.eval_pool) == ("eval", adaptive.sample.distribution.eval_pool)
    name, gid = peer.student.split("@")
    assert name == "peer" and gid != cfg.grade.grader_id() and adaptive.sample.distribution.student is None
    assert {c.train.epochs for c in (curriculum, transfer, adaptive)} == {cfg.ablation.epochs}
    assert {c.train.model for c in (curriculum, transfer)} == {"/runs/job/models/student"}  # the job's student learns


def test_the_transfer_arm_needs_the_other_student():
    with pytest.raises(ValueError, match="transfer_from"):
        AblationConfig(arms=["adaptive-cot", "transfer-cot"])

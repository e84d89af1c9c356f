"""Difficulty levels for one student: from its attempts (verdicts, PRM scores) to one bank row per question.

Two grading modes (METHOD.md §1):
- `prm` (the papers'): a question is `easy` when the student answers it correctly (with n samples: its pass rate
  reaches `easy_min_pass_rate`); otherwise the PRM's score of its wrong answers picks one of five wrong levels, a
  lower score being harder. The papers give neither the aggregation of step scores nor the cut points: both are
  adaptcot's choices, documented in docs/grading.md with the measurements behind the defaults.
- `pass_rate` (what peers such as SkyThought and Light-R1 use, no PRM needed): the pass rate alone picks the level.

Cut points are four values, strictly decreasing, between the five wrong levels: a score >= cuts[0] is `wrong_near`,
>= cuts[1] `wrong_mild`, >= cuts[2] `wrong_mid`, >= cuts[3] `wrong_hard`, else `wrong_hardest`; a score exactly on a
cut point goes to the easier side. They are given (`thresholds: [..]`), or `thresholds: calibrated`: fitted once per
scorer (the PRM and its settings) on a panel of models' answers and stored in the bank (`grade/calibration.py`), so
every student graded by that scorer is cut at the same points and two students' levels can be compared.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from adaptcot.common import schemas
from adaptcot.common.schemas import Level
from adaptcot.common.settings import Strict
from adaptcot.grade.manifest import conform

WRONG_LEVELS = (Level.WRONG_NEAR, Level.WRONG_MILD, Level.WRONG_MID, Level.WRONG_HARD, Level.WRONG_HARDEST)


CutPoints = tuple[float, float, float, float]


def check_cut_points(value, what: str = "thresholds") -> CutPoints:
    if len(value) != 4 or any(not 0.0 <= t <= 1.0 for t in value) or any(a <= b for a, b in zip(value, value[1:])):
        raise ValueError(f"{what} must be four values in [0, 1], strictly decreasing; got {list(value)}")
    return tuple(float(t) for t in value)


class GraderConfig(Strict):
    """Everything that decides a level; its hash is the bank's `grader_id`."""

    mode: Literal["prm", "pass_rate"] = "prm"
    # Four cut points, or "calibrated": fitted once per scorer on a panel's answers and kept in the bank.
    thresholds: CutPoints | Literal["calibrated"] = (0.8, 0.6, 0.4, 0.2)
    # With one sample (the papers' setting) any value in (0, 1] means "answered correctly"; with n samples, 0.5 reads
    # it as "answers correctly more often than not", so a question solved once in four is graded by its wrong answers.
    easy_min_pass_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    # progress (adaptcot's default, measured in docs/grading.md): how far a wrong answer got before its first wrong
    # step, in expectation; `min` collapses levels, since every wrong answer has a weak step (see prm.aggregate).
    aggregation: Literal["progress", "first_error", "min", "last", "product", "mean"] = "progress"
    step_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)  # first_error: a step scored under it is wrong
    step_rule: str = "double_newline"  # double_newline | newline | regex:<pattern>

    @field_validator("thresholds")
    @classmethod
    def _decreasing_in_unit_interval(cls, value):
        return value if value == "calibrated" else check_cut_points(value)

    @field_validator("step_rule")
    @classmethod
    def _known_rule(cls, value):
        if value not in ("double_newline", "newline") and not value.startswith("regex:"):
            raise ValueError("step_rule must be double_newline, newline or regex:<pattern>")
        return value

    @model_validator(mode="after")
    def _pass_rate_cuts_below_easy(self):
        if self.mode == "pass_rate" and self.thresholds == "calibrated":
            raise ValueError("thresholds: calibrated fits cut points to PRM scores; in pass_rate mode give four "
                             "pass-rate cut points")
        if self.mode == "pass_rate" and self.thresholds[0] >= self.easy_min_pass_rate:
            raise ValueError("in pass_rate mode thresholds[0] must be below easy_min_pass_rate")
        return self

    def scorer_key(self, prm_key: dict | None) -> dict:
        """What a wrong answer's score depends on (the PRM and these settings): calibrated cut points belong to it."""
        return {"prm": prm_key, "step_rule": self.step_rule, "aggregation": self.aggregation,
                "step_threshold": self.step_threshold if self.aggregation == "first_error" else None}


def grader_id(grader: GraderConfig, answering: dict) -> str:
    """Hash of the grader config and of the answering settings (prompt, sampling, PRM) that shape the grades."""
    blob = json.dumps({"grader": grader.model_dump(mode="json"), "answering": answering}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def given_cut_points(grader: GraderConfig, cut_points: CutPoints | None) -> CutPoints:
    if cut_points is not None:
        return check_cut_points(cut_points, "cut points")
    if grader.thresholds == "calibrated":
        raise ValueError("thresholds: calibrated, but no cut points were passed (grade/calibration.py fits them)")
    return grader.thresholds


def level_for(pass_rate: float | None, prm_score: float | None, grader: GraderConfig,
              cut_points: CutPoints | None = None) -> Level | None:
    """The level of one question, or None when it cannot be graded (no decided attempt, or no PRM score).

    `cut_points`: the calibrated ones, where `grader.thresholds` is "calibrated"."""
    if pass_rate is None:
        return None
    if pass_rate >= grader.easy_min_pass_rate:
        return Level.EASY
    score = pass_rate if grader.mode == "pass_rate" else prm_score
    if score is None:
        return None
    for cut, level in zip(given_cut_points(grader, cut_points), WRONG_LEVELS):
        if score >= cut:
            return level
    return Level.WRONG_HARDEST


# A wrong level holding less than this share of the wrong answers, or one holding more than MOST, is worth a warning:
# the levels do not spread, and sampling by them is little more than an easy/hard ratio.
FEW, MOST = 0.05, 0.5


def level_warnings(counts: dict[str, int]) -> list[str]:
    """What a user must see about a level histogram (level name -> questions): wrong levels that hardly spread."""
    wrong = {lv.value: counts.get(lv.value, 0) for lv in WRONG_LEVELS}
    total = sum(wrong.values())
    if total == 0:
        return []
    out = []
    few = [f"{lv} {n / total:.0%}" for lv, n in wrong.items() if n / total < FEW]
    if few:
        out.append(f"wrong level(s) holding under {FEW:.0%} of the {total} wrong questions: {', '.join(few)}")
    most = [f"{lv} holds {n / total:.0%}" for lv, n in wrong.items() if n / total > MOST]
    if most:
        out.append(f"one wrong level holds most of the {total} wrong questions ({most[0]}): the levels do not "
                   "spread; see the PRM score histogram, and docs/grading.md on aggregation and cut points")
    return out


GRADE_INPUT = ("question_id", "domain", "sample_index", "correct", "prm_score")
# One row per question: what `question_stats` computes from its attempts, and what the distributed finalize step
# computes with Ray Data aggregations (`finalize.finalize_bank`); `level_rows` grades either.
QUESTION_STATS = pa.schema([pa.field("question_id", pa.string()), pa.field("domain", pa.string()),
                            pa.field("samples", pa.int64()), pa.field("decided", pa.int64()),
                            pa.field("right", pa.int64()), pa.field("prm_score", pa.float64())])


def question_stats(attempts: pa.Table) -> pa.Table:
    """Per question: samples stored, samples decided (correct not null), right ones, mean PRM score of wrong ones."""
    schemas.require_columns(attempts, GRADE_INPUT, "question_stats")
    flags = attempts.select(["question_id", "domain", "sample_index", "prm_score"]).append_column(
        "decided", pc.cast(pc.is_valid(attempts["correct"]), pa.int64())).append_column(
        "right", pc.cast(pc.fill_null(attempts["correct"], False), pa.int64()))
    wrong = pc.equal(pc.fill_null(attempts["correct"], True), False)
    flags = flags.set_column(flags.schema.get_field_index("prm_score"), "prm_score",
                             pc.if_else(wrong, pc.cast(attempts["prm_score"], pa.float64()), None))
    stats = flags.group_by(["question_id", "domain"], use_threads=False).aggregate(
        [("sample_index", "count_distinct"), ("decided", "sum"), ("right", "sum"), ("prm_score", "mean")])
    return pa.table({"question_id": stats["question_id"], "domain": stats["domain"],
                     "samples": stats["sample_index_count_distinct"], "decided": stats["decided_sum"],
                     "right": stats["right_sum"], "prm_score": stats["prm_score_mean"]}, schema=QUESTION_STATS)


def level_rows(stats: pa.Table, grader: GraderConfig, student: str, gid: str, attempts_ref: str,
               cut_points: CutPoints | None = None) -> tuple[pa.Table, pa.Array]:
    """(bank rows, ungradable question ids) of per-question stats (schema QUESTION_STATS, complete questions);
    vectorised, and the same as `level_for` row by row."""
    decided = stats["decided"].to_numpy(zero_copy_only=False).astype(np.int64)
    right = stats["right"].to_numpy(zero_copy_only=False).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pass_rate = np.where(decided > 0, right / np.maximum(decided, 1), np.nan)
    prm = pc.fill_null(stats["prm_score"], np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    easy = pass_rate >= grader.easy_min_pass_rate  # NaN compares False
    score = pass_rate if grader.mode == "pass_rate" else prm
    gradable = ~np.isnan(pass_rate) & (easy | ~np.isnan(score))
    cuts = np.array(given_cut_points(grader, cut_points) if grader.mode == "prm" else grader.thresholds)
    # wrong levels in order near..hardest: how many cut points lie above the score (a score on a cut goes easier)
    wrong_index = (score[:, None] < cuts[None, :]).sum(axis=1)
    rank = np.where(easy, Level.EASY.rank, np.array([lv.rank for lv in WRONG_LEVELS])[np.minimum(wrong_index, 4)])
    keep = pa.array(gradable)
    names = np.array([lv.value for lv in schemas.LEVELS_EASIEST_FIRST], dtype=object)
    kept = stats.filter(keep)
    k = kept.num_rows
    rows = pa.table({
        "question_id": kept["question_id"], "domain": kept["domain"], "student": pa.array([student] * k, pa.string()),
        "grader_id": pa.array([gid] * k, pa.string()), "level": pa.array(names[rank[gradable]], pa.string()),
        "difficulty_rank": pa.array(rank[gradable], pa.int32()),
        "pass_rate": pa.array(pass_rate[gradable], pa.float64()),
        "num_samples": pa.array(decided[gradable], pa.int32()),
        "prm_score": pa.array(np.where(easy, np.nan, prm)[gradable], pa.float64(), from_pandas=True),
        "attempts_ref": pa.array([attempts_ref] * k, pa.string())})
    rows = conform(rows, schemas.BANK)
    return rows, stats.filter(pc.invert(keep))["question_id"].combine_chunks()


def grade_questions(attempts: pa.Table, grader: GraderConfig, student: str, gid: str, attempts_ref: str,
                    cut_points: CutPoints | None = None) -> tuple[pa.Table, pa.Array]:
    """(bank rows, ungradable question ids) from all attempts of some questions (one row per sample)."""
    return level_rows(question_stats(attempts), grader, student, gid, attempts_ref, cut_points)

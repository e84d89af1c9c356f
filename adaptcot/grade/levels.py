"""Difficulty levels for one student: from its attempts (verdicts, PRM scores) to one bank row per question.

Two grading modes (METHOD.md §1):
- `prm` (the paper's): a question is `easy` when the student's pass rate reaches `easy_min_pass_rate` (with n = 1:
  it answered correctly); otherwise the mean PRM score of its wrong answers picks one of five wrong levels.
- `pass_rate` (what peers such as SkyThought and Light-R1 use, no PRM needed): the pass rate alone picks the level.

`thresholds` are four cut points, strictly decreasing, between the five wrong levels: a score >= thresholds[0] is
`wrong_near`, >= thresholds[1] `wrong_mild`, >= thresholds[2] `wrong_mid`, >= thresholds[3] `wrong_hard`, else
`wrong_hardest`. A score exactly on a cut point goes to the easier side. Lower score = harder, in both modes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from adaptcot.common import schemas
from adaptcot.common.schemas import Level
from adaptcot.common.settings import Strict

WRONG_LEVELS = (Level.WRONG_NEAR, Level.WRONG_MILD, Level.WRONG_MID, Level.WRONG_HARD, Level.WRONG_HARDEST)


class GraderConfig(Strict):
    """Everything that decides a level; its hash is the bank's `grader_id`."""

    mode: Literal["prm", "pass_rate"] = "prm"
    thresholds: tuple[float, float, float, float] = (0.8, 0.6, 0.4, 0.2)
    easy_min_pass_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    # min: a solution is as sound as its weakest step, and unlike the product it does not punish long answers for
    # their length; the first wrong step is what makes the answer wrong. (Qwen2.5-Math-PRM reports min and last.)
    aggregation: Literal["min", "last", "product", "mean"] = "min"
    step_rule: str = "double_newline"  # double_newline | newline | regex:<pattern>

    @field_validator("thresholds")
    @classmethod
    def _decreasing_in_unit_interval(cls, value):
        if any(not 0.0 <= t <= 1.0 for t in value) or any(a <= b for a, b in zip(value, value[1:])):
            raise ValueError(f"thresholds must be four values in [0, 1], strictly decreasing; got {list(value)}")
        return value

    @field_validator("step_rule")
    @classmethod
    def _known_rule(cls, value):
        if value not in ("double_newline", "newline") and not value.startswith("regex:"):
            raise ValueError("step_rule must be double_newline, newline or regex:<pattern>")
        return value

    @model_validator(mode="after")
    def _pass_rate_cuts_below_easy(self):
        if self.mode == "pass_rate" and self.thresholds[0] >= self.easy_min_pass_rate:
            raise ValueError("in pass_rate mode thresholds[0] must be below easy_min_pass_rate")
        return self


def grader_id(grader: GraderConfig, answering: dict) -> str:
    """Hash of the grader config and of the answering settings (prompt, sampling, PRM) that shape the grades."""
    blob = json.dumps({"grader": grader.model_dump(mode="json"), "answering": answering}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def level_for(pass_rate: float | None, prm_score: float | None, grader: GraderConfig) -> Level | None:
    """The level of one question, or None when it cannot be graded (no decided attempt, or no PRM score)."""
    if pass_rate is None:
        return None
    if pass_rate >= grader.easy_min_pass_rate:
        return Level.EASY
    score = pass_rate if grader.mode == "pass_rate" else prm_score
    if score is None:
        return None
    for cut, level in zip(grader.thresholds, WRONG_LEVELS):
        if score >= cut:
            return level
    return Level.WRONG_HARDEST


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


def level_rows(stats: pa.Table, grader: GraderConfig, student: str, gid: str, attempts_ref: str
               ) -> tuple[pa.Table, pa.Array]:
    """(bank rows, ungradable question ids) of per-question stats (schema QUESTION_STATS, complete questions)."""
    rows, ungradable = [], []
    for q in stats.to_pylist():
        pass_rate = q["right"] / q["decided"] if q["decided"] else None
        level = level_for(pass_rate, q["prm_score"], grader)
        if level is None:
            ungradable.append(q["question_id"])
            continue
        rows.append({"question_id": q["question_id"], "domain": q["domain"], "student": student, "grader_id": gid,
                     "level": level.value, "difficulty_rank": level.rank, "pass_rate": pass_rate,
                     "num_samples": q["decided"], "prm_score": None if level is Level.EASY else q["prm_score"],
                     "attempts_ref": attempts_ref})
    return pa.Table.from_pylist(rows, schema=schemas.BANK), pa.array(ungradable, pa.string())


def grade_questions(attempts: pa.Table, grader: GraderConfig, student: str, gid: str, attempts_ref: str
                    ) -> tuple[pa.Table, pa.Array]:
    """(bank rows, ungradable question ids) from all attempts of some questions (one row per sample)."""
    return level_rows(question_stats(attempts), grader, student, gid, attempts_ref)

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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adaptcot import schemas
from adaptcot.schemas import Level

WRONG_LEVELS = (Level.WRONG_NEAR, Level.WRONG_MILD, Level.WRONG_MID, Level.WRONG_HARD, Level.WRONG_HARDEST)


class GraderConfig(BaseModel):
    """Everything that decides a level; its hash is the bank's `grader_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
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


def grade_questions(attempts: pa.Table, grader: GraderConfig, student: str, gid: str, attempts_ref: str
                    ) -> tuple[pa.Table, pa.Table]:
    """(bank rows, ungradable question ids) from all attempts of some questions (one row per sample)."""
    schemas.require_columns(attempts, GRADE_INPUT, "grade_questions")
    decided = attempts.filter(pc.is_valid(attempts["correct"]))
    wrong = decided.filter(pc.invert(decided["correct"]))
    stats = _per_question(decided, wrong)
    rows, ungradable = [], []
    for q in stats:
        level = level_for(q["pass_rate"], q["prm_score"], grader)
        if level is None:
            ungradable.append(q["question_id"])
            continue
        rows.append({"question_id": q["question_id"], "domain": q["domain"], "student": student, "grader_id": gid,
                     "level": level.value, "difficulty_rank": level.rank, "pass_rate": q["pass_rate"],
                     "num_samples": q["num_samples"], "prm_score": None if level is Level.EASY else q["prm_score"],
                     "attempts_ref": attempts_ref})
    all_ids = set(attempts["question_id"].to_pylist())
    ungradable += sorted(all_ids - {q["question_id"] for q in stats})
    return pa.Table.from_pylist(rows, schema=schemas.BANK), pa.array(ungradable, pa.string())


def _per_question(decided: pa.Table, wrong: pa.Table) -> list[dict]:
    counts = decided.group_by(["question_id", "domain"]).aggregate([("correct", "count"), ("correct", "sum")])
    scores = wrong.group_by("question_id").aggregate([("prm_score", "mean")])
    score_of = dict(zip(scores["question_id"].to_pylist(), scores["prm_score_mean"].to_pylist()))
    out = []
    for qid, domain, n, n_correct in zip(counts["question_id"].to_pylist(), counts["domain"].to_pylist(),
                                         counts["correct_count"].to_pylist(), counts["correct_sum"].to_pylist()):
        out.append({"question_id": qid, "domain": domain, "num_samples": n, "pass_rate": (n_correct or 0) / n,
                    "prm_score": score_of.get(qid)})
    return out

"""Target difficulty distributions (METHOD.md §1): P_eval measured on an eval set, or a curriculum prior P_C.

A `Distribution` gives a weight to every level, named (never numbered), easiest first, summing to 1, and records
where it came from (`provenance`). It is saved beside each sample as a small JSON artifact (`save_distribution`).

- `curriculum_distribution(weights)`: P_C(level) = w / sum(w), the weights > 0 and decreasing strictly with
  difficulty (the paper's w_i > w_{i+1}): over the five wrong levels, as the seeds define P_C (easy questions are
  then not drawn), or over all six levels, easy included (adaptcot's extension).
- `eval_distribution(...)`: P_eval, the level histogram of the student on the eval set. The eval pool is graded into
  the same bank partition (same student, same grader id, so the same grading code and settings) with
  `adaptcot grade --pool EVAL_POOL`; a level the student never reached on the eval set has weight 0.
- `uniform_distribution(...)`: the level shares of the questions a sample can draw from, so the draw is uniform
  over them whatever their level (stratified by level): the non-adaptive baseline of an ablation.
- `DistributionConfig`: the `distribution` part of a sample config, checked when it is built.

Not covered: smoothing P_eval (a level seen once on a small eval set gets its raw share), or mixing P_eval and P_C.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import pyarrow as pa
from pydantic import field_validator, model_validator

from adaptcot.common import storage
from adaptcot.common.schemas import LEVELS_EASIEST_FIRST
from adaptcot.common.settings import Strict
from adaptcot.grade import bank
from adaptcot.pool.importer import pool_files, read_pool

LEVEL_NAMES: tuple[str, ...] = tuple(lv.value for lv in LEVELS_EASIEST_FIRST)
KINDS = ("eval", "curriculum", "uniform")
ARTIFACT_FORMAT = "adaptcot.distribution/1"


class DistributionError(ValueError):
    """A distribution or its inputs are unusable; the message names the levels or the command to run."""


def _named_levels(weights: dict[str, float], what: str) -> dict[str, float]:
    """`weights` in level order, every level named exactly once, or an error naming the missing/unknown ones."""
    missing = [lv for lv in LEVEL_NAMES if lv not in weights]
    unknown = [k for k in weights if k not in LEVEL_NAMES]
    if missing or unknown:
        raise DistributionError(f"{what} must name every level exactly once ({', '.join(LEVEL_NAMES)}); "
                                f"missing: {missing or 'none'}, unknown: {unknown or 'none'}")
    return {lv: float(weights[lv]) for lv in LEVEL_NAMES}


@dataclass(frozen=True)
class Distribution:
    kind: Literal["eval", "curriculum", "uniform"]
    weights: dict[str, float]  # every level, easiest first, summing to 1
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DistributionError(f"distribution kind must be one of {KINDS}, not {self.kind!r}")
        weights = _named_levels(self.weights, "distribution weights")
        if any(not math.isfinite(w) or w < 0 for w in weights.values()):
            raise DistributionError(f"distribution weights must be finite and >= 0: {weights}")
        if abs(sum(weights.values()) - 1.0) > 1e-6:
            raise DistributionError(f"distribution weights must sum to 1, not {sum(weights.values())}")
        object.__setattr__(self, "weights", weights)


WRONG_LEVEL_NAMES = LEVEL_NAMES[1:]


def curriculum_distribution(weights: dict[str, float]) -> Distribution:
    """P_C from hand-set weights, each > 0, strictly decreasing with difficulty: over the five wrong levels (the
    seeds' form: wrong_near .. wrong_hardest named, `easy` not sampled), or over all six levels (adaptcot's)."""
    seeds_form = set(weights) == set(WRONG_LEVEL_NAMES)  # the seeds' five levels: easy questions get no weight
    names = WRONG_LEVEL_NAMES if seeds_form else LEVEL_NAMES
    raw = {lv: float(weights[lv]) for lv in names} if seeds_form else _named_levels(weights, "curriculum weights")
    bad = [lv for lv, w in raw.items() if not math.isfinite(w) or w <= 0]
    if bad:
        raise DistributionError(f"curriculum weights must be > 0; not so for {', '.join(bad)}")
    rising = [f"{b} ({raw[b]:g}) is not below {a} ({raw[a]:g})" for a, b in zip(names, names[1:]) if raw[b] >= raw[a]]
    if rising:
        raise DistributionError(f"curriculum weights must decrease strictly from {names[0]} to wrong_hardest (more "
                                "easy questions than hard ones): " + "; ".join(rising))
    total = sum(raw.values())
    provenance = {"weights": raw, **({"form": "five wrong levels (the seeds')"} if seeds_form else {})}
    return Distribution("curriculum", {"easy": 0.0, **{lv: w / total for lv, w in raw.items()}}, provenance)


def eval_pool_ids(eval_pool: str | Path) -> pa.Array:
    """Question ids of an eval pool directory (made with `adaptcot pool import`)."""
    if not pool_files(eval_pool):
        raise FileNotFoundError(f"eval pool not found: {eval_pool} (import the eval set with `adaptcot pool import`)")
    return read_pool(eval_pool, ["question_id"])["question_id"].combine_chunks()


def _grader_description(bank_root: str | Path, grader_id: str) -> dict | None:
    path = storage.join(str(bank_root), "graders", f"{grader_id}.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def eval_distribution(bank_root: str | Path, student: str, grader_id: str,
                      eval_question_ids: Iterable[str] | pa.Array, eval_pool: str | None = None) -> Distribution:
    """P_eval: the level histogram of `student`'s bank rows (grader `grader_id`) on the eval questions."""
    ids = eval_question_ids if isinstance(eval_question_ids, pa.Array) else pa.array(list(eval_question_ids),
                                                                                      pa.string())
    graded = bank.levels_of(bank_root, student, grader_id, ids)  # only the eval questions' buckets are read
    if graded.num_rows == 0:
        raise DistributionError(
            f"none of the {len(ids)} eval questions is graded for {student} (grader {grader_id}) in {bank_root}; "
            f"grade them first: adaptcot grade --pool {eval_pool or 'EVAL_POOL'} (same student and grader settings)")
    counts = Counter(graded["level"].to_pylist())
    histogram = {lv: counts.get(lv, 0) for lv in LEVEL_NAMES}
    provenance = {"student": student, "grader_id": grader_id, "grader": _grader_description(bank_root, grader_id),
                  "eval_pool": str(eval_pool) if eval_pool else None, "eval_questions": len(ids),
                  "graded_eval_questions": graded.num_rows, "counts": histogram}
    return Distribution("eval", {lv: n / graded.num_rows for lv, n in histogram.items()}, provenance)


def uniform_distribution(available: dict[str, int]) -> Distribution:
    """Each level weighted by its share of the questions a sample can draw from (graded, in the pool, not
    excluded), so the draw is uniform over them whatever their level: the non-adaptive baseline of an ablation."""
    total = sum(available.values())
    if total == 0:
        raise DistributionError("no graded questions of the pool are left to draw from")
    return Distribution("uniform", {lv: available.get(lv, 0) / total for lv in LEVEL_NAMES},
                        {"available": dict(available)})


def save_distribution(dist: Distribution, path: str | Path) -> None:
    """Write the artifact, published whole (a path or URI)."""
    blob = {"format": ARTIFACT_FORMAT, "kind": dist.kind, "weights": dist.weights, "provenance": dist.provenance}
    storage.write_text(str(path), json.dumps(blob, indent=2))


def load_distribution(path: str | Path) -> Distribution:
    blob = json.loads(storage.read_text(str(path)))
    if blob.get("format") != ARTIFACT_FORMAT:
        raise DistributionError(f"{path}: not a distribution artifact (format {blob.get('format')!r})")
    return Distribution(blob["kind"], blob["weights"], blob.get("provenance", {}))


class DistributionConfig(Strict):
    """`kind: curriculum` with `weights` (five wrong levels or all six; checked here, before any work), `kind: eval`
    with `eval_pool` (and `allow_overlap`), or
    `kind: uniform` (the bank's own level shares) with neither."""

    kind: Literal["eval", "curriculum", "uniform"]
    weights: dict[str, float] | None = None
    eval_pool: str | None = None
    # P_eval measured on questions that a reported benchmark also holds tunes the sample to the test set: the job
    # stops, naming them, unless this is set (the report then says so).
    allow_overlap: bool = False
    # Whose P_eval, as NAME@GRADER_ID of another student graded on the eval pool into the same bank (the paper's
    # transfer: a 32B student's distribution used for a 7B one); default: the student the sample is drawn for.
    student: str | None = None

    @field_validator("weights")
    @classmethod
    def _valid_curriculum(cls, value):
        if value is not None:
            curriculum_distribution(value)  # the error names the offending levels
        return value

    @model_validator(mode="after")
    def _fields_match_kind(self):
        if self.kind == "curriculum" and (self.weights is None or self.eval_pool is not None):
            raise ValueError("kind 'curriculum' needs `weights` (one per level: wrong_near .. wrong_hardest, or "
                             "easy .. wrong_hardest) and no `eval_pool`")
        if self.kind == "eval" and (self.eval_pool is None or self.weights is not None):
            raise ValueError("kind 'eval' needs `eval_pool` (the eval set's pool directory, graded into the same "
                             "bank with `adaptcot grade --pool EVAL_POOL`) and no `weights`")
        if self.kind == "uniform" and (self.weights is not None or self.eval_pool is not None):
            raise ValueError("kind 'uniform' takes neither `weights` nor `eval_pool`")
        if self.student is not None and (self.kind != "eval" or "@" not in self.student):
            raise ValueError("`student` (whose P_eval) needs kind 'eval' and the form NAME@GRADER_ID")
        return self


def build_distribution(cfg: DistributionConfig, bank_root: str | Path, student: str, grader_id: str,
                       available: dict[str, int] | None = None) -> Distribution:
    """`available`: per level, the questions the sample can draw from (what `kind: uniform` weighs by)."""
    if cfg.kind == "curriculum":
        return curriculum_distribution(cfg.weights)
    if cfg.kind == "uniform":
        if available is None:
            raise ValueError("kind 'uniform' weighs levels by the questions available to a sample: pass `available`")
        return uniform_distribution(available)
    if cfg.student is not None:
        student, grader_id = cfg.student.rsplit("@", 1)
    return eval_distribution(bank_root, student, grader_id, eval_pool_ids(cfg.eval_pool), cfg.eval_pool)

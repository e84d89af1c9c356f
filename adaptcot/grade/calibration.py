"""Cut points calibrated once per scorer, kept in the bank, reused for every student the scorer grades.

A scorer is the PRM with the settings that turn a wrong answer into one score (`GraderConfig.scorer_key`). With
`thresholds: calibrated`, its four cut points are the quantiles (80, 60, 40, 20 %) of the scores of wrong answers of a
**panel** of models on a shared, fixed subset of the pool, each panel model weighted equally, so that on the panel's
answers each wrong level holds a fifth. They are fitted the first time they are needed, written to
`graders/cut_points-<scorer id>.json` with the panel (students, grader ids, answer counts), and never refitted: a
student graded later by the same scorer is cut at the same points, so two students' histograms can be compared.

Why a panel and not the student: cut points taken as quantiles of one student's own eval-set answers would make its
P_eval uniform over the wrong levels by construction, carrying no information. The panel answers live in the bank
like any student's, so `refit(bank, record)` recomputes the same cut points from the bank alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.grade import bank
from adaptcot.grade.levels import CutPoints

FORMAT = "adaptcot.cut_points/1"
SHARES = (0.8, 0.6, 0.4, 0.2)  # the quantiles of the panel's wrong-answer scores at the four cut points


class CalibrationError(ValueError):
    """Cut points cannot be fitted; the message says what to grade or change."""


@dataclass(frozen=True)
class CutPointRecord:
    scorer_id: str
    scorer: dict
    cut_points: CutPoints
    panel: list[dict]  # [{"student", "grader_id", "wrong_answers"}], in panel order
    shares: tuple[float, ...] = SHARES
    format: str = FORMAT


def scorer_id(scorer_key: dict) -> str:
    return hashlib.sha256(json.dumps(scorer_key, sort_keys=True).encode()).hexdigest()[:12]


def record_path(bank_root: str, sid: str) -> str:
    return bank.cut_points_path(bank_root, sid)


def load(bank_root: str, sid: str) -> CutPointRecord | None:
    path = record_path(bank_root, sid)
    if not storage.exists(path):
        return None
    blob = json.loads(storage.read_text(path))
    if blob.get("format") != FORMAT:
        raise CalibrationError(f"{path}: not a cut-point record (format {blob.get('format')!r})")
    return CutPointRecord(blob["scorer_id"], blob["scorer"], tuple(blob["cut_points"]), blob["panel"],
                          tuple(blob["shares"]))


def wrong_answer_scores(bank_root: str, student: str, gid: str) -> np.ndarray:
    """The aggregated PRM scores of one student's scored wrong answers, as stored in its step-scores partition."""
    files = bank.part_files(bank_root, "step_scores", student, gid)
    if not files:
        return np.zeros(0)
    scores = storage.dataset(files, schemas.STEP_SCORES).to_table(columns=["prm_score"])["prm_score"]
    return pc.drop_null(scores).to_numpy(zero_copy_only=False).astype(np.float64)


def fit_cut_points(scores_by_member: list[np.ndarray], shares: tuple[float, ...] = SHARES) -> CutPoints:
    """Weighted quantiles of the pooled scores, each member weighted equally; strictly decreasing or an error."""
    values = np.concatenate(scores_by_member)
    weights = np.concatenate([np.full(len(s), 1.0 / len(s)) for s in scores_by_member])
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order]) / weights.sum()
    cuts = tuple(float(values[min(np.searchsorted(cumulative, share, side="left"), len(values) - 1)])
                 for share in shares)
    if any(a <= b for a, b in zip(cuts, cuts[1:])):
        raise CalibrationError(
            f"the panel's wrong-answer scores cannot be cut into five levels: the quantiles at {list(shares)} are "
            f"{[round(c, 4) for c in cuts]} (ties). Use an aggregation that spreads (progress), a larger or more "
            "varied panel, or give thresholds")
    return cuts


def fit(bank_root: str, sid: str, scorer: dict, members: list[tuple[str, str]], min_wrong_answers: int
        ) -> CutPointRecord:
    """Fit cut points on the panel's stored answers (members: (student, grader id)); the record, not yet saved."""
    scores, panel = [], []
    for student, gid in members:
        found = wrong_answer_scores(bank_root, student, gid)
        if len(found) < min_wrong_answers:
            raise CalibrationError(
                f"panel student {student} has {len(found)} scored wrong answers in {bank_root} (grader {gid}); "
                f"calibration needs at least {min_wrong_answers} per panel model: give grade.panel.questions more "
                "questions, or a weaker panel model")
        scores.append(found)
        panel.append({"student": student, "grader_id": gid, "wrong_answers": int(len(found))})
    return CutPointRecord(sid, scorer, fit_cut_points(scores), panel)


def refit(bank_root: str, record: CutPointRecord) -> CutPoints:
    """The cut points recomputed from the bank alone (the panel's stored answers): equal to the record's."""
    return fit_cut_points([wrong_answer_scores(bank_root, m["student"], m["grader_id"]) for m in record.panel],
                          record.shares)


def save(bank_root: str, record: CutPointRecord) -> CutPointRecord:
    """Write the record unless one exists (the first one stays: levels already in the bank were cut by it)."""
    existing = load(bank_root, record.scorer_id)
    if existing is not None:
        return existing
    blob = asdict(record)
    storage.write_text(record_path(bank_root, record.scorer_id), json.dumps(blob, indent=2))
    return record

"""How each aggregation and each kind of cut point spreads a demo run's wrong answers over the five levels, and
whether the levels follow the world's true difficulty. It reads only the run's bank and pool (the PRM's step scores
are stored per answer, so every aggregation is recomputed without running a model): the measurement behind the
defaults in docs/grading.md.

    python scripts/level_spread.py runs/local [--student student] [--panel peer teacher-t1]

Per aggregation: the cut points (fixed 0.8/0.6/0.4/0.2, and calibrated on the panel's answers), the student's share
of wrong questions per level (wrong_near .. wrong_hardest), and the mean number of steps of the problems at each
level (the world's true difficulty: it should rise from wrong_near to wrong_hardest).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from adaptcot.demo import world
from adaptcot.grade.calibration import CalibrationError, fit_cut_points
from adaptcot.grade.prm import aggregate

AGGREGATIONS = ("progress", "first_error", "min", "last", "mean", "product")
FIXED = (0.8, 0.6, 0.4, 0.2)


def step_scores(bank: Path, student: str) -> list[dict]:
    """Every scored wrong answer of a student: question id and step scores (all of its grader partitions)."""
    path = bank / "step_scores" / f"student={student}"
    table = pads.dataset(path, format="parquet").to_table(columns=["question_id", "step_scores", "steps_total"])
    return [r for r in table.to_pylist() if r["step_scores"]]


def levels(scores: np.ndarray, cuts) -> np.ndarray:
    """0 = wrong_near ... 4 = wrong_hardest (a score on a cut point goes to the easier side)."""
    return np.array([sum(s < c for c in cuts) for s in scores])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--student", default="student")
    parser.add_argument("--panel", nargs="+", default=["peer", "teacher-t1"])
    args = parser.parse_args()
    bank = args.run_dir / "bank"
    questions = {r["question_id"]: r["question"] for pool in ("pool", "eval_pool")
                 for r in pads.dataset(args.run_dir / pool / "pool", format="parquet")
                 .to_table(columns=["question_id", "question"]).to_pylist()}
    answers = step_scores(bank, args.student)
    steps = np.array([len(world.problem_from_question(questions[a["question_id"]]).steps) for a in answers])
    panel = {name: step_scores(bank, name) for name in args.panel}
    out = {}
    for agg in AGGREGATIONS:
        def score(rows):
            return np.array([aggregate(r["step_scores"], agg, r["steps_total"]) for r in rows])

        mine = score(answers)
        try:
            calibrated = fit_cut_points([score(rows) for rows in panel.values()])
        except CalibrationError:
            calibrated = None
        out[agg] = {}
        for kind, cuts in (("fixed", FIXED), ("calibrated", calibrated)):
            if cuts is None:
                out[agg][kind] = "ties: cannot be calibrated"
                continue
            lv = levels(mine, cuts)
            out[agg][kind] = {"cut_points": [round(c, 3) for c in cuts],
                              "shares": [round(float(np.mean(lv == i)), 3) for i in range(5)],
                              "mean_steps": [round(float(steps[lv == i].mean()), 2) if np.any(lv == i) else None
                                             for i in range(5)]}
    print(json.dumps({"student": args.student, "wrong_answers": len(answers), "panel": {k: len(v) for k, v in
                                                                                       panel.items()},
                      "aggregations": out}, indent=1))


if __name__ == "__main__":
    main()

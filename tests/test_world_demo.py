"""The local default tells a true story: models trained on the arithmetic world, then a reduced `adaptcot run` and
`adaptcot ablate` on them (the README's demo at a fraction of its size; docs/demo.md has the full-size numbers)."""

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from adaptcot.demo import world
from adaptcot.teach import journal as teacher_journal

ROOT = Path(__file__).parents[1]
LOCAL = ROOT / "configs" / "local.yaml"
# The demo at a fraction of its size: fewer questions, samples and evaluation questions; the same models.
REDUCED = ["synthetic_pool.math_questions=400", "synthetic_pool.eval_questions=90", "synthetic_pool.ood_questions=30",
           "synthetic_pool.calibration_questions=90", "grade.panel.questions=150",
           "grade.panel.min_wrong_answers=20", "sample.n=120", "train.epochs=2", "eval.sampling.n=1"]


def cli(command: str, run_dir: Path, models: Path, *overrides: str) -> subprocess.CompletedProcess:
    if not (run_dir / "models").exists():  # the config names the models under run_dir; the build there is reused
        shutil.copytree(models, run_dir / "models")
    sets = [f"run_dir={run_dir}", *REDUCED, *overrides]
    cmd = [sys.executable, "-m", "adaptcot", command, "--config", str(LOCAL), *[a for o in sets
                                                                                    for a in ("--set", o)]]
    # Bytes, decoded here: text mode would turn a progress bar's "\r" redraws into new lines.
    done = subprocess.run(cmd, capture_output=True, timeout=1800, cwd=ROOT)
    return subprocess.CompletedProcess(cmd, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.mark.slow
def test_the_trained_world_models_have_a_difficulty_ladder(world_models):
    report = json.loads((world_models / "world_models.json").read_text())
    student, peer, teacher = (report["greedy_accuracy"][kind] for kind in ("student", "peer", "teacher"))
    student, peer, teacher = ({int(k): v for k, v in acc.items() if k.isdigit()} for acc in (student, peer, teacher))
    # The student solves short problems and fails long ones; the teacher is better where the student fails; the peer,
    # trained for less, is a weaker student.
    assert student[1] > 0.6 and student[6] < 0.5 * student[1]
    assert statistics.fmean(teacher[s] for s in (4, 5, 6)) > statistics.fmean(student[s] for s in (4, 5, 6)) + 0.2
    assert statistics.fmean(peer.values()) < statistics.fmean(student.values())
    # The PRM's step verdicts on held-out student answers beat always guessing the more common label.
    prm = report["prm"]
    assert prm["heldout_step_accuracy"] > prm["heldout_majority_baseline"] + 0.05


@pytest.mark.slow
def test_the_reduced_demo_grades_by_difficulty_keeps_teacher_cots_and_trains(world_models, tmp_path):
    run_dir = tmp_path / "run"
    done = cli("run", run_dir, world_models)
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr  # stage lines and bars only: the libraries' logs are in the log folder
    # Lines as a terminal shows them: a bar redraws its line with "\r", only "\n" starts a new one.
    assert "Traceback" not in terminal and terminal.count("\n") < 90, terminal
    summary = json.loads((run_dir / "run_summary.json").read_text())
    levels = summary["stages"]["grade"]["levels"]
    assert levels["easy"] > 0 and sum(n for lv, n in levels.items() if lv != "easy") > 0
    # Levels follow the world's true difficulty: easy questions have fewer steps than wrong ones, and every one of
    # the five wrong levels holds questions, cut at points calibrated on the panel (peer, teacher), not the student.
    grade = summary["stages"]["grade"]
    assert all(levels[lv] > 0 for lv in levels), levels
    assert [m["student"] for m in grade["panel"]] == ["peer", "teacher-t1"]
    assert grade["cut_points_from"].startswith("calibrated on peer") and "student" not in grade["cut_points_from"]
    assert grade["eval_set"]["cut_points"] == grade["cut_points"] == grade["panel"][0]["cut_points"]
    (partition,) = (run_dir / "bank" / "bank" / "student=student").iterdir()
    bank = pq.read_table(partition)
    questions = [r for pool in ("pool", "eval_pool")  # the calibration split is graded into the bank too (P_eval)
                 for r in pq.read_table(run_dir / pool / "pool").select(["question_id", "question"]).to_pylist()]
    steps = {r["question_id"]: len(world.problem_from_question(r["question"]).steps) for r in questions}
    by_level: dict[str, list[int]] = {}
    for row in bank.select(["question_id", "level"]).to_pylist():
        by_level.setdefault(row["level"], []).append(steps[row["question_id"]])
    wrong = [s for lv, ss in by_level.items() if lv != "easy" for s in ss]
    assert statistics.fmean(by_level["easy"]) + 1 < statistics.fmean(wrong)
    assert len([lv for lv in by_level if lv != "easy"]) >= 2
    # Most teacher CoTs verify, and the student is trained on them and evaluated before and after.
    teach = summary["stages"]["teach"]
    assert teach["kept"] > 0.5 * teach["stored"]
    assert summary["stages"]["train"]["global_step"] > 0
    before, after = summary["stages"]["eval-before"], summary["stages"]["eval-after"]
    assert set(before) == set(after) == {"world-heldout", "world-ood"}
    assert before["world-heldout"]["accuracy"] > 0
    report = (run_dir / "report.html").read_text()
    # (No per-level accuracy on the benchmarks: they are not graded into the bank, P_eval's split is.)
    assert all(f"data-figure='{key}'" in report for key in ("levels", "prm_scores", "sampling", "teacher",
                                                              "training", "evaluation"))
    # P_eval comes from the calibration split, which no reported benchmark holds.
    held_out = {json.loads(line)["question"] for line in (run_dir / "raw" / "eval.jsonl").read_text().splitlines()}
    calibration = {r["question"] for r in pq.read_table(run_dir / "eval_pool" / "pool").to_pylist()}
    assert calibration and not calibration & held_out


@pytest.mark.slow
def test_the_reduced_ablation_reports_intervals_and_pays_for_each_cot_once(world_models, tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["ablation.seeds=[0, 1]", "ablation.arms=[adaptive-cot, uniform-cot, transfer-cot]", "ablation.n=40",
                 "ablation.epochs=1"]
    done = cli("ablate", run_dir, world_models, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "ablation" / "summary.json").read_text())
    runs = [(arm, seed) for arm in ("adaptive-cot", "transfer-cot", "uniform-cot") for seed in (0, 1)]
    assert sorted((r["arm"], r["seed"]) for r in summary["results"]) == runs
    assert [c["name"].split(" (")[0] for c in summary["comparisons"]] == [
        "adaptive vs uniform sampling", "own P_eval vs another student's P_eval"]
    for comparison in summary["comparisons"]:
        for bench in ("world-heldout", "world-ood"):
            acc = comparison["difference"][bench]["accuracy"]
            assert acc["low"] <= acc["mean"] <= acc["high"]
    # The transfer arm drew by the peer's P_eval, measured on the same calibration split at the same cut points.
    own = json.loads((run_dir / "ablation" / "adaptive-cot" / "seed=0" / "samples" / "distribution.json").read_text())
    other = json.loads((run_dir / "ablation" / "transfer-cot" / "seed=0" / "samples" / "distribution.json")
                       .read_text())
    assert own["provenance"]["student"] == "student" and other["provenance"]["student"] == "peer"
    assert own["weights"] != other["weights"]
    # One teacher journal for all arms and seeds: no request was sent twice.
    drawn = set()
    for arm, seed in runs:
        drawn |= set(pq.read_table(run_dir / "ablation" / arm / f"seed={seed}" / "samples" / "samples.parquet")
                     ["question_id"].to_pylist())
    keys = [(r["question_id"], r["sample_index"])
            for r in teacher_journal.journal_rows(str(run_dir / "ablation" / "teach"))]
    assert len(keys) == len(set(keys)) == len(drawn)
    report = (run_dir / "report.html").read_text()
    assert "data-figure='ablation'" in report and "data-table='ablation'" in report
    again = cli("ablate", run_dir, world_models, *overrides)  # finished arms are read back, not redone
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "ablation" / "summary.json").read_text())["results"] == summary["results"]

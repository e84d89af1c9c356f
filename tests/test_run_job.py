"""The README's main job, `adaptcot run --config configs/plumbing.yaml`, end to end on a local Ray cluster."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from adaptcot.pool.importer import read_pool

ROOT = Path(__file__).parents[1]


def run_job(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "adaptcot", "run", "--config", str(ROOT / "configs" / "plumbing.yaml"),
           "--set", f"run_dir={run_dir}", "--set", "synthetic_pool.math_questions=30",
           "--set", "synthetic_pool.code_questions=8", *[a for o in overrides for a in ("--set", o)]]
    # Bytes, decoded here: text mode would turn a progress bar's "\r" redraws into new lines.
    done = subprocess.run(cmd, capture_output=True, timeout=600, cwd=ROOT)
    return subprocess.CompletedProcess(cmd, done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.mark.slow
def test_local_job_builds_models_imports_and_grades_and_reruns_add_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = run_job(run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "imported 30" in first.stdout and "imported 8" in first.stdout
    for name in ("student", "teacher", "prm"):
        assert (run_dir / "models" / name / "model.safetensors").exists()
    pool = read_pool(run_dir / "pool")
    assert sorted(set(pool["domain"].to_pylist())) == ["code", "math"]
    assert pool.num_rows == len(set(pool["question_id"].to_pylist())) == 38
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert [s["imported"] for s in summary["stages"]["import"]] == [30, 8]
    grade = summary["stages"]["grade"]
    assert (grade["math_questions"], grade["code_questions"], grade["newly_graded"]) == (30, 8, 38)
    assert sum(grade["levels"].values()) == 38
    assert grade["code_isolation"] == "namespaces"  # what every code verdict ran under
    # Later stages: a sample from the student's bank, the teacher's CoTs (all verified), SFT records.
    # 48 asked for, the bank holds 38, of which the 12 the job evaluates on are never drawn: the report says so.
    sampled = summary["stages"]["sample"]
    assert sampled["drawn"] == 26 and sampled["excluded"]["benchmark"] == 12
    assert "fewer than" in first.stdout or "short" in first.stdout
    teach = summary["stages"]["teach"]
    assert teach["requests"] == teach["stored"] == 52 and teach["kept"] + sum(teach["dropped"].values()) == 52
    # An in-cluster teacher priced at 0: spend is $0, not unknown, and is broken down by the sample's levels.
    assert teach["spend"]["usd"] == 0.0 and sum(e["cots"] for e in teach["spend"]["by_level"].values()) == 52
    samples = pq.read_table(run_dir / "samples" / "samples.parquet")
    assert samples.num_rows == 26 and set(samples["level"].to_pylist()) <= set(grade["levels"])
    imported = read_pool(run_dir / "eval" / "benchmarks" / "synthetic-math")["question_id"].to_pylist()
    evaluated = sorted(imported)[:12]  # the benchmark's `limit: 12`: its first 12 in question_id order
    assert not set(evaluated) & set(samples["question_id"].to_pylist())
    assert (run_dir / "sft" / "sft_records.parquet").exists()
    # Random tiny models: no CoT is kept, so the job says training had nothing to train on (tests/test_sft_train.py
    # trains for real).
    assert summary["stages"]["train"] == {"skipped": "no SFT records"} and "[train] skipped" in first.stdout
    # The student is evaluated before SFT (12 questions x 2 samples, per level of its bank).
    before = summary["stages"]["eval-before"]["synthetic-math"]
    assert (before["questions"], before["samples_per_question"]) == (12, 2) and "eval-after" not in summary["stages"]
    evaluated = run_dir / "eval" / "student-before" / "metrics.json"
    assert "by_level" in json.loads(evaluated.read_text())["benchmarks"]["synthetic-math"]
    report = (run_dir / "report.html").read_text()  # the job ends with its report
    assert all(f"data-figure='{key}'" in report for key in ("levels", "sampling", "teacher", "evaluation"))
    assert "Sandbox isolation of code verdicts: namespaces (grading)" in report

    # What the person at the terminal sees: stage lines and bars, no library logs, no traceback; where things are.
    terminal = first.stdout + first.stderr
    assert "Traceback" not in terminal and "INFO" not in terminal and "WARNING" not in terminal
    assert terminal.count("\n") < 80, terminal  # a bar redraws its line with "\r": only "\n" starts a new one
    logs = re.search(r"logs: (\S+adaptcot\.log)", first.stdout).group(1)
    assert first.stdout.rstrip().endswith(f"report: {run_dir / 'report.html'}")
    assert "Ray" in Path(logs).read_text() or "ray" in Path(logs).read_text()  # the libraries' logs went there
    assert list((Path(logs).parent / "ray").glob("raylet*"))  # and Ray's own session logs beside it
    # How the run was made, in the run directory: resolved config, versions, git revision, command line.
    made = json.loads((run_dir / "provenance.json").read_text())
    assert made["argv"][1:3] == ["run", "--config"] and made["command"] == "run"
    assert {"adaptcot", "ray", "torch", "transformers"} <= set(made["packages"]) and made["git"]["commit"]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["grade"]["bank"] == str(run_dir / "bank")  # defaults and {run_dir} filled in
    assert resolved["grade"]["student"]["model"] == str(run_dir / "models" / "student")

    again = run_job(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already in pool 30" in again.stdout
    again_summary = json.loads((run_dir / "run_summary.json").read_text())
    assert again_summary["stages"]["eval-before"] == summary["stages"]["eval-before"]  # reused, not redone
    assert again_summary["stages"]["grade"]["generated"] == 0
    assert again_summary["stages"]["teach"]["requests"] == 0  # every CoT was stored: nothing is asked twice
    assert pq.read_table(run_dir / "samples" / "samples.parquet").equals(samples)  # same seed, same sample
    assert read_pool(run_dir / "pool").num_rows == 38


@pytest.mark.slow
def test_the_job_runs_with_its_run_dir_in_a_bucket_and_resumes_there(bucket, tmp_path):
    from adaptcot.common import storage
    from adaptcot.grade import bank

    models = tmp_path / "models"  # vLLM loads models from a local disk; everything else goes to the bucket
    run_dir = f"{bucket}/runs/r1"
    overrides = [f"tiny_models.out={models}", f"grade.student.model={models}/student",
                 f"grade.prm.model={models}/prm", f"teacher.vllm.model={models}/teacher"]
    first = run_job(run_dir, *overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(storage.read_text(f"{run_dir}/run_summary.json"))
    assert [s["imported"] for s in summary["stages"]["import"]] == [30, 8]
    assert read_pool(f"{run_dir}/pool").num_rows == 38
    assert sum(bank.summary(f"{run_dir}/bank")[0]["levels"].values()) == 38
    assert storage.read_table(f"{run_dir}/samples/samples.parquet").num_rows == 26  # the 12 evaluated on left out
    assert summary["stages"]["teach"]["stored"] == 52
    assert storage.exists(f"{run_dir}/teach/cots.parquet") and storage.exists(f"{run_dir}/sft/sft_records.parquet")
    assert "by_level" in json.loads(storage.read_text(f"{run_dir}/eval/student-before/metrics.json"))[
        "benchmarks"]["synthetic-math"]
    assert "data-figure='levels'" in storage.read_text(f"{run_dir}/report.html")
    assert not Path(run_dir.replace("s3://", "")).exists()  # nothing went to a local directory of that name
    # The logs were written locally while the job ran, then copied into the bucket's run directory.
    logs = storage.list_files(f"{run_dir}/logs", "adaptcot.log", recursive=True)
    assert len(logs) == 1 and "[grade] done" in storage.read_text(logs[0]) and storage.exists(f"{run_dir}/config.yaml")

    again = run_job(run_dir, *overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads(storage.read_text(f"{run_dir}/run_summary.json"))["stages"]
    assert redo["grade"]["generated"] == 0 and redo["teach"]["requests"] == 0  # resumed from the bucket
    assert read_pool(f"{run_dir}/pool").num_rows == 38


@pytest.mark.slow
def test_a_run_that_fails_says_so_in_one_line_naming_the_stage_and_its_log(tmp_path):
    run_dir = tmp_path / "run"
    failed = run_job(run_dir, "synthetic_pool.code_questions=0", f"grade.student.model={tmp_path / 'no-student'}")
    assert failed.returncode == 2
    assert "Traceback" not in failed.stdout + failed.stderr
    [line] = failed.stderr.strip().splitlines()[-1:]
    log = re.search(r"\(log: (\S+)\)$", line).group(1)
    assert line.startswith("adaptcot run: [grade] failed: FileNotFoundError: student model not found") and \
        str(tmp_path / "no-student") in line
    assert "Traceback" in Path(log).read_text()  # the whole story is in the log
    assert "[import] done" in failed.stdout and "[grade] done" not in failed.stdout  # the stages before it ran

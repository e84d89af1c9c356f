"""Every benchmark still runs: `python benchmarks/X.py --smoke` for each script in benchmarks/, from the repo root.

A smoke run is small (each at most ~2 minutes on 2 cores) and checks that the benchmark's two sides agree (same
verdicts, rows, counts or tokens, whatever it compares), exiting non-zero when they do not; it does not check speed.
The scripts are globbed, so a new benchmark without --smoke fails here. Each starts its own Ray (if any) in its own
process, beside the session's cluster.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 900  # a smoke run takes 0.1-2.5 minutes alone; generous for a machine shared with other runs
TAIL = 4000


def tail(text: str) -> str:
    return text[-TAIL:] if len(text) > TAIL else text


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 6, [p.name for p in BENCHMARKS]


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_smoke_run_passes(script):
    assert "--smoke" in script.read_text(), f"benchmarks/{script.name} has no --smoke flag (tests/test_benchmarks.py)"
    # A session of its own: on a timeout the whole process group goes, SIGTERM first so a benchmark can stop what it
    # started in sessions of their own (teacher_client's vLLM server).
    proc = subprocess.Popen([sys.executable, str(script.relative_to(ROOT)), "--smoke"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"benchmarks/{script.name} --smoke did not finish in {TIMEOUT_S} s\n"
                    f"--- stdout (tail) ---\n{tail(out)}\n--- stderr (tail) ---\n{tail(err)}")
    assert proc.returncode == 0, (f"benchmarks/{script.name} --smoke exited {proc.returncode}\n"
                                  f"--- stdout (tail) ---\n{tail(out)}\n--- stderr (tail) ---\n{tail(err)}")

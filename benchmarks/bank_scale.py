"""Bank bookkeeping at scale: what to grade, the bank join, sampling, on 1M and 10M synthetic questions.

Run: .venv/bin/python benchmarks/bank_scale.py [--sizes 1000000 10000000] [--skip-in-process] [--smoke]

For each size N a synthetic world is written to a temporary directory: a pool of N questions (ids only matter), the
attempts of one student with one sample each for half of them (the other half still to grade), step scores for
the wrong ones, and the bank rows of those graded. Then, timed one after the other, each step as the job runs it:
1. todo: the pool x 1 sample minus the stored samples (`grading.todo_dataset`: a distributed anti-join), counted;
2. finalize: attempts and step scores aggregated per question, joined, anti-joined with the bank, graded and written
   as bank parts (`finalize.finalize_bank`);
3. sample: 2,000 questions drawn from the N/2-row bank by a curriculum prior (`draw.sample`: semi-join with the
   pool, marks, counts, first k per level).
Each step runs on Ray Data (forced: `in_process_max_rows=0`), and, as the baseline in the same script, in this one
process (the path the job takes below `bank.IN_PROCESS_MAX_ROWS`), unless --skip-in-process. Memory: the peak RSS of
the largest single process of the job (the driver or any Ray worker) and the peak of the machine's used memory
plus shared memory (Ray's object store) above what it was before the step, sampled every 0.2 s. Prints a table and
the 10M/1M ratios of time and memory (target: time about linear, i.e. ~10x; peak per-process memory flat), and the
Ray Data / in-process ratios at each size.
Agreement (exit 1 with the disagreements listed): each mode finds exactly the samples not stored as left to grade,
grades every stored question, and both modes agree on what they count, on the bank's level histogram, on its rows
(compared in full when the bank has at most `bank.IN_PROCESS_MAX_ROWS` rows) and on the sample drawn (the same
question ids in the same order).
--smoke: one size of 20,000 questions (under a minute, nearly all Ray Data's fixed start-up costs): checks that it
runs and agrees, not its scaling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from adaptcot.common import schemas, storage
from adaptcot.grade import bank, finalize, grading
from adaptcot.grade.answering import StudentConfig
from adaptcot.grade.levels import GraderConfig
from adaptcot.sample import draw

STUDENT, ROWS_PER_FILE = "bench-student", 500_000
SMOKE_SIZES = [20_000]
BANK_FIELDS = ["question_id", "domain", "level", "difficulty_rank", "pass_rate", "num_samples", "prm_score"]


class Peak:
    """Samples memory in a thread while a step runs."""

    def __init__(self):
        self.largest_process = self.machine = 0
        self._base = self._machine_now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _machine_now() -> int:
        info = psutil.virtual_memory()
        return info.used + getattr(info, "shared", 0)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me] + [p for p in psutil.process_iter(["name", "cmdline"])
                            if "ray::" in " ".join(p.info["cmdline"] or []) or p.info["name"] == "raylet"]
            for p in procs:
                try:
                    self.largest_process = max(self.largest_process, p.memory_info().rss)
                except psutil.Error:
                    pass
            self.machine = max(self.machine, self._machine_now() - self._base)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ids(start: int, stop: int) -> pa.Array:
    """Question ids shaped like real ones (64 hex digits), distinct, cheap to make."""
    numbers = np.arange(start, stop, dtype=np.uint64)
    scrambled = numbers * np.uint64(2654435761) % np.uint64(2**61 - 1)  # a bijection: ids stay distinct
    return pa.array(np.char.mod("%064x", scrambled).astype(object), pa.string())


def write_world(root: Path, n: int, grader: GraderConfig, gid: str) -> int:
    """Write the pool, attempts and step scores; the number of questions already graded (one sample each)."""
    graded = 0
    pool_dir = root / "pool" / "pool"
    pool_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for start in range(0, n, ROWS_PER_FILE):
        stop = min(n, start + ROWS_PER_FILE)
        k, qid = stop - start, ids(start, stop)
        pq.write_table(pa.table({
            "question_id": qid, "domain": pa.array(["math"] * k), "question": pa.array(["What is 1 + 1?"] * k),
            "reference_answer": pa.array(["2"] * k), "reference_solution": pa.nulls(k, pa.string()),
            "tests": pa.array([None] * k, schemas.CODE_TESTS), "starter_code": pa.nulls(k, pa.string()),
            "category": pa.nulls(k, pa.string()), "source": pa.array(["bench"] * k),
            "source_row": pa.array(np.arange(start, stop))}, schema=schemas.POOL), pool_dir / f"part-{start}.parquet")
        half = qid.slice(0, k // 2)  # the first half of each file is graded already
        graded += k // 2
        correct = rng.random(k // 2) < 0.4
        attempts = pa.table({
            "question_id": half, "domain": pa.array(["math"] * (k // 2)), "student": pa.array([STUDENT] * (k // 2)),
            "sample_index": pa.array(np.zeros(k // 2, np.int32)), "response": pa.array(["\\boxed{2}"] * (k // 2)),
            "num_tokens": pa.array(np.full(k // 2, 64, np.int32)), "finish_reason": pa.array(["stop"] * (k // 2)),
            "verdict": pa.array(np.where(correct, "passed", "wrong_answer")), "correct": pa.array(correct),
            "verify_detail": pa.nulls(k // 2, pa.string()), "error": pa.nulls(k // 2, pa.string())})
        bank.write_part(attempts, bank.partition_dir(root / "bank", "attempts", STUDENT, gid), schemas.ATTEMPTS)
        wrong = attempts.filter(pa.compute.invert(attempts["correct"]))
        m = wrong.num_rows
        bank.write_part(pa.table({
            "question_id": wrong["question_id"], "student": pa.array([STUDENT] * m),
            "sample_index": wrong["sample_index"], "prm": pa.array(["bench-prm"] * m),
            "step_scores": pa.array([[0.5]] * m, pa.list_(pa.float32())),
            "prm_score": pa.array(rng.random(m).astype(np.float32)), "prm_error": pa.nulls(m, pa.string())}),
            bank.partition_dir(root / "bank", "step_scores", STUDENT, gid), schemas.STEP_SCORES)
    return graded


def run_steps(root: Path, n: int, grader: GraderConfig, gid: str, limit: int) -> dict:
    """The three steps with `in_process_max_rows=limit`; returns {step: (seconds, largest process, machine,
    result)} and, under "outcome", what they produced (read after the timed steps, to compare the modes)."""
    import shutil

    cfg = grading.GradeConfig(pool=str(root / "pool"), bank=str(root / "bank"), grader=grader,
                              prm={"model": "unused"}, student=StudentConfig(model="unused", name=STUDENT,
                                                                             sampling={"n": 1}))
    shutil.rmtree(root / "bank" / "bank", ignore_errors=True)  # finalize starts from no bank rows
    out = {}
    pool_files = sorted(str(p) for p in (root / "pool" / "pool").glob("*.parquet"))
    steps = [("todo", lambda: grading.todo_dataset(cfg, gid, pool_files, limit)[1]),
             ("finalize", lambda: finalize.finalize_bank(str(root / "bank"), STUDENT, gid, 1, grader, limit)),
             ("sample", lambda: draw.sample(
                 root / "bank", root / "pool", STUDENT, gid,
                 draw.SampleConfig(n=2000, distribution={"kind": "curriculum", "weights": {
                     "easy": 6, "wrong_near": 5, "wrong_mild": 4, "wrong_mid": 3, "wrong_hard": 2,
                     "wrong_hardest": 1}}), root / "samples", limit).drawn)]
    for name, step in steps:
        with Peak() as peak:
            started = time.perf_counter()
            result = step()
            seconds = time.perf_counter() - started
        out[name] = (seconds, peak.largest_process, peak.machine, result)
    bank_files = bank.part_files(root / "bank", "bank", STUDENT, gid)
    out["outcome"] = {
        "levels": bank.level_counts(bank_files),
        "bank": (storage.dataset(bank_files, schemas.BANK).to_table(columns=BANK_FIELDS).sort_by("question_id")
                 if storage.row_count(bank_files) <= bank.IN_PROCESS_MAX_ROWS else None),
        "sample": pq.read_table(root / "samples" / "samples.parquet", columns=["question_id"])["question_id"]}
    return out


def disagreements(n: int, graded: int, results: dict) -> list[str]:
    """What the modes at size n got wrong or do not agree on (see the module docstring)."""
    problems = []
    for mode, steps in results.items():
        if steps["todo"][3] != n - graded:
            problems.append(f"N={n:,} {mode}: todo counted {steps['todo'][3]} samples, {n - graded} are not stored")
        if sum(steps["finalize"][3]) != graded:
            problems.append(f"N={n:,} {mode}: finalize graded {steps['finalize'][3][0]} and found "
                            f"{steps['finalize'][3][1]} ungradable of the {graded} questions with attempts")
    if len(results) < 2:
        return problems
    (a, ra), (b, rb) = results.items()
    for step in ("todo", "finalize", "sample"):
        if ra[step][3] != rb[step][3]:
            problems.append(f"N={n:,} {step}: {a} gives {ra[step][3]}, {b} gives {rb[step][3]}")
    oa, ob = ra["outcome"], rb["outcome"]
    if oa["levels"] != ob["levels"]:
        problems.append(f"N={n:,} bank levels: {a} {oa['levels']}, {b} {ob['levels']}")
    if oa["bank"] is not None and ob["bank"] is not None and not oa["bank"].equals(ob["bank"]):
        differ = [f for f in BANK_FIELDS if oa["bank"].num_rows != ob["bank"].num_rows
                  or not oa["bank"][f].equals(ob["bank"][f])]
        problems.append(f"N={n:,} bank rows: {a} wrote {oa['bank'].num_rows}, {b} {ob['bank'].num_rows}; "
                        f"columns that differ: {differ}")
    if not oa["sample"].equals(ob["sample"]):
        same = sum(x == y for x, y in zip(oa["sample"].to_pylist(), ob["sample"].to_pylist()))
        problems.append(f"N={n:,} sample: {a} drew {len(oa['sample'])} questions, {b} {len(ob['sample'])}; "
                        f"{same} equal at the same position")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}: checks the modes agree")
    args = parser.parse_args()
    if args.smoke:
        args.sizes = SMOKE_SIZES
    import ray

    from adaptcot.common.runtime import configure_ray_data

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    configure_ray_data()  # the job's Ray Data knobs (shuffle aggregators' CPUs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    grader = GraderConfig(mode="prm")
    gid = "bench"
    results, problems = {}, []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bank-scale-") as tmp:
            started = time.perf_counter()
            graded = write_world(Path(tmp), n, grader, gid)
            print(f"N={n:,}: world written in {time.perf_counter() - started:.0f} s", flush=True)
            modes = {"ray": 0} if args.skip_in_process else {"ray": 0, "in-process": 10**12}
            for mode, limit in modes.items():
                results[(n, mode)] = run_steps(Path(tmp), n, grader, gid, limit)
                for step in ("todo", "finalize", "sample"):
                    s, proc, machine, result = results[(n, mode)][step]
                    print(f"  {mode:10} {step:9} {s:7.1f} s  largest process {proc / 2**20:7.0f} MiB  "
                          f"machine +{machine / 2**20:7.0f} MiB  ({result})", flush=True)
            problems += disagreements(n, graded, {mode: results[(n, mode)] for mode in modes})
            for mode in modes:  # only the numbers are kept
                del results[(n, mode)]["outcome"]
    sizes = sorted(args.sizes)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        print(f"\nratios {large:,} / {small:,} (rows x{large / small:.0f}):")
        for mode in ("ray", "in-process"):
            if (small, mode) not in results:
                continue
            for step in ("todo", "finalize", "sample"):
                a, b = results[(small, mode)][step], results[(large, mode)][step]
                print(f"  {mode:10} {step:9} time x{b[0] / a[0]:5.1f}  largest process x{b[1] / a[1]:4.1f}  "
                      f"machine x{max(b[2], 2**20) / max(a[2], 2**20):4.1f}")
    for n in sizes:
        if (n, "in-process") in results:
            print(f"\nN={n:,}: ray / in-process")
            for step in ("todo", "finalize", "sample"):
                r, p = results[(n, "ray")][step], results[(n, "in-process")][step]
                print(f"  {step:9} time x{r[0] / p[0]:5.2f}  largest process x{r[1] / p[1]:4.2f}")
    ray.shutdown()
    if problems:
        sys.exit("bank_scale: the steps are wrong or the modes disagree:\n  " + "\n  ".join(problems))
    print("\nagreement: " + ("Ray Data and in-process give the same counts, bank and sample"
                            if not args.skip_in_process else "counts as expected (in-process skipped)"))


if __name__ == "__main__":
    main()

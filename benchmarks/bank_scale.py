"""Bank bookkeeping at scale: what to grade, finalize, sample, on 1M and 10M synthetic questions.

Run: .venv/bin/python benchmarks/bank_scale.py [--sizes 1000000 10000000] [--skip-in-process] [--smoke]

For each size N a synthetic world is written in the bank's layout (question buckets, manifests): a pool of N
questions, the attempts of one student with one sample each for half of every bucket's questions (the other half
still to grade), committed in batches of COMMIT_ROWS rows as the grading pipeline commits them, and the step scores
of the wrong ones. Then, timed one after the other, each step as the job runs it:
1. todo: the samples left to answer (`grading.todo_dataset`), streamed to the end and counted; "first block" is
   how long the stream takes to hand over its first block (a resumed grade starts generating then);
2. finalize: per-question stats of every bucket with new attempts, graded into bank parts, the manifest folded
   (`finalize.finalize_bank`);
3. sample: 2,000 questions drawn from the N/2-row bank by a curriculum prior (`draw.sample`).
Each step runs as Ray tasks, a group of buckets each (the todo: a streaming Ray dataset, one task per group; finalize
and sample forced: `in_process_max_rows=0`), and, as the baseline in the same run, the same functions in this one
process (the path the job takes below `bank.IN_PROCESS_MAX_ROWS`), unless --skip-in-process. The driver's CPU time is
printed beside each step: on the Ray path it stays a small share of the step's time, the work having run in Ray tasks.
Memory: the peak unique memory (USS) of the largest single process of the job (the driver or any Ray worker), sampled
every 0.2 s. Prints a table, the 10M/1M ratios of time and memory (targets: time at most 10x, largest process at most
1.5x) and the Ray / in-process ratios at each size (target at 1M: Ray at most 2x in-process, or in-process + 20 s).
Agreement (exit 1 with the disagreements listed): each mode finds exactly the samples not stored as left to grade,
grades every stored question, and both modes agree on the bank's level histogram, on its rows (compared in full up
to 1M rows) and on the sample drawn (the same question ids in the same order).
--smoke: one size of 20,000 questions (under a minute): checks that it runs and agrees, not its scaling.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import bits_for
from adaptcot.grade import bank, finalize, grading, manifest, todo
from adaptcot.grade.answering import StudentConfig
from adaptcot.grade.levels import GraderConfig
from adaptcot.pool.layout import add_pool_rows, rows_by_bucket
from adaptcot.sample import draw

STUDENT, GID = "bench-student", "bench"
COMMIT_ROWS = 2_000  # rows per commit while writing the world: about what one pipeline batch commits
POOL_CHUNK = 1_000_000
SMOKE_SIZES = [20_000]
BANK_FIELDS = ["question_id", "domain", "level", "difficulty_rank", "pass_rate", "num_samples", "prm_score"]
STEPS = ("todo", "finalize", "sample")


class Peak:
    """Samples the largest process's unique memory (USS) in a thread while a step runs."""

    def __init__(self):
        self.largest_process = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me] + me.children(recursive=True)  # this run's Ray: raylet, its workers, GCS
            for p in procs:
                try:
                    self.largest_process = max(self.largest_process, p.memory_full_info().uss)
                except psutil.Error:
                    pass
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ids(start: int, stop: int) -> pa.Array:
    """Question ids shaped like real ones (32 hex bits, uniform first bits), distinct, in bucket order."""
    numbers = np.arange(start, stop, dtype=np.uint64)
    scrambled = numbers * np.uint64(2654435761) % np.uint64(2**61 - 1)  # a bijection: ids stay distinct
    prefix = np.char.mod("%04x", (numbers * np.uint64(2**16) // np.uint64(max(stop, 1))))  # the bucket bits
    return pa.array(np.char.add(prefix, np.char.mod("%028x", scrambled)).astype(object),
                    pa.string())


def write_world(root: Path, n: int) -> int:
    """Pool, attempts and step scores; returns how many questions have their (one) sample stored."""
    rng = np.random.default_rng(0)
    all_ids = ids(0, n)
    for start in range(0, n, POOL_CHUNK):
        qid = all_ids.slice(start, min(POOL_CHUNK, n - start))
        k = len(qid)
        add_pool_rows(root / "pool", pa.table({
            "question_id": qid, "domain": pa.array(["math"] * k), "question": pa.array(["What is 1 + 1?"] * k),
            "reference_answer": pa.array(["2"] * k), "reference_solution": pa.nulls(k, pa.string()),
            "tests": pa.array([None] * k, schemas.CODE_TESTS), "starter_code": pa.nulls(k, pa.string()),
            "category": pa.nulls(k, pa.string()), "source": pa.array(["bench"] * k),
            "source_row": pa.array(np.arange(start, start + k))}, schema=schemas.POOL), expected_rows=n)
    graded_mask = rng.random(n) < 0.5  # about half of every bucket is graded already
    graded_ids = all_ids.filter(pa.array(graded_mask))
    m = len(graded_ids)
    correct = rng.random(m) < 0.4
    attempts = pa.table({
        "question_id": graded_ids, "domain": pa.array(["math"] * m), "student": pa.array([STUDENT] * m),
        "sample_index": pa.array(np.zeros(m, np.int32)), "response": pa.array(["\\boxed{2}"] * m),
        "num_tokens": pa.array(np.full(m, 64, np.int32)), "finish_reason": pa.array(["stop"] * m),
        "verdict": pa.array(np.where(correct, "passed", "wrong_answer")), "correct": pa.array(correct),
        "verify_detail": pa.nulls(m, pa.string()), "error": pa.nulls(m, pa.string())})
    scores = rng.random(m).astype(np.float32)
    root_s = str(root / "bank")
    manifest.check_layout(root_s, create=True, bits=bits_for(n))
    for start in range(0, m, COMMIT_ROWS):
        batch = attempts.slice(start, COMMIT_ROWS)
        wrong = batch.filter(pc.invert(batch["correct"]))
        w = wrong.num_rows
        step = pa.table({
            "question_id": wrong["question_id"], "student": pa.array([STUDENT] * w),
            "sample_index": wrong["sample_index"], "prm": pa.array(["bench-prm"] * w),
            "step_scores": pa.array([[0.5]] * w, pa.list_(pa.float32())),
            "prm_score": pa.array(scores[start:start + COMMIT_ROWS][~batch["correct"].to_numpy(
                zero_copy_only=False)]), "prm_error": pa.nulls(w, pa.string())})
        manifest.commit(root_s, STUDENT, GID, {"attempts": batch, "step_scores": step})
    return m


def reset_finalize(root: str) -> None:
    """Back to "nothing finalized": the bank parts go, the manifest's attempts are new again."""
    current = manifest.read_manifest(root, STUDENT, GID)
    rows = current.rows
    for path in current.files("bank"):
        storage.remove(path)
    rows = rows.filter(pc.is_in(rows["table"], pa.array(["attempts", "step_scores"])))
    rows = rows.set_column(rows.schema.get_field_index("finalized"), "finalized",
                           pa.array([False] * rows.num_rows))
    manifest.fold(current, STUDENT, GID, rows)


def driver_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def consume_todo(cfg, on_ray: bool) -> tuple[int, float]:
    """(samples left, seconds to the first block) the way the job reads the todo."""
    started = time.perf_counter()
    if on_ray:
        stream, _ = grading.todo_dataset(cfg, GID)
        counts = stream.map_batches(_row_count, batch_format="pyarrow", batch_size=None,
                                    num_cpus=cfg.student.resources.cpus_per_light_stage)  # fused with the todo task
        rows, first = 0, None
        for batch in counts.iter_batches(batch_format="pyarrow", batch_size=None):  # counts only reach the driver
            first = first or time.perf_counter() - started
            rows += pc.sum(batch["rows"]).as_py()
        return rows, first or 0.0
    groups, _ = todo.todo_groups(*_pool(cfg), manifest.read_manifest(cfg.bank, STUDENT, GID), 1,
                                 grading.block_rows(cfg))
    rows, first = 0, None
    for group in groups:
        rows += todo.todo_of_buckets(group, 1).num_rows
        first = first or time.perf_counter() - started
    return rows, first or 0.0


def _row_count(batch: pa.Table) -> pa.Table:
    return pa.table({"rows": [batch.num_rows]})


def _pool(cfg):
    from adaptcot.pool.layout import files_by_bucket

    return files_by_bucket(cfg.pool), rows_by_bucket(cfg.pool)


def run_steps(root: Path, grader: GraderConfig, on_ray: bool) -> dict:
    """The three steps; {step: (seconds, largest process USS, result, driver CPU seconds, extra)}, "outcome"."""
    cfg = grading.GradeConfig(pool=str(root / "pool"), bank=str(root / "bank"), grader=grader,
                              prm={"model": "unused"}, student=StudentConfig(model="unused", name=STUDENT,
                                                                             sampling={"n": 1}))
    reset_finalize(str(root / "bank"))
    limit = 0 if on_ray else 10**12
    steps = {"todo": lambda: consume_todo(cfg, on_ray),
             "finalize": lambda: finalize.finalize_bank(str(root / "bank"), STUDENT, GID, 1, grader, limit),
             "sample": lambda: draw.sample(
                 root / "bank", root / "pool", STUDENT, GID,
                 draw.SampleConfig(n=2000, distribution={"kind": "curriculum", "weights": {
                     "easy": 6, "wrong_near": 5, "wrong_mild": 4, "wrong_mid": 3, "wrong_hard": 2,
                     "wrong_hardest": 1}}, decontamination={"ngram": None}), root / "samples", limit).drawn}
    out = {}
    for name, step in steps.items():
        cpu_before = driver_cpu()
        with Peak() as peak:
            started = time.perf_counter()
            result = step()
            seconds = time.perf_counter() - started
        extra = {}
        if name == "todo":
            result, extra["first block s"] = result
        out[name] = (seconds, peak.largest_process, result, driver_cpu() - cpu_before, extra)
    bank_rows = bank.read_partition(root / "bank", "bank", STUDENT, GID, BANK_FIELDS)
    out["outcome"] = {
        "levels": bank.level_counts(bank.part_files(root / "bank", "bank", STUDENT, GID)),
        "bank": bank_rows.sort_by("question_id") if bank_rows.num_rows <= 1_000_000 else None,
        "sample": pq.read_table(root / "samples" / "samples.parquet", columns=["question_id"])["question_id"]}
    return out


def disagreements(n: int, graded: int, results: dict) -> list[str]:
    problems = []
    for mode, steps in results.items():
        if steps["todo"][2] != n - graded:
            problems.append(f"N={n:,} {mode}: todo streamed {steps['todo'][2]} samples, {n - graded} are not stored")
        if sum(steps["finalize"][2]) != graded:
            problems.append(f"N={n:,} {mode}: finalize graded {steps['finalize'][2][0]} and found "
                            f"{steps['finalize'][2][1]} ungradable of the {graded} questions with attempts")
    if len(results) < 2:
        return problems
    (a, ra), (b, rb) = results.items()
    oa, ob = ra["outcome"], rb["outcome"]
    if oa["levels"] != ob["levels"]:
        problems.append(f"N={n:,} bank levels: {a} {oa['levels']}, {b} {ob['levels']}")
    if oa["bank"] is not None and ob["bank"] is not None and not oa["bank"].equals(ob["bank"]):
        problems.append(f"N={n:,} bank rows: {a} wrote {oa['bank'].num_rows}, {b} {ob['bank'].num_rows}")
    if not oa["sample"].equals(ob["sample"]):
        problems.append(f"N={n:,} sample: {a} drew {len(oa['sample'])} questions, {b} {len(ob['sample'])}")
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

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    grader = GraderConfig(mode="prm")
    results, problems = {}, []
    modes = ["ray"] if args.skip_in_process else ["ray", "in-process"]
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bank-scale-") as tmp:
            started = time.perf_counter()
            # In a process of its own: what writing N rows leaves in an allocator is not the steps' memory.
            with multiprocessing.get_context("spawn").Pool(1) as writer:
                graded = writer.apply(write_world, (Path(tmp), n))
            files = len(storage.list_files(tmp, "*.parquet", recursive=True))
            print(f"N={n:,}: world written in {time.perf_counter() - started:.0f} s ({files} files)", flush=True)
            for mode in modes:
                results[(n, mode)] = run_steps(Path(tmp), grader, mode == "ray")
                for step in STEPS:
                    s, uss, result, cpu, extra = results[(n, mode)][step]
                    more = "".join(f", {k} {v:.1f}" for k, v in extra.items())
                    print(f"  {mode:10} {step:9} {s:7.1f} s  largest process USS {uss / 2**20:6.0f} MiB  "
                          f"driver CPU {cpu:6.1f} s  ({result}{more})", flush=True)
            problems += disagreements(n, graded, {m: results[(n, m)] for m in modes})
            for mode in modes:
                del results[(n, mode)]["outcome"]
    sizes = sorted(args.sizes)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        print(f"\nratios {large:,} / {small:,} (rows x{large / small:.0f}; targets: time <= x10, memory <= x1.5):")
        for mode in modes:
            for step in STEPS:
                a, b = results[(small, mode)][step], results[(large, mode)][step]
                print(f"  {mode:10} {step:9} time x{b[0] / a[0]:5.1f}  largest process x{b[1] / a[1]:4.2f}")
    for n in sizes:
        if "in-process" in modes:
            print(f"\nN={n:,}: ray / in-process (target: <= x2, or in-process + 20 s)")
            for step in STEPS:
                r, p = results[(n, "ray")][step], results[(n, "in-process")][step]
                print(f"  {step:9} time x{r[0] / p[0]:5.2f} ({r[0]:.1f} s vs {p[0]:.1f} s)  "
                      f"largest process x{r[1] / p[1]:4.2f}")
    ray.shutdown()
    if problems:
        sys.exit("bank_scale: the steps are wrong or the modes disagree:\n  " + "\n  ".join(problems))
    print("\nagreement: " + ("Ray tasks and in-process give the same counts, bank and sample"
                            if "in-process" in modes else "counts as expected (in-process skipped)"))


if __name__ == "__main__":
    main()

"""Turn a student's stored attempts into bank rows: one difficulty level per question whose n samples are all stored.

`finalize_bank` computes per-question stats (`levels.QUESTION_STATS`: samples, decided, right, mean PRM score of the
wrong ones) of the questions not in the bank yet, and grades the complete ones (`levels.level_rows`) into one bank
part. A partition of up to `bank.IN_PROCESS_MAX_ROWS` attempts is read in this process; a larger one is aggregated
on Ray Data (hash group-bys and joins), block by block, so no process holds it (`benchmarks/bank_scale.py`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.grade import bank
from adaptcot.grade.levels import QUESTION_STATS, CutPoints, GraderConfig, level_rows, question_stats


def _attempt_flags(batch: pa.Table) -> pa.Table:
    decided = pc.cast(pc.is_valid(batch["correct"]), pa.int64())
    right = pc.cast(pc.fill_null(batch["correct"], False), pa.int64())
    return batch.select(["question_id", "domain", "sample_index"]).append_column("decided", decided) \
        .append_column("right", right)


def _grade_block(stats: pa.Table, n: int, grader: GraderConfig, root: str, student: str, gid: str,
                 cut_points: CutPoints | None = None) -> pa.Table:
    """Grade the complete questions of one block of per-question stats into one bank part; the counts."""
    if "prm_score" not in stats.column_names:  # no step scores at all (pass_rate mode, or nothing wrong)
        stats = stats.append_column("prm_score", pa.nulls(stats.num_rows, pa.float64()))
    stats = stats.select(QUESTION_STATS.names).cast(QUESTION_STATS)
    complete = stats.filter(pc.greater_equal(stats["samples"], n))
    rows, ungradable = level_rows(complete, grader, student, gid, bank.partition_dir(root, "attempts", student, gid),
                                  cut_points)
    bank.write_part(rows, bank.partition_dir(root, "bank", student, gid), schemas.BANK)
    return pa.table({"graded": [rows.num_rows], "ungradable": [len(ungradable)]})


def _stats_in_process(attempt_files: list[str], score_files: list[str], graded_files: list[str]) -> pa.Table:
    """Per-question stats of the questions not graded yet, in this process (a small partition)."""
    attempts = storage.dataset(attempt_files, schemas.ATTEMPTS).to_table(
        columns=["question_id", "domain", "sample_index", "correct"])
    scores = storage.dataset(score_files, schemas.STEP_SCORES).to_table(
        columns=["question_id", "sample_index", "prm_score"]) if score_files else \
        schemas.STEP_SCORES.empty_table().select(["question_id", "sample_index", "prm_score"])
    stats = question_stats(attempts.join(scores, ["question_id", "sample_index"], join_type="left outer"))
    if graded_files:
        graded = storage.dataset(graded_files, schemas.BANK).to_table(columns=["question_id"])["question_id"]
        stats = stats.filter(pc.invert(pc.is_in(stats["question_id"], value_set=graded)))
    return stats


def _stats_on_ray(attempt_files: list[str], score_files: list[str], graded_files: list[str]):
    """The same per-question stats as a Ray dataset: hash group-bys, a join with the step scores' means, an
    anti-join with the questions already graded. No process holds the partition."""
    from ray.data.aggregate import CountDistinct, Mean, Sum

    parts = storage.hash_partitions(attempt_files)
    stats = storage.ray_dataset(attempt_files, ["question_id", "domain", "sample_index", "correct"]) \
        .map_batches(_attempt_flags, batch_format="pyarrow", num_cpus=0.25) \
        .groupby(["question_id", "domain"], num_partitions=parts) \
        .aggregate(CountDistinct("sample_index", alias_name="samples"), Sum("decided", alias_name="decided"),
                   Sum("right", alias_name="right"))
    if score_files:
        scores = storage.ray_dataset(score_files, ["question_id", "prm_score"]) \
            .groupby("question_id", num_partitions=parts) \
            .aggregate(Mean("prm_score", ignore_nulls=True, alias_name="prm_score"))
        stats = stats.join(scores, join_type="left_outer", on=("question_id",), num_partitions=parts)
    if graded_files:
        graded = storage.ray_dataset(graded_files, ["question_id"])
        stats = stats.join(graded, join_type="left_anti", on=("question_id",), num_partitions=parts)
    return stats


def finalize_bank(root: str, student: str, gid: str, n: int, grader: GraderConfig,
                  in_process_max_rows: int = bank.IN_PROCESS_MAX_ROWS, cut_points: CutPoints | None = None
                  ) -> tuple[int, int]:
    """Bank rows for questions whose n samples are all stored and that are not in the bank yet: (graded,
    ungradable). A partition of more than `in_process_max_rows` attempts is finalized on Ray Data (Ray must be up),
    block by block (`benchmarks/bank_scale.py`); both ways compute the same `levels.QUESTION_STATS`."""
    attempt_files = bank.part_files(root, "attempts", student, gid)
    if not attempt_files:
        return 0, 0
    score_files = bank.part_files(root, "step_scores", student, gid)
    graded_files = bank.part_files(root, "bank", student, gid)
    kwargs = {"n": n, "grader": grader, "root": root, "student": student, "gid": gid, "cut_points": cut_points}
    if storage.row_count(attempt_files) <= in_process_max_rows:
        counts = _grade_block(_stats_in_process(attempt_files, score_files, graded_files), **kwargs)
        return counts["graded"][0].as_py(), counts["ungradable"][0].as_py()
    import ray

    blocks = _stats_on_ray(attempt_files, score_files, graded_files).map_batches(
        _grade_block, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=50_000, num_cpus=0.25)
    tables = [ray.get(r) for r in blocks.to_arrow_refs()]
    return (sum(pc.sum(t["graded"]).as_py() or 0 for t in tables),
            sum(pc.sum(t["ungradable"]).as_py() or 0 for t in tables))

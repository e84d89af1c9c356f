"""Turn a student's stored attempts into bank rows: one difficulty level per question whose n samples are all stored.

Question-local (`common/buckets.py`): a question's attempts, step scores and bank row all sit in its bucket, so
each group of buckets is finalized alone (`finalize_buckets`, vectorised Arrow): its attempts and step scores read
once each key (`manifest.unique_rows`), per-question stats (`levels.QUESTION_STATS`), minus the questions already
in the bank, graded (`levels.level_rows`) into one bank part per bucket. Only buckets with attempts committed since
the last finalize are read; a bucket whose parts have grown many is compacted into one part on the way.
`finalize_bank` runs the groups in this process for a partition of up to `bank.IN_PROCESS_MAX_ROWS` attempts,
else as Ray tasks (one per group: no shuffle, memory bounded by a group), and folds the result into the manifest.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import bucket_keys, group_buckets
from adaptcot.common.runtime import run_groups
from adaptcot.grade import bank, manifest
from adaptcot.grade.levels import QUESTION_STATS, CutPoints, GraderConfig, level_rows, question_stats
from adaptcot.grade.manifest import KEYS, TABLES

# Rows (attempts) per task: large enough that a task's fixed cost (~10 ms) is small, small enough that a worker
# holds little (a few tens of MB of the four columns read).
TASK_ROWS = 200_000
COMPACT_OVER = 8  # a bucket of more parts than this in a table is rewritten as one part


def _read(files: list[str], table: str, columns: list[str]) -> pa.Table:
    if not files:
        return TABLES[table].empty_table().select(columns)
    return manifest.unique_rows(storage.dataset(files, TABLES[table]).to_table(columns=columns), KEYS[table])


def bucket_stats(attempt_files: list[str], score_files: list[str], graded_files: list[str]) -> pa.Table:
    """Per-question stats (QUESTION_STATS) of one bucket's questions that are not in the bank yet."""
    attempts = _read(attempt_files, "attempts", ["question_id", "sample_index", "domain", "correct"])
    scores = _read(score_files, "step_scores", ["question_id", "sample_index", "prm_score"])
    stats = question_stats(attempts.join(scores, ["question_id", "sample_index"], join_type="left outer"))
    if graded_files:
        graded = _read(graded_files, "bank", ["question_id"])["question_id"]
        stats = stats.filter(pc.invert(pc.is_in(stats["question_id"], value_set=graded)))
    return stats.select(QUESTION_STATS.names).cast(QUESTION_STATS)


def _compact(root: str, student: str, gid: str, table: str, files: list[str]) -> tuple[pa.Table, list[str]]:
    """One part for a bucket's many parts of `table`: (its manifest rows, the files it replaces)."""
    if len(files) <= COMPACT_OVER:
        return manifest.MANIFEST.empty_table(), []
    rows = _read(files, table, TABLES[table].names)
    added = manifest.write_buckets(root, table, manifest.partition_path(root, table, student, gid), rows,
                                   TABLES[table], "compacted")
    kept = {storage.join(root, f) for f in added["file"].to_pylist()}
    return added, [f for f in files if f not in kept]


def finalize_buckets(root: str, student: str, gid: str, buckets: dict[str, dict[str, list[str]]], n: int,
                     grader: GraderConfig, cut_points: CutPoints | None) -> dict:
    """Grade the complete, ungraded questions of some buckets (bucket -> table -> files) into bank parts; returns
    the manifest rows added, the files replaced by compaction, the questions graded and, per bucket, the complete
    questions that cannot be graded (no decided sample, or no PRM score)."""
    added, removed = [], []
    attempts_ref = manifest.partition_path(root, "attempts", student, gid)
    for files in buckets.values():
        for table in ("attempts", "step_scores", "bank"):
            rows, gone = _compact(root, student, gid, table, files.get(table, []))
            if gone:
                added.append(rows)
                removed += gone
                files[table] = [storage.join(root, f) for f in rows["file"].to_pylist()]
    # The group's buckets are read together (one scan per table): per-bucket reads cost more than the work.
    every = {t: [f for files in buckets.values() for f in files.get(t, [])] for t in TABLES}
    stats = bucket_stats(every["attempts"], every["step_scores"], every["bank"])
    complete = stats.filter(pc.greater_equal(stats["samples"], n))
    rows, left = level_rows(complete, grader, student, gid, attempts_ref, cut_points)
    added.append(manifest.write_buckets(root, "bank", manifest.partition_path(root, "bank", student, gid), rows,
                                        schemas.BANK, "finalize"))
    left_keys = bucket_keys(left, manifest.layout_bits(root)).to_pylist() if len(left) else []
    ungradable = {key: 0 for key in buckets} | dict(Counter(left_keys))
    graded = rows.num_rows
    return {"added": pa.concat_tables(added) if added else manifest.MANIFEST.empty_table(), "removed": removed,
            "graded": graded, "ungradable": ungradable}


def finalize_bank(root: str, student: str, gid: str, n: int, grader: GraderConfig,
                  in_process_max_rows: int = bank.IN_PROCESS_MAX_ROWS, cut_points: CutPoints | None = None
                  ) -> tuple[int, int]:
    """Bank rows for questions whose n samples are all stored and that are not in the bank yet: (newly graded,
    complete questions of the partition that cannot be graded). Call it holding the partition's lease
    (`bank.lease`): it folds the manifest."""
    root = str(root)
    current = manifest.read_manifest(root, student, gid)
    rows = current.rows
    fresh = pc.and_(pc.invert(pc.fill_null(rows["finalized"], False)),
                    pc.is_in(rows["table"], pa.array(["attempts", "step_scores"])))
    pending = set(rows.filter(fresh)["bucket"].to_pylist())
    if not pending:
        if current.commit_files:
            manifest.fold(current, student, gid, rows)
        return 0, current.row_count("ungradable")
    sizes = {b: r for b, r in current.rows_by_bucket("attempts").items() if b in pending}
    by_table = {t: current.files_by_bucket(t, pending) for t in TABLES}
    payloads = [{"buckets": {b: {t: by_table[t].get(b, []) for t in TABLES} for b in group}}
                for group in group_buckets(sizes, TASK_ROWS)]
    results = run_groups(finalize_buckets, payloads, sum(sizes.values()) > in_process_max_rows, root=root,
                         student=student, gid=gid, n=n, grader=grader, cut_points=cut_points)
    removed = {f for r in results for f in r["removed"]}
    done = pc.and_(pc.is_in(rows["bucket"], pa.array(sorted(pending), pa.string())),
                   pc.is_in(rows["table"], pa.array(["attempts", "step_scores"])))
    rows = rows.set_column(rows.schema.get_field_index("finalized"), "finalized",
                           pc.or_(pc.fill_null(rows["finalized"], False), done))
    rows = rows.filter(pc.invert(pc.is_in(rows["file"], pa.array(sorted(manifest.relative(root, f)
                                                                        for f in removed), pa.string()))))
    # The ungradable count of each bucket just read replaces its last one (a manifest row without a file).
    counts = {b: n for r in results for b, n in r["ungradable"].items()}
    rows = rows.filter(pc.invert(pc.and_(pc.equal(rows["table"], "ungradable"),
                                         pc.is_in(rows["bucket"], pa.array(sorted(counts), pa.string())))))
    ungradable_rows = pa.Table.from_pylist(
        [{"table": "ungradable", "bucket": b, "file": f"ungradable:{b}", "rows": n, "commit": "finalize",
          "finalized": True, "schema_version": schemas.SCHEMA_VERSION} for b, n in counts.items() if n],
        schema=manifest.MANIFEST)
    added = pa.concat_tables([r["added"] for r in results]).cast(manifest.MANIFEST)
    added = added.set_column(added.schema.get_field_index("finalized"), "finalized",
                             pc.not_equal(added["table"], "bank"))  # compacted attempts are finalized
    rows = manifest.unique_rows(pa.concat_tables([rows, added, ungradable_rows]), ["file"])
    manifest.fold(current, student, gid, rows, sorted(removed))
    ungradable = pc.sum(rows.filter(pc.equal(rows["table"], "ungradable"))["rows"]).as_py() or 0
    return sum(r["graded"] for r in results), ungradable

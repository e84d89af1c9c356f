"""What is left to answer: the pool's questions x n samples, minus the samples already stored, bucket by bucket.

A group of question buckets (`common/buckets.py`, groups sized by rows) is one task: it reads its buckets' pool
rows and their stored sample keys (question id, sample index) and nothing else, and emits the samples not stored,
a question's n samples together. On Ray Data the groups stream (nothing is materialized before the first token)
and are cut into blocks of `block_rows` for the engines, so no engine is handed hours of work in one block and a
retry redoes little. Counting reads only ids: none at all for a bucket with nothing stored (the manifests hold the
row counts), the pool's ids and the stored sample keys for the others.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import coarsen, group_buckets
from adaptcot.common.runtime import run_groups
from adaptcot.grade.answering import expand_samples
from adaptcot.grade.manifest import Manifest

POOL_COLUMNS = ["question_id", "domain", "question", "reference_answer", "tests", "starter_code"]
# Samples one todo task emits, about: one block for an engine, a few minutes of its work, so no engine is handed
# hours in one block and a retry redoes little (`grading.todo_dataset` sizes it from the engine's batch size).
MAX_BLOCK_ROWS = 4096
COUNT_GROUP_ROWS = 200_000  # pool questions one counting task reads the ids of


def sample_keys(question_ids: pa.Array, sample_index: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(question_ids, pc.cast(sample_index, pa.string()), "#")


def in_share(question_ids: list[str], share: float) -> list[bool]:
    """A fixed subset of about `share` of any pool, by question id: the same questions for every panel model."""
    return [int.from_bytes(hashlib.sha256(q.encode()).digest()[:8], "big") < share * 2 ** 64 for q in question_ids]


def select_todo(batch: pa.Table, n: int, done: pa.Array | None = None, share: float | None = None) -> pa.Table:
    """Rows of a pool batch (of its `share` subset, if given), expanded to n samples (minus any in `done`), each with
    its `sample_key`. Code tests travel as JSON text (`schemas.with_tests_json`)."""
    if share is not None:
        batch = batch.filter(pa.array(in_share(batch["question_id"].to_pylist(), share), pa.bool_()))
    expanded = expand_samples(schemas.with_tests_json(batch), n)
    keys = sample_keys(expanded["question_id"], expanded["sample_index"])
    if done is not None and len(done):
        expanded = expanded.filter(pc.invert(pc.is_in(keys, value_set=done)))
        keys = sample_keys(expanded["question_id"], expanded["sample_index"])
    return expanded.append_column("sample_key", keys)


def todo_of_buckets(buckets: dict[str, dict[str, list[str]]], n: int, share: float | None = None) -> pa.Table:
    """The samples not stored of some buckets (bucket -> {"pool": files, "attempts": files}), a question's samples
    together. The group's buckets are read together: one scan of the pool's files, one of the stored keys."""
    pool_files = [f for b in sorted(buckets) for f in buckets[b]["pool"]]
    attempt_files = [f for b in sorted(buckets) for f in buckets[b].get("attempts", [])]
    if len(buckets) == 1 and "slice" in next(iter(buckets.values())):  # one part of a bucket too big for a block
        pool = pool_slice(pool_files, *next(iter(buckets.values()))["slice"])
    else:
        pool = storage.dataset(pool_files, schemas.POOL).to_table(columns=POOL_COLUMNS)
    done = None
    if attempt_files:
        stored = storage.dataset(attempt_files, schemas.ATTEMPTS).to_table(columns=["question_id", "sample_index"])
        done = sample_keys(stored["question_id"], stored["sample_index"]).combine_chunks()
    return select_todo(pool, n, done, share)


def pool_slice(files: list[str], part: int, parts: int) -> pa.Table:
    """Part `part` of `parts` of these files' rows, by position: only the row groups that hold it are read (pool
    parts are written in small row groups, `pool/layout.py`), so the slices of a big bucket cost one read of it."""
    opened = [pq.ParquetFile(storage.resolve(f)[1], filesystem=storage.resolve(f)[0]) for f in files]
    total = sum(f.metadata.num_rows for f in opened)
    start, stop = total * part // parts, total * (part + 1) // parts
    pieces, offset = [schemas.POOL.empty_table().select(POOL_COLUMNS)], 0
    for parquet in opened:
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if offset < stop and offset + rows > start:
                lo, hi = max(start - offset, 0), min(stop - offset, rows)
                pieces.append(parquet.read_row_group(group, columns=POOL_COLUMNS).slice(lo, hi - lo)
                              .cast(pieces[0].schema))
            offset += rows
    return pa.concat_tables(pieces)


def _todo_block(batch: pa.Table, n: int, share: float | None) -> pa.Table:
    return pa.concat_tables([todo_of_buckets(json.loads(g), n, share) for g in batch["buckets"].to_pylist()])


def samples_left(buckets: dict[str, dict[str, list[str]]], n: int) -> dict[str, int]:
    """bucket -> samples of its pool questions not stored yet (ids and keys only are read)."""
    out = {}
    for key, files in buckets.items():
        ids = storage.dataset(files["pool"], schemas.POOL).to_table(columns=["question_id"])["question_id"]
        stored = storage.dataset(files["attempts"], schemas.ATTEMPTS).to_table(
            columns=["question_id", "sample_index"])
        mine = stored.filter(pc.and_(pc.is_in(stored["question_id"], value_set=ids),
                                     pc.less(stored["sample_index"], n)))
        out[key] = len(ids) * n - len(pc.unique(sample_keys(mine["question_id"], mine["sample_index"])))
    return out


def todo_groups(pool_buckets: dict[str, list[str]], pool_rows: dict[str, int], stored: Manifest, n: int,
                block_rows: int, on_ray: bool = False, min_blocks: int = 1,
                smallest_block: int = 1) -> tuple[list[dict], int]:
    """(task payloads, samples left to answer). A payload is a group of buckets with their pool and attempts files
    whose samples left fill about one block of `block_rows`; a bucket with more is cut into that many slices of its
    questions (each slice a task that reads the whole bucket: with buckets of ~ROWS_PER_BUCKET questions, a few).
    A small todo is cut into at least `min_blocks` blocks (of at least `smallest_block` samples), so every engine of
    the pool, including those on nodes that join, gets a share of it.
    A bucket with no stored sample counts its pool rows x n (from the manifests); the others are counted exactly
    (`samples_left`, Ray tasks when `on_ray`): a partition may hold other pools' questions, and the count decides
    the blocks."""
    bits = min([stored.bits] + [len(b) for b in pool_rows][:1])  # pool and bank meet at the coarser buckets
    pool_buckets, pool_rows = coarsen(pool_buckets, bits), coarsen(pool_rows, bits)
    attempt_files = coarsen(stored.files_by_bucket("attempts"), bits)
    left = {b: rows * n for b, rows in pool_rows.items()}
    resumed = {b: pool_rows[b] for b in pool_rows if attempt_files.get(b)}
    payloads = [{"buckets": {b: {"pool": pool_buckets.get(b, []), "attempts": attempt_files[b]} for b in group}}
                for group in group_buckets(resumed, COUNT_GROUP_ROWS)]
    for counted in run_groups(samples_left, payloads, on_ray, n=n):
        left.update(counted)
    busy = {b: r for b, r in left.items() if r}
    block_rows = max(smallest_block, min(block_rows, -(-sum(busy.values()) // min_blocks)))

    def files(b: str) -> dict:
        return {"pool": pool_buckets.get(b, []), "attempts": attempt_files.get(b, [])}

    big = {b for b, r in busy.items() if r > block_rows}
    groups = [{b: {**files(b), "slice": [i, -(-busy[b] // block_rows)]}} for b in sorted(big)
              for i in range(-(-busy[b] // block_rows))]
    groups += [{b: files(b) for b in group}
               for group in group_buckets({b: r for b, r in busy.items() if b not in big}, block_rows)]
    return groups, sum(busy.values())


def todo_stream(groups: list[dict], n: int, share: float | None, num_cpus: float):
    """A Ray dataset of the samples left: one task per group, streamed; each task's rows are one block, sized for
    the engines by the groups (Ray Data's repartition would ask a whole CPU of its own, which engines may hold)."""
    import ray

    items = pa.table({"buckets": [json.dumps(g) for g in groups]})
    return ray.data.from_arrow([items.slice(i, 1) for i in range(items.num_rows)]).map_batches(
        _todo_block, fn_kwargs={"n": n, "share": share}, batch_format="pyarrow", batch_size=None,
        num_cpus=num_cpus)

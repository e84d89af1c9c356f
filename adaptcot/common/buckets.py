"""Question-local layout: every question id has a stable bucket, part of the path of its pool, attempts, step scores
and bank rows (`bucket=<key>/`), so a task that finalizes, lists the todo of, or samples some buckets reads only
their files.

A bucket key is the first `bits` bits of the question id written in binary (`bucket=0110101`); ids are
sha256-derived hex, so the keys are uniform, and an id that is not hex (a user's own ids) is hashed first. How many
bits is chosen once, when a pool or a bank is created, from its size (`bits_for`: about ROWS_PER_BUCKET questions a
bucket, MIN_BITS to MAX_BITS bits): 16 buckets for a laptop's pool, 128 at 1M, 1024 at 10M, 16384 at 100M
(~6k questions each). Bits rather than hex digits so the bucket count follows the rows (x2 a step, not x16): the
number of files a pass opens grows with the rows, not faster. Keys nest by prefix, so a pool and a bank of
different bits meet at the coarser one (`coarsen`) without reading a file. adaptcot's choice; the papers are
silent on storage.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MIN_BITS, MAX_BITS = 4, 16
ROWS_PER_BUCKET = 8_000
# What a table's manifest records of each part file (a pool's, a bank partition's): row counts come from here,
# never from Parquet footers, and no directory is listed to find the files.
MANIFEST = pa.schema([pa.field("table", pa.string()), pa.field("bucket", pa.string()), pa.field("file", pa.string()),
                      pa.field("rows", pa.int64()), pa.field("commit", pa.string()),
                      pa.field("finalized", pa.bool_()), pa.field("schema_version", pa.int32())])


def bits_for(rows: int) -> int:
    """Bucket bits for a table of about `rows` rows: buckets of about ROWS_PER_BUCKET rows (x0.7 to x1.4)."""
    wanted = round(math.log2(rows / ROWS_PER_BUCKET)) if rows > ROWS_PER_BUCKET else 0
    return max(MIN_BITS, min(MAX_BITS, wanted))


def coarsen(by_bucket: dict, bits: int) -> dict:
    """A bucket -> files (or row count) mapping at `bits` bits: finer keys merged under their prefix."""
    out: dict = {}
    for key, value in by_bucket.items():
        short = key[:bits]
        out[short] = out[short] + value if short in out else (list(value) if isinstance(value, list) else value)
    return out


_HEX_VALUE = np.full(256, -1, np.int32)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)


@functools.lru_cache(maxsize=MAX_BITS + 1)
def _names(bits: int) -> pa.Array:
    return pa.array([format(v, f"0{bits}b") for v in range(2 ** bits)], pa.string())


def _top16(ids: pa.Array) -> np.ndarray:
    """The first 16 bits of each id: its first four hex digits, or those of its sha256 when it is not hex."""
    heads = pc.utf8_slice_codeunits(ids, 0, 4).to_numpy(zero_copy_only=False).astype("S4")
    digits = _HEX_VALUE[np.frombuffer(heads.tobytes(), np.uint8).reshape(-1, 4)] if len(heads) else \
        np.zeros((0, 4), np.int32)
    not_hex = np.flatnonzero((digits < 0).any(axis=1) | (pc.utf8_length(ids).to_numpy(zero_copy_only=False) < 4))
    for i in not_hex:  # a user's own ids: hashed (the importer's ids never are)
        digits[i] = _HEX_VALUE[np.frombuffer(hashlib.sha256(ids[int(i)].as_py().encode()).hexdigest()[:4].encode(),
                                             np.uint8)]
    return (digits[:, 0] << 12) | (digits[:, 1] << 8) | (digits[:, 2] << 4) | digits[:, 3]


def bucket_keys(question_ids: pa.Array | pa.ChunkedArray, bits: int) -> pa.Array:
    """The bucket key of each id (vectorised)."""
    ids = question_ids.combine_chunks() if isinstance(question_ids, pa.ChunkedArray) else question_ids
    return _names(bits).take(pa.array(_top16(ids) >> (16 - bits)))


def split_by_bucket(table: pa.Table, bits: int) -> list[tuple[str, pa.Table]]:
    """(bucket key, its rows) for every bucket present in `table` (by `question_id`), keys in order."""
    if table.num_rows == 0:
        return []
    keys = bucket_keys(table["question_id"], bits)
    order = pc.sort_indices(keys)
    table, keys = table.take(order), keys.take(order)
    encoded = pc.run_end_encode(keys)
    ends = encoded.run_ends.to_pylist()
    starts = [0] + ends[:-1]
    return [(key, table.slice(s, e - s)) for key, s, e in zip(encoded.values.to_pylist(), starts, ends)]


def bucket_dir(key: str) -> str:
    return f"bucket={key}"


def group_buckets(rows_by_bucket: dict[str, int], target_rows: int) -> list[list[str]]:
    """Consecutive buckets in groups of about `target_rows` rows (a bucket larger than that is a group of its own):
    one task's worth of work, sized by rows rather than by bucket count."""
    groups, current, rows = [], [], 0
    for key in sorted(rows_by_bucket):
        if current and rows + rows_by_bucket[key] > target_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(key)
        rows += rows_by_bucket[key]
    return groups + ([current] if current else [])

"""Where a pool's rows live: question buckets (`common/buckets.py`) and a manifest of its part files.

    <pool>/pool/bucket=<key>/part-<import token>.parquet   the questions of one bucket from one import
    <pool>/pool_manifest.parquet                           every part file with its bucket and row count
    <pool>/rejects/*.parquet, <pool>/manifest.json         rejects and the record of each import (importer.py)

The manifest is written after the part files are in place, so a killed import leaves files no manifest names: the
next import sweeps them and adds their questions again. A pool written before buckets (`pool/*.parquet`) is read as
before by everything that scans it (`pool_files`); grading needs its buckets and stops with the command that
rewrites it (`migrate_pool`, `adaptcot pool migrate DIR`).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import MANIFEST, bits_for, bucket_dir, split_by_bucket

MANIFEST_NAME = "pool_manifest.parquet"
ROW_GROUP_ROWS = 1024


class PoolLayoutError(RuntimeError):
    """The pool is in the layout without question buckets."""


def read_parts(out: str | Path) -> pa.Table | None:
    """The pool's manifest (schema MANIFEST), or None for a pool without one."""
    path = storage.join(str(out), MANIFEST_NAME)
    if not storage.exists(path):
        return None
    parts = storage.read_table(path, schema=MANIFEST)
    newest = pc.max(parts["schema_version"]).as_py() if parts.num_rows else None
    if newest is not None and newest > schemas.SCHEMA_VERSION:
        raise PoolLayoutError(f"{out}: written with schema version {newest} by a newer adaptcot; this one reads up to "
                              f"{schemas.SCHEMA_VERSION}: upgrade adaptcot")
    return parts


def legacy_files(out: str | Path) -> list[str]:
    return storage.list_files(storage.join(str(out), "pool"), "*.parquet")


def pool_files(out: str | Path) -> list[str]:
    """The Parquet files of the pool at `out`: its manifest's, or those of a pool in the layout before buckets."""
    parts = read_parts(out)
    if parts is None:
        return legacy_files(out)
    return [storage.join(str(out), f) for f in parts["file"].to_pylist()]


def files_by_bucket(out: str | Path) -> dict[str, list[str]]:
    """bucket -> the pool's files of that bucket; a pool without buckets is refused with the command to fix it."""
    parts = read_parts(out)
    if parts is None:
        if legacy_files(out):
            raise PoolLayoutError(f"{out} is a pool in the layout before question buckets: run `adaptcot pool migrate "
                                  f"{out}` once (it rewrites the pool in place)")
        return {}
    found: dict[str, list[str]] = {}
    for b, f in zip(parts["bucket"].to_pylist(), parts["file"].to_pylist()):
        found.setdefault(b, []).append(storage.join(str(out), f))
    return found


def rows_by_bucket(out: str | Path) -> dict[str, int]:
    parts = read_parts(out)
    if parts is None:
        files_by_bucket(out)  # raises for a legacy pool
        return {}
    t = parts.group_by("bucket").aggregate([("rows", "sum")])
    return dict(zip(t["bucket"].to_pylist(), t["rows_sum"].to_pylist()))


def pool_bits(out: str | Path, rows_to_add: int) -> int:
    """The pool's bucket bits: those it was created with, or, for a new pool, sized by the rows it gets."""
    parts = read_parts(out)
    if parts is not None and parts.num_rows:
        return len(parts["bucket"][0].as_py())
    return bits_for(rows_to_add)


class BucketedStage:
    """Pool rows staged by question bucket in a local directory, one file per bucket and import."""

    def __init__(self, directory: Path, token: str, bits: int):
        self.directory, self.token, self.bits = directory, token, bits
        self.rows: list[dict] = []

    def write(self, table: pa.Table) -> None:
        for key, part in split_by_bucket(table, self.bits):
            name = f"pool/{bucket_dir(key)}/part-{self.token}-{len(self.rows):05d}.parquet"
            (self.directory / name).parent.mkdir(parents=True, exist_ok=True)
            # Small row groups: a todo task that takes a slice of a big bucket reads only its rows (`grade/todo.py`).
            pq.write_table(part.cast(schemas.POOL), self.directory / name, row_group_size=ROW_GROUP_ROWS)
            self.rows.append({"table": "pool", "bucket": key, "file": name, "rows": part.num_rows,
                              "commit": self.token, "finalized": True, "schema_version": schemas.SCHEMA_VERSION})

    def publish(self, out: str) -> None:
        """Move (or upload) the staged files into the pool, then add them to its manifest."""
        for row in self.rows:
            target = storage.join(out, row["file"])
            if storage.is_remote(out):
                storage.upload(self.directory / row["file"], target)  # whole objects, one per file
            else:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                (self.directory / row["file"]).rename(target)  # staged on the pool's own disk
        old = read_parts(out)
        if not self.rows and old is None:
            return  # nothing to add, and no manifest to write: a pool of the older layout stays as it was
        new = pa.Table.from_pylist(self.rows, schema=MANIFEST)
        storage.write_table(pa.concat_tables([old, new]) if old is not None else new,
                            storage.join(out, MANIFEST_NAME))


def sweep_unlisted(out: str) -> int:
    """Delete pool part files no manifest names (a killed import's); call it before importing."""
    parts = read_parts(out)
    if parts is None:
        return 0
    named = {storage.join(out, f) for f in parts["file"].to_pylist()}
    leftovers = [p for p in storage.list_files(storage.join(out, "pool"), "*.parquet", recursive=True)
                 if "/bucket=" in p and p not in named]
    for path in leftovers:
        storage.remove(path)
    return len(leftovers)


def add_pool_rows(out: str | Path, table: pa.Table, expected_rows: int = 0) -> list[str]:
    """Add rows (schema POOL, ids not yet in the pool) to a pool, bucketed and in its manifest; the files written.
    A new pool's buckets are sized for `expected_rows` if more than this table (a pool written in chunks).
    For pools built by hand (tests, benchmarks): `importer.import_pool` is the way in for sources."""
    staging = Path(tempfile.mkdtemp(prefix="adaptcot-pool-rows-"))
    try:
        stage = BucketedStage(staging, uuid.uuid4().hex[:12], pool_bits(out, max(table.num_rows, expected_rows)))
        stage.write(table)
        stage.publish(str(out))
        return [storage.join(str(out), r["file"]) for r in stage.rows]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def migrate_pool(out: str) -> int:
    """Rewrite a pool of the layout before buckets into buckets, in place; the rows moved. Streams file by file
    through a local staging directory, so memory holds one source file."""
    old = legacy_files(out)
    if not old or read_parts(out) is not None:
        return 0
    staging = Path(tempfile.mkdtemp(prefix="adaptcot-migrate-"))
    try:
        stage = BucketedStage(staging, f"migrated-{uuid.uuid4().hex[:8]}",
                              bits_for(sum(pq.ParquetFile(storage.resolve(p)[1]).metadata.num_rows
                                             for p in old) if not storage.is_remote(out) else 10**9))
        moved = 0
        for path in old:
            table = storage.read_table(path)
            table = table.filter(pc.is_valid(table["question_id"]))
            stage.write(table)
            moved += table.num_rows
        stage.publish(out)
        for path in old:
            storage.remove(path)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)

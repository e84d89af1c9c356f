"""What a bank partition holds: its manifest, the commits that add to it, and the rules that keep rows exactly once.

A partition is one (student, grader). Its files live question-locally (`common/buckets.py`):

    <root>/<table>/student=<slug>/grader=<gid>/bucket=<key>/part-<content hash>.parquet   table: attempts,
                                                                                         step_scores, bank
    <root>/manifests/student=<slug>/grader=<gid>/manifest.parquet        the folded manifest (schema MANIFEST)
    <root>/manifests/student=<slug>/grader=<gid>/commits/commit-*.parquet  one per writer batch, since the fold
    <root>/leases/student=<slug>/grader=<gid>/lease-*.json               who may write (`common/lease.py`)
    <root>/layout.json                                       layout version and bucket bits (`buckets.py`)

A writer (`commit`) writes its part files, named by a hash of their content (a retried task rewrites the same
names), fsynced, and then one commit record listing them with their row counts: the record is the commit, so a file
no record names was never committed, and the reader needs no Parquet footer to count rows and no listing of the
table directories. The lease holder folds the commit records into `manifest.parquet` (`fold`) after finalizing,
and sweeps files no record names (`sweep`) before it starts: under the lease no other writer is live.
Rows are kept once per key on every read (`unique_rows`: a sample by question and sample index, a bank row by
question): a sample stored twice (a lost block replayed with other batch boundaries) counts once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import MANIFEST, MAX_BITS, MIN_BITS, bucket_dir, split_by_bucket

LAYOUT_VERSION = 2
TABLES = {"bank": schemas.BANK, "attempts": schemas.ATTEMPTS, "step_scores": schemas.STEP_SCORES}
KEYS = {"attempts": ["question_id", "sample_index"], "step_scores": ["question_id", "sample_index"],
        "bank": ["question_id"], "pool": ["question_id"]}


class LayoutError(RuntimeError):
    """The bank (or pool) was written in another layout or by a newer adaptcot."""


def slug(name: str) -> str:
    """A partition-safe name: `Qwen/Qwen2.5-7B-Instruct` -> `Qwen--Qwen2.5-7B-Instruct`."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-") or "student"


def partition_path(root: str, kind: str, student: str, gid: str) -> str:
    return storage.join(str(root), kind, f"student={slug(student)}", f"grader={gid}")


# --- layout ----------------------------------------------------------------------------------------------------
def check_layout(root: str, create: bool = False, bits: int = MIN_BITS) -> int:
    """A bank root must be of this layout; a layout-1 bank (part files directly in the partition directories) is
    refused with the command that migrates it. `create` writes the layout record of a new bank, with `bits`
    bucket bits (`buckets.bits_for` of the first pool graded into it). Returns the bank's bucket bits."""
    path = storage.join(str(root), "layout.json")
    if storage.exists(path):
        layout = json.loads(storage.read_text(path))
        if layout.get("layout") != LAYOUT_VERSION or not MIN_BITS <= layout.get("bucket_bits", 0) <= MAX_BITS:
            raise LayoutError(f"{root} has bank layout {layout}; this adaptcot reads layout {LAYOUT_VERSION} with "
                              f"{MIN_BITS} to {MAX_BITS} bucket bits")
        return layout["bucket_bits"]
    old = [p for t in TABLES for p in storage.list_files(storage.join(str(root), t), "part-*.parquet", recursive=True)
           if "/bucket=" not in p]
    if old:
        raise LayoutError(f"{root} is a bank in the first layout (part files not split by question bucket, e.g. "
                          f"{old[0]}): run `adaptcot bank migrate {root}` once (it rewrites the bank in place, "
                          "keeping every row once)")
    if create:
        storage.write_text(path, json.dumps({"layout": LAYOUT_VERSION, "bucket_bits": bits,
                                             "schema_version": schemas.SCHEMA_VERSION}))
    return bits


@functools.lru_cache(maxsize=64)
def layout_bits(root: str) -> int:
    """The bucket bits of an existing bank (read once per process: they never change)."""
    path = storage.join(str(root), "layout.json")
    if not storage.exists(path):
        raise LayoutError(f"{root}: no layout.json; a bank is created by `adaptcot grade` (or `bank.add_rows`)")
    return check_layout(root)


# --- rows ------------------------------------------------------------------------------------------------------
def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`'s column order; a nullable column it lacks (added since its writer was written) is null."""
    for f in schema:
        if f.nullable and f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def unique_rows(table: pa.Table, keys: list[str]) -> pa.Table:
    """The first row of each key, in the table's order."""
    if table.num_rows < 2:
        return table
    numbered = table.select(keys).append_column("_row", pa.array(np.arange(table.num_rows)))
    firsts = numbered.group_by(keys, use_threads=False).aggregate([("_row", "min")])["_row_min"]
    if len(firsts) == table.num_rows:
        return table
    return table.take(pc.take(firsts, pc.sort_indices(firsts)))  # the first rows, in the table's order


def content_name(table_name: str, table: pa.Table) -> str:
    """A part's file name from its keys: the same rows give the same name, wherever and however often written."""
    keys = KEYS[table_name]
    cells = [table[k].cast(pa.string()) for k in keys]
    joined = cells[0] if len(cells) == 1 else pc.binary_join_element_wise(*cells, "#")
    digest = hashlib.sha256(table_name.encode())
    for value in sorted(joined.to_pylist()):
        digest.update(value.encode() + b"\n")
    return f"part-{digest.hexdigest()[:32]}.parquet"


def write_buckets(root: str, table_name: str, directory: str, table: pa.Table, schema: pa.Schema,
                  commit_name: str = "", bits: int | None = None) -> pa.Table:
    """Write `table` split by question bucket under `directory`; the manifest rows of the files written."""
    rows = []
    for key, part in split_by_bucket(conform(table, schema), bits or layout_bits(str(root))):
        path = storage.join(directory, bucket_dir(key), content_name(table_name, part))
        storage.write_table(part, path)
        rows.append({"table": table_name, "bucket": key, "file": relative(root, path), "rows": part.num_rows,
                     "commit": commit_name, "finalized": False, "schema_version": schemas.SCHEMA_VERSION})
    return pa.Table.from_pylist(rows, schema=MANIFEST)


def relative(root: str, path: str) -> str:
    return str(path)[len(str(root).rstrip("/")) + 1:]


# --- commits and the manifest --------------------------------------------------------------------------------
def commit(root: str, student: str, gid: str, tables: dict[str, pa.Table], bits: int | None = None) -> pa.Table:
    """Store rows of one partition (table name -> rows) and commit them: parts first, then the commit record."""
    parts = [write_buckets(root, name, partition_path(root, name, student, gid), t, TABLES[name], "", bits)
             for name, t in tables.items() if t.num_rows]
    if not parts:
        return MANIFEST.empty_table()
    rows = pa.concat_tables(parts)
    _injected_fault()
    name = "commit-" + hashlib.sha256("\n".join(rows["file"].to_pylist()).encode()).hexdigest()[:32]
    rows = rows.set_column(rows.schema.get_field_index("commit"), "commit", pa.array([name] * rows.num_rows))
    storage.write_table(rows, storage.join(partition_path(root, "manifests", student, gid), "commits",
                                           f"{name}.parquet"))
    return rows


# Tests only: the path of a marker file; the first writer that finds no marker there creates it and dies between
# its parts and its commit record (a worker killed mid-commit, at the one point a kill from outside cannot aim at).
KILL_AFTER_PARTS = "ADAPTCOT_TEST_KILL_AFTER_PARTS"


def _injected_fault() -> None:
    marker = os.environ.get(KILL_AFTER_PARTS)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(137)


@dataclass
class Manifest:
    """A partition's manifest as read: every committed file once, and the commit records it was read from."""

    root: str
    rows: pa.Table
    commit_files: list[str]

    def of(self, table: str) -> pa.Table:
        return self.rows.filter(pc.equal(self.rows["table"], table))

    def files(self, table: str, buckets: set[str] | None = None) -> list[str]:
        rows = self.of(table)
        if buckets is not None:
            rows = rows.filter(pc.is_in(rows["bucket"], pa.array(sorted(buckets), pa.string())))
        return [storage.join(self.root, f) for f in rows["file"].to_pylist()]

    def row_count(self, table: str) -> int:
        return pc.sum(self.of(table)["rows"]).as_py() or 0

    def rows_by_bucket(self, table: str) -> dict[str, int]:
        t = self.of(table).group_by("bucket").aggregate([("rows", "sum")])
        return dict(zip(t["bucket"].to_pylist(), t["rows_sum"].to_pylist()))

    @property
    def bits(self) -> int:
        return layout_bits(self.root)

    def files_by_bucket(self, table: str, buckets: set[str] | None = None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for b, f in zip(self.of(table)["bucket"].to_pylist(), self.of(table)["file"].to_pylist()):
            if buckets is None or b in buckets:
                out.setdefault(b, []).append(storage.join(self.root, f))
        return out


def read_manifest(root: str, student: str, gid: str) -> Manifest:
    """The folded manifest plus every commit since (one listing of the commits prefix, no footer read)."""
    directory = partition_path(root, "manifests", student, gid)
    base_path = storage.join(directory, "manifest.parquet")
    tables = [storage.read_table(base_path, schema=MANIFEST)] if storage.exists(base_path) else []
    commit_files = storage.list_files(storage.join(directory, "commits"), "commit-*.parquet")
    if commit_files:
        tables.append(storage.dataset(commit_files, MANIFEST).to_table())
    every = pa.concat_tables(tables) if tables else MANIFEST.empty_table()
    newest = pc.max(every["schema_version"]).as_py() if every.num_rows else None
    if newest is not None and newest > schemas.SCHEMA_VERSION:
        raise LayoutError(f"{directory}: written with schema version {newest} by a newer adaptcot; this one reads up "
                          f"to {schemas.SCHEMA_VERSION}: upgrade adaptcot")
    return Manifest(str(root), unique_rows(every, ["file"]), commit_files)


def fold(manifest: Manifest, student: str, gid: str, rows: pa.Table, removed: list[str] = ()) -> None:
    """Publish `rows` as the partition's manifest (lease holder only), then delete the commit records it folds and
    the files it no longer names (compacted parts). Killed between the steps, a re-read finds rows twice at most,
    and `unique_rows` keeps them once."""
    directory = partition_path(manifest.root, "manifests", student, gid)
    storage.write_table(rows.cast(MANIFEST), storage.join(directory, "manifest.parquet"))
    for path in manifest.commit_files:
        storage.remove(path)
    for path in removed:
        if storage.exists(path):
            storage.remove(path)


def sweep(manifest: Manifest, student: str, gid: str) -> int:
    """Delete what no commit names: parts of a killed writer and temporary files (lease holder only, before it
    writes: under the lease no other writer is live). Returns how many files were removed."""
    named = {storage.join(manifest.root, f) for f in manifest.rows["file"].to_pylist()}
    removed = 0
    for table in TABLES:
        directory = partition_path(manifest.root, table, student, gid)
        leftovers = storage.list_files(directory, "part-*.parquet", recursive=True) + \
            storage.list_files(directory, ".*.tmp", recursive=True, hidden=True)
        for path in leftovers:
            if path not in named:
                storage.remove(path)
                removed += 1
    return removed

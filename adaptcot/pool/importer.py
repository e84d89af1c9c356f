"""Import question sources into a de-duplicated Parquet question pool.

Stage contract: reads source rows (see `sources.py`), writes `DIR/pool/*.parquet` (schema `POOL`) and
`DIR/rejects/*.parquet` (schema `REJECTS`) and appends a record of the import to `DIR/manifest.json`.

- `normalise_rows` is the pure step: raw rows in, (pool table, rejects table) out.
- `import_pool` streams every source through it in batches and de-duplicates by `question_id` with a two-pass
  hash-bucketed spill (rows go to one of 64 Arrow files by id, then each bucket is de-duplicated alone), so memory
  stays flat as the pool grows. Importing into a directory that already holds a pool adds only new questions:
  re-running an import, or finishing one that was killed, adds nothing twice.
- Near duplicates (`near_duplicates`, on by default) are then left out with MinHash LSH over the same kind of
  bucketed spills (`near_duplicates.py`); they go to the rejects table as `near_duplicate`.
- `import_pool_remote` runs the same function as a Ray task.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from adaptcot.common import schemas, storage
from adaptcot.common.lease import Lease
from adaptcot.common.settings import Strict
from adaptcot.common.text import normalise_text, question_id
from adaptcot.pool.layout import (
    BucketedStage,
    PoolLayoutError,
    legacy_files,
    pool_bits,
    pool_files,
    read_parts,
    sweep_unlisted,
)
from adaptcot.pool.near_duplicates import (
    NUM_BUCKETS,
    BucketSpill,
    NearDuplicateConfig,
    NearDuplicates,
    near_duplicate_rejects,
)
from adaptcot.pool.presets import (
    ColumnMapping,
    MappingError,
    RowProblem,
    multiple_choice,
    read_answer,
    read_tests,
    resolve_mapping,
    solution_text,
)
from adaptcot.pool.sources import RawRow, Source, batched, open_source

READ_BATCH_ROWS = 16384
ROWS_PER_OUTPUT_FILE = 250_000


class PoolImportConfig(Strict):
    sources: list[str] = Field(min_length=1)
    domain: Literal["math", "code"]
    out: str
    preset: str | None = None
    mapping: dict[str, str] = {}  # pool field -> source column, applied over the preset
    max_question_chars: int = Field(default=32_000, gt=0)
    hf_split: str = "train"
    hf_config: str | None = None
    near_duplicates: NearDuplicateConfig = NearDuplicateConfig()


@dataclass
class ImportReport:
    read: int = 0
    imported: int = 0
    duplicates: int = 0
    already_in_pool: int = 0
    rejected: Counter = field(default_factory=Counter)
    near_duplicates: int = 0  # valid questions left out as near duplicates (in the rejects table, `near_duplicate`)

    def as_dict(self) -> dict:
        return {"read": self.read, "imported": self.imported, "duplicates": self.duplicates,
                "near_duplicates": self.near_duplicates, "already_in_pool": self.already_in_pool,
                "rejected": dict(self.rejected)}

    def lines(self) -> list[str]:
        out = [f"read {self.read} rows: imported {self.imported}, duplicates {self.duplicates}, "
               f"near duplicates {self.near_duplicates}, already in pool {self.already_in_pool}, "
               f"rejected {sum(self.rejected.values())}"]
        out += [f"  rejected {n:>8}  {reason}" for reason, n in sorted(self.rejected.items())]
        return out


# --- the pure step ------------------------------------------------------------------------------------------------
def _text(value, field_name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")  # UnicodeDecodeError -> invalid_utf8
    text = value if isinstance(value, str) else str(value)
    text.encode("utf-8")  # lone surrogates from JSON escapes -> invalid_utf8
    return text


def _pool_row(raw: RawRow, mapping: ColumnMapping, domain: str, max_chars: int) -> dict:
    rec = raw.record
    question = normalise_text(_text(rec.get(mapping.question), "question") or "")
    if not question:
        raise RowProblem("missing_question", f"column {mapping.question!r} is empty or absent")
    if len(question) > max_chars:
        raise RowProblem("too_long", f"{len(question)} characters > {max_chars}")
    answer = tests = None
    if domain == "math" and mapping.distractors:
        question, answer = multiple_choice(question, *_options(rec, mapping))
        if len(question) > max_chars:
            raise RowProblem("too_long", f"{len(question)} characters with the options > {max_chars}")
    elif domain == "math":
        answer = read_answer(rec.get(mapping.answer) if mapping.answer else None, mapping.answer_format)
        _text(answer, "answer")
    else:
        tests = read_tests(rec, mapping)
    solution = solution_text(rec.get(mapping.solution), mapping.answer_format) if mapping.solution else None
    starter = _text(rec.get(mapping.starter_code), "starter_code") if mapping.starter_code else None
    category = (_text(rec.get(mapping.category), "category") or "").strip() if mapping.category else None
    return {"question_id": question_id(question, domain), "domain": domain, "question": question,
            "reference_answer": answer, "reference_solution": solution, "tests": tests,
            "starter_code": starter or None, "category": category or None, "source": raw.source,
            "source_row": raw.row}


def _options(rec: dict, mapping: ColumnMapping) -> tuple[str, list[str]]:
    """(the correct option, the wrong ones) of a multiple-choice row, each normalised and non-empty."""
    options = []
    for column in [mapping.answer, *mapping.distractor_columns()]:
        text = normalise_text(_text(rec.get(column), column) or "")
        if not text:
            raise RowProblem("missing_answer", f"option column {column!r} is empty or absent")
        options.append(text)
    return options[0], options[1:]


def _reject(raw: RawRow, reason: str, detail: str, raw_text: str | None = None) -> dict:
    if raw_text is None:
        raw_text = json.dumps(raw.record, ensure_ascii=True, default=str)[:4096]
    return {"source": raw.source, "source_row": raw.row, "reason": reason, "detail": detail[:500], "raw": raw_text}


def normalise_rows(rows: Iterable[RawRow], mapping: ColumnMapping, domain: str,
                   max_question_chars: int = 32_000) -> tuple[pa.Table, pa.Table]:
    """Map, validate and normalise raw rows: (pool rows, reject rows). Every input row lands in exactly one."""
    good, bad = [], []
    for raw in rows:
        if raw.problem is not None:
            bad.append(_reject(raw, *raw.problem))
            continue
        try:
            good.append(_pool_row(raw, mapping, domain, max_question_chars))
        except RowProblem as p:
            bad.append(_reject(raw, p.reason, p.detail))
        except (UnicodeDecodeError, UnicodeEncodeError) as e:
            bad.append(_reject(raw, "invalid_utf8", str(e)[:200], repr(raw.record)[:4096]))
    return (pa.Table.from_pylist(good, schema=schemas.POOL), pa.Table.from_pylist(bad, schema=schemas.REJECTS))


# --- streaming, de-duplication, writing -------------------------------------------------------------------------
_SPILL_SCHEMA = schemas.POOL.append(pa.field("_seq", pa.int64()))
_IDS_SCHEMA = pa.schema([schemas.POOL.field("question_id")])


def _existing_parquet(directory: str) -> list[str]:
    return storage.list_files(directory, "*.parquet")


def _spill_existing_ids(out: str, spill: BucketSpill, near: NearDuplicates | None) -> int:
    """The pool's question ids to `spill`, and (with `near`) its questions' signatures and band keys."""
    files = pool_files(out)
    n = 0
    for path in files:
        fs, inner = storage.resolve(path)
        parquet = pq.ParquetFile(fs.open_input_file(inner))
        columns = ["question_id", "question"] if near else ["question_id"]
        for batch in parquet.iter_batches(columns=columns, batch_size=READ_BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            spill.add(pa.table([table["question_id"]], schema=_IDS_SCHEMA))
            if near:
                near.add(table, existing=True)
            n += batch.num_rows
    return n


def _dedup_bucket(new: pa.Table, existing: pa.Table | None) -> tuple[pa.Table, int, int]:
    """(rows to add, duplicates within the import, rows already in the pool)."""
    already = 0
    if existing is not None and existing.num_rows:
        fresh = pc.invert(pc.is_in(new["question_id"], value_set=existing["question_id"]))
        already = new.num_rows - pc.sum(fresh).as_py()
        new = new.filter(fresh)
    firsts = new.group_by("question_id", use_threads=False).aggregate([("_seq", "min")])["_seq_min"]
    keep = new.filter(pc.is_in(new["_seq"], value_set=firsts))
    keep = keep.take(pc.sort_indices(keep["_seq"]))
    return keep.drop_columns(["_seq"]), new.num_rows - keep.num_rows, already


class _RollingParquetWriter:
    def __init__(self, directory: Path, prefix: str, schema: pa.Schema):
        self.directory, self.prefix, self.schema = directory, prefix, schema
        self.writer, self.rows_in_file, self.files = None, 0, []

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.writer is None or self.rows_in_file >= ROWS_PER_OUTPUT_FILE:
            self.close()
            path = self.directory / f"{self.prefix}-{len(self.files):05d}.parquet"
            self.writer, self.rows_in_file = pq.ParquetWriter(str(path), self.schema), 0
            self.files.append(path)
        self.writer.write_table(table)
        self.rows_in_file += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _open_sources(cfg: PoolImportConfig, mapping: ColumnMapping) -> list[Source]:
    sources = [open_source(s, cfg.hf_split, cfg.hf_config) for s in cfg.sources]
    # A preset's optional columns (solution, starter_code, ...) may be absent from a source; required columns and
    # columns the user mapped explicitly may not.
    must_exist = {"question", "answer" if cfg.domain == "math" else "tests", "distractors"} | set(cfg.mapping)
    for source in sources:
        have = source.column_names()
        missing = {f: c for f, c in mapping.source_columns().items()
                   if c not in have and f.split("[")[0] in must_exist}
        if missing:
            raise MappingError(f"{source.spec}: mapped column(s) {missing} not found; the source has "
                               f"{sorted(have)[:30]}")
    return sources


def _known_rejects(rejects_dir: str) -> set[tuple[str, int]]:
    keys: set[tuple[str, int]] = set()
    for path in _existing_parquet(rejects_dir):
        t = storage.read_table(path, columns=["source", "source_row"])
        keys.update(zip(t["source"].to_pylist(), t["source_row"].to_pylist()))
    return keys


def _not_known(rejects: pa.Table, known: set) -> pa.Table:
    """The rejects not stored yet: a re-run does not store the same reject twice."""
    if not known or not rejects.num_rows:
        return rejects
    fresh = [(s, r) not in known for s, r in zip(rejects["source"].to_pylist(), rejects["source_row"].to_pylist())]
    return rejects.filter(pa.array(fresh))


def _spill_sources(sources: list[Source], cfg: PoolImportConfig, mapping: ColumnMapping, spill: BucketSpill,
                   rejects: _RollingParquetWriter, known_rejects: set, report: ImportReport) -> None:
    seq = 0
    for source in sources:
        for batch in batched(source.rows(), READ_BATCH_ROWS):
            good, bad = normalise_rows(batch, mapping, cfg.domain, cfg.max_question_chars)
            report.read += len(batch)
            report.rejected.update(bad["reason"].to_pylist())
            rejects.write(_not_known(bad, known_rejects))
            seqs = pa.array(range(seq, seq + good.num_rows), pa.int64())
            spill.add(good.append_column("_seq", seqs))
            seq += good.num_rows


def import_pool(cfg: PoolImportConfig) -> ImportReport:
    """Stream `cfg.sources` into the pool at `cfg.out`; see the module docstring."""
    mapping = resolve_mapping(cfg.preset, cfg.mapping)
    if cfg.domain == "math" and not mapping.answer:
        raise MappingError("math questions need an answer column: set a preset or --map answer=COLUMN")
    if cfg.domain == "code" and not mapping.tests:
        raise MappingError("code questions need a tests column: set a preset or --map tests=COLUMN")
    if cfg.domain == "code" and mapping.distractors:
        raise MappingError("distractors (multiple choice) are for math questions only")
    sources = _open_sources(cfg, mapping)  # fails here, before anything is written
    out = cfg.out
    rejects_dir = storage.join(out, "rejects")
    token = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # Staged on the pool's own disk (published by renames) or, for a pool in object storage, on this machine's
    # (published by uploads): the spill files are scratch either way.
    staging = Path(tempfile.mkdtemp(prefix=f"adaptcot-import-{token}-")) if storage.is_remote(out) else \
        Path(out) / f".staging-{token}"
    report = ImportReport()
    if read_parts(out) is None and legacy_files(out):  # adding to it would hide it: migrate first, by command
        raise PoolLayoutError(f"{out} is a pool in the layout before question buckets: run `adaptcot pool migrate "
                              f"{out}` once (it rewrites the pool in place), then import again")
    lease = Lease(storage.join(out, "leases"), f"pool {out}").acquire()
    try:
        sweep_unlisted(out)
        new_spill = BucketSpill(staging / "new", _SPILL_SCHEMA)
        old_spill = BucketSpill(staging / "existing", _IDS_SCHEMA)
        near = NearDuplicates(staging / "near", cfg.near_duplicates) if cfg.near_duplicates.enabled else None
        _spill_existing_ids(out, old_spill, near)
        old_spill.close()
        staged_rejects = _RollingParquetWriter(_mkdir(staging / "rejects"), f"rejects-{token}", schemas.REJECTS)
        known_rejects = _known_rejects(rejects_dir)
        _spill_sources(sources, cfg, mapping, new_spill, staged_rejects, known_rejects, report)
        new_spill.close()
        found = _find_near_duplicates(near, new_spill, old_spill) if near else {}
        left_out = pa.array(sorted(found), pa.string())
        staged_pool = BucketedStage(staging, token, pool_bits(out, report.read - sum(report.rejected.values())))
        for bucket in range(NUM_BUCKETS):
            new = new_spill.read(bucket)
            if new is None:
                continue
            keep, dups, already = _dedup_bucket(new, old_spill.read(bucket))
            near_rows = pc.is_in(keep["question_id"], value_set=left_out)
            rejected = near_duplicate_rejects(keep.filter(near_rows), found, cfg.near_duplicates.ngram)
            staged_rejects.write(_not_known(rejected, known_rejects))
            keep = keep.filter(pc.invert(near_rows))
            staged_pool.write(keep)
            report.imported += keep.num_rows
            report.duplicates += dups
            report.near_duplicates += rejected.num_rows
            report.already_in_pool += already
        staged_rejects.close()
        _publish(rejects_dir, staged_rejects.files)
        staged_pool.publish(out)
        _append_manifest(out, cfg, report, token)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lease.release()
    return report


def _find_near_duplicates(near: NearDuplicates, new_spill: BucketSpill, old_spill: BucketSpill) -> dict:
    """The new questions (after exact de-duplication) that are near duplicates, by id (`NearDuplicates.resolve`)."""
    for bucket in range(NUM_BUCKETS):
        if (new := new_spill.read(bucket)) is not None:
            keep = _dedup_bucket(new, old_spill.read(bucket))[0]
            near.add(keep.select(["question_id", "question"]), existing=False)
    return near.resolve()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _publish(rejects_dir: str, reject_files: list[Path]) -> None:
    # Rejects before the pool: a kill between leaves pool rows to be re-added (de-duplicated), never lost rejects.
    if not storage.is_remote(rejects_dir):
        _mkdir(Path(rejects_dir))
    for path in reject_files:
        if storage.is_remote(rejects_dir):
            storage.upload(path, storage.join(rejects_dir, path.name))  # whole objects, one per file
        else:
            path.rename(Path(rejects_dir) / path.name)


def _append_manifest(out: str, cfg: PoolImportConfig, report: ImportReport, token: str) -> None:
    path = storage.join(out, "manifest.json")
    manifest = json.loads(storage.read_text(path)) if storage.exists(path) else {
        "schema_version": schemas.SCHEMA_VERSION, "imports": []}
    manifest["imports"].append({"token": token, "config": cfg.model_dump(), **report.as_dict()})
    storage.write_text(path, json.dumps(manifest, indent=2))


def read_pool(out: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The whole pool as one table (for small pools and tests; large pools stream with `pyarrow.dataset`)."""
    return storage.dataset(pool_files(out), schemas.POOL).to_table(columns=columns)


def read_rejects(out: str | Path) -> pa.Table:
    files = _existing_parquet(storage.join(str(out), "rejects"))
    if not files:
        return schemas.REJECTS.empty_table()
    return storage.dataset(files, schemas.REJECTS).to_table()


def import_pool_remote(cfg: PoolImportConfig) -> ImportReport:
    """Run `import_pool` as a Ray task (on the node that can see `cfg.out`)."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(import_pool).remote(cfg))

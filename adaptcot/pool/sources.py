"""Streaming readers for question sources: JSONL, Parquet, CSV and Hugging Face datasets.

`open_source(spec)` checks the source exists and returns a `Source` whose `rows()` yields `RawRow`s one at a time, so
import memory does not grow with the pool. A row that cannot be read as a record (a broken JSON line, invalid UTF-8,
a CSV line with the wrong number of fields) is yielded with `problem` set instead of being dropped or aborting the
file. Source specs: a file path or cloud URI (s3://, gs://) ending in `.jsonl`, `.json`, `.jsonl.gz`, `.parquet`,
`.csv` or `.tsv`; a local directory (a `datasets` `save_to_disk` folder or a folder of data files), `hf:NAME` for a
dataset on the Hugging Face hub, or
`hf://datasets/OWNER/NAME/GLOB` for data files of a hub dataset read directly (JSON lines or Parquet), which is how
datasets whose loading script `datasets` no longer runs are read (LiveCodeBench).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from adaptcot.common import storage

RAW_TEXT_LIMIT = 4096  # characters of a bad row kept in the rejects table


class SourceError(ValueError):
    """A source cannot be opened at all (missing file, unknown format); raised before any row is read."""


@dataclass(frozen=True)
class RawRow:
    source: str
    row: int
    record: dict[str, Any] | None
    problem: tuple[str, str, str] | None = None  # (reason, detail, raw text)


def _raw_text(data: bytes | str) -> str:
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    return text[:RAW_TEXT_LIMIT]


def _open_binary(spec: str):
    """A binary stream of a local file or a cloud URI (s3://...), gunzipped for .gz."""
    if not storage.is_remote(spec):
        return gzip.open(spec, "rb") if spec.endswith(".gz") else open(spec, "rb")
    fs, inner = storage.resolve(spec)
    raw = fs.open_input_stream(inner, compression=None)
    return gzip.GzipFile(fileobj=raw) if spec.endswith(".gz") else io.BufferedReader(raw)


def _parquet_file(spec: str) -> pq.ParquetFile:
    fs, inner = storage.resolve(spec)
    return pq.ParquetFile(fs.open_input_file(inner))


@dataclass(frozen=True)
class Source:
    spec: str
    kind: str  # jsonl | json_array | parquet | csv | tsv | hf_disk | hf | hf_files
    hf_split: str = "train"
    hf_config: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.spec)

    def rows(self) -> Iterator[RawRow]:
        reader = {"jsonl": self._jsonl, "json_array": self._json_array, "parquet": self._parquet,
                  "csv": self._csv, "tsv": self._csv, "hf_disk": self._hf, "hf": self._hf,
                  "hf_files": self._hf}[self.kind]
        return reader()

    def column_names(self, peek_rows: int = 100) -> set[str]:
        """Columns the source has (for JSON: the keys seen in its first records)."""
        if self.kind == "parquet":
            return set(_parquet_file(self.spec).schema_arrow.names)
        names: set[str] = set()
        for i, raw in enumerate(self.rows()):
            if raw.record is not None:
                names |= set(raw.record)
            if i >= peek_rows or (names and self.kind not in ("jsonl", "json_array")):
                break
        return names

    def _jsonl(self) -> Iterator[RawRow]:
        with _open_binary(self.spec) as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                yield _parse_json_line(self.spec, i, line)

    def _json_array(self) -> Iterator[RawRow]:
        # A JSON array cannot be streamed by the standard library; such files are read whole (use JSONL for size).
        with _open_binary(self.spec) as f:
            records = json.load(f)
        for i, rec in enumerate(records):
            if isinstance(rec, dict):
                yield RawRow(self.spec, i, rec)
            else:
                yield RawRow(self.spec, i, None, ("malformed_row", "array item is not an object", _raw_text(str(rec))))

    def _parquet(self) -> Iterator[RawRow]:
        n = 0
        for batch in _parquet_file(self.spec).iter_batches(batch_size=4096):
            try:
                records = batch.to_pylist()
            except UnicodeDecodeError:
                records = _decode_rows_one_by_one(batch)
            for rec in records:
                if isinstance(rec, tuple):  # (reason, detail, raw) of an undecodable row
                    yield RawRow(self.spec, n, None, rec)
                else:
                    yield RawRow(self.spec, n, rec)
                n += 1

    def _csv(self) -> Iterator[RawRow]:
        delimiter = "\t" if self.kind == "tsv" else ","
        with _open_binary(self.spec) as f:
            # surrogateescape keeps undecodable bytes so the row, not the file, is rejected.
            text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
            reader = csv.reader(text, delimiter=delimiter)
            header = next(reader, None) or []
            for i, fields in enumerate(reader, start=1):
                yield _csv_row(self.spec, i, header, fields)

    def _hf(self) -> Iterator[RawRow]:
        for i, rec in enumerate(_hf_iterable(self)):
            yield RawRow(self.spec, i, dict(rec))


def _parse_json_line(spec: str, i: int, line: bytes) -> RawRow:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRow(spec, i, None, ("invalid_utf8", f"byte {e.start} of the line", _raw_text(line)))
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        return RawRow(spec, i, None, ("malformed_row", f"bad JSON: {e.msg}", _raw_text(text)))
    if not isinstance(rec, dict):
        return RawRow(spec, i, None, ("malformed_row", "JSON line is not an object", _raw_text(text)))
    return RawRow(spec, i, rec)


def _csv_row(spec: str, i: int, header: list[str], fields: list[str]) -> RawRow:
    raw = ",".join(fields)
    if len(fields) != len(header):
        return RawRow(spec, i, None, ("malformed_row", f"{len(fields)} fields, header has {len(header)}",
                                      _raw_text(raw.encode("utf-8", "surrogateescape"))))
    try:
        for value in fields:
            value.encode("utf-8")
    except UnicodeEncodeError:
        return RawRow(spec, i, None, ("invalid_utf8", "a field is not valid UTF-8",
                                      _raw_text(raw.encode("utf-8", "surrogateescape"))))
    return RawRow(spec, i, dict(zip(header, fields)))


def _decode_rows_one_by_one(batch) -> list[dict | tuple[str, str, str]]:
    out: list[dict | tuple[str, str, str]] = []
    for j in range(batch.num_rows):
        try:
            out.append(batch.slice(j, 1).to_pylist()[0])
        except UnicodeDecodeError as e:
            out.append(("invalid_utf8", str(e)[:200], _raw_text(e.object[:RAW_TEXT_LIMIT])))
    return out


def _hf_iterable(source: Source):
    import datasets  # heavy; only for these sources

    if source.kind == "hf_disk":
        ds = datasets.load_from_disk(str(source.path))
        if isinstance(ds, datasets.DatasetDict):
            if source.hf_split not in ds:
                raise SourceError(f"{source.spec}: no split {source.hf_split!r}; it has {list(ds)}")
            ds = ds[source.hf_split]
        return ds
    if source.kind == "hf_files":  # data files by URL or glob (fsspec: HfFileSystem for hf://); always one split
        builder = "parquet" if source.spec.endswith(".parquet") else "json"
        return datasets.load_dataset(builder, data_files=source.spec, split="train", streaming=True)
    name = source.spec[len("hf:"):] if source.spec.startswith("hf:") else source.spec
    return datasets.load_dataset(name, source.hf_config, split=source.hf_split, streaming=True)


_SUFFIX_KIND = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}


def open_source(spec: str, hf_split: str = "train", hf_config: str | None = None) -> Source:
    if spec.startswith("hf://"):
        if not spec.endswith((".jsonl", ".json", ".jsonl.gz", ".parquet")):
            raise SourceError(f"{spec}: hub data files must end in .jsonl, .json, .jsonl.gz or .parquet")
        return Source(spec, "hf_files")
    if spec.startswith("hf:"):
        return Source(spec, "hf", hf_split, hf_config)
    if not storage.exists(spec):
        raise SourceError(f"source not found: {spec} (prefix a Hugging Face hub dataset with 'hf:')")
    path = Path(storage.name(spec))  # for its suffixes
    if not storage.is_remote(spec) and Path(spec).is_dir():
        saved = (Path(spec) / "dataset_info.json").exists() or (Path(spec) / "dataset_dict.json").exists()
        return Source(spec, "hf_disk" if saved else "hf", hf_split, hf_config)
    suffixes = [s for s in path.suffixes if s != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".json":
        with _open_binary(spec) as f:
            first = f.read(64).lstrip()
        return Source(spec, "json_array" if first.startswith(b"[") else "jsonl")
    if suffix not in _SUFFIX_KIND or (path.suffix == ".gz" and suffix not in (".jsonl", ".ndjson", ".csv", ".tsv")):
        raise SourceError(f"{spec}: unknown source format {''.join(path.suffixes)!r}; "
                          "use .jsonl, .json, .parquet, .csv, .tsv or a dataset directory")
    return Source(spec, _SUFFIX_KIND[suffix])


def batched(rows: Iterator[RawRow], size: int) -> Iterator[list[RawRow]]:
    """Rows in lists of `size` (the last one shorter): how importers and verifiers stream a source."""
    batch: list[RawRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

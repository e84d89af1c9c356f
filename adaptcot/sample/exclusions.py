"""Which bank questions a sample may not draw (decontamination and repeats), and each row's seeded draw order.

- `exclusion_ids`: question ids of benchmark lists (files in any pool-import format, or `.txt` one question a
  line), matched by the identity key of `adaptcot.common.text` (equal up to case, whitespace and Unicode
  compatibility forms), under both domains; an unreadable row is an error, never skipped (that would leak).
- `previous_sample_ids`: question ids of earlier `samples.parquet` outputs.
- `mark_exclusions` (pure, per block): each bank row's first exclusion rule and its seeded order key.

Not covered: fuzzy or n-gram decontamination (only exact matches of the identity key).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import storage
from adaptcot.common.text import normalise_text, question_id
from adaptcot.pool.sources import open_source

DOMAINS = ("math", "code")


def order_key(seed: int, qid: str) -> str:
    return hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest()


def _benchmark_rows(path: str) -> Iterator[tuple[str | None, str | None]]:
    """(question text, question id) of each row of a benchmark list; any unreadable row is an error, since a
    silently skipped row would be a contamination leak."""
    if path.endswith(".txt"):
        for line in storage.read_text(path).splitlines():
            if line.strip():
                yield line, None
        return
    for raw in open_source(path).rows():
        if raw.problem is not None:
            raise ValueError(f"{path} row {raw.row}: {raw.problem[0]} ({raw.problem[1]})")
        text, qid = raw.record.get("question"), raw.record.get("question_id")
        if not text and not qid:
            raise ValueError(f"{path} row {raw.row}: no `question` (or `question_id`); it has {sorted(raw.record)}")
        yield text, qid


def identity_ids(text: str) -> set[str]:
    """The ids a question has in a pool of either domain: what every exclusion below matches on."""
    return {question_id(normalise_text(str(text)), domain) for domain in DOMAINS}


def exclusion_ids(paths: Iterable[str]) -> set[str]:
    """Question ids of benchmark questions, under both domains, so a question matches whatever pool it is in."""
    ids: set[str] = set()
    for path in paths:
        for text, qid in _benchmark_rows(path):
            if text:
                ids.update(identity_ids(text))
            if qid:
                ids.add(str(qid))
    return ids


def overlapping_questions(questions: pa.Table, benchmark_questions: Iterable[str]) -> list[str]:
    """The questions (`question_id`, `question`) that a benchmark also holds, by the identity key that excludes
    benchmark questions from a sample (one rule for both)."""
    ids = set().union(*(identity_ids(q) for q in benchmark_questions))
    hit = pc.is_in(questions["question_id"], value_set=pa.array(sorted(ids), pa.string()))
    return questions.filter(hit)["question"].to_pylist()


def previous_sample_ids(paths: Iterable[str]) -> set[str]:
    """Question ids of earlier sample outputs: samples.parquet files, or directories searched for them."""
    ids: set[str] = set()
    for path in paths:
        files = storage.list_files(path, "samples.parquet", recursive=True) if storage.is_dir(path) else [path]
        if not files or not storage.exists(files[0]):
            raise FileNotFoundError(f"no earlier sample at {path} (a samples.parquet file or a directory holding one)")
        for f in files:
            ids.update(storage.read_table(f, columns=["question_id"])["question_id"].to_pylist())
    return ids


def mark_exclusions(rows: pa.Table, domains: list[str] | None, drop_ids: dict[str, pa.Array],
                    seed: int) -> pa.Table:
    """Bank rows (of questions in the pool) with `excluded`: the first rule that removes the row (`domain`, then the
    `drop_ids` sets in order: eval_set, benchmark, previous_sample), null for rows left to draw from; and `_order`,
    the row's seeded order key (`order_key`)."""
    excluded = pa.nulls(rows.num_rows, pa.string())
    rules = [("domain", pc.invert(pc.is_in(rows["domain"], value_set=pa.array(domains))))] if domains else []
    rules += [(reason, pc.is_in(rows["question_id"], value_set=ids)) for reason, ids in drop_ids.items()]
    for reason, mask in rules:
        excluded = pc.if_else(pc.and_(pc.is_null(excluded), mask), reason, excluded)
    order = pa.array([order_key(seed, q) for q in rows["question_id"].to_pylist()], pa.string())
    return rows.append_column("excluded", excluded).append_column("_order", order)

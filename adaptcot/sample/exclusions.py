"""Which bank questions a sample may not draw (decontamination and repeats), and each row's seeded draw order.

- `read_benchmarks` / `exclusion_ids`: question ids and texts of benchmark lists (files in any pool-import format,
  or `.txt` one question a line), matched by the identity key of `adaptcot.common.text` (equal up to case,
  whitespace and Unicode compatibility forms), under both domains; an unreadable row is an error, never skipped
  (that would leak).
- `ngram_overlap` (pure): the questions that share a word n-gram (default 8, open-r1's rule; lm-eval uses 13) with
  a benchmark question, the words being those of the identity key. `ngram_index` hashes the benchmark's n-grams
  once (`word_ngram_hashes`: 64-bit ints, kept sorted as the lookup set), `index_overlap` checks a batch against
  them with one vectorised search, and `pool_overlap` runs it over a pool a batch at a time (on Ray Data for a big
  pool), keeping only the matches. A question (or benchmark question) shorter than n words has no n-gram: it is
  matched by identity only.
- `previous_sample_ids`: question ids of earlier `samples.parquet` outputs.
- `mark_exclusions` (pure, per block): each bank row's first exclusion rule and its seeded order key.

Not covered: paraphrases that share no n words in a row (a rewritten benchmark question), overlap in answers or
solutions (only question text is compared), and n-grams split differently by punctuation ("x=2" vs "x = 2").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.common.text import identity_key, normalise_text, question_id, word_ngram_hashes
from adaptcot.pool.sources import open_source

DOMAINS = ("math", "code")
SNIPPET_CHARS = 100
OVERLAP = pa.schema([pa.field("question_id", pa.string()), pa.field("benchmark_question", pa.string()),
                     pa.field("shared", pa.string())])  # shared: the first n-gram both hold, as identity-key words


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


@dataclass(frozen=True)
class Benchmarks:
    """Benchmark questions a sample may not draw: `by_id` maps each question id they match by identity (both
    domains) to the question's text ("" for a row given only by `question_id`); `texts` feed the n-gram rule."""
    by_id: dict[str, str] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)


def read_benchmarks(paths: Iterable[str], texts: Sequence[str] = ()) -> Benchmarks:
    """The questions of benchmark list files and of `texts` (questions given directly, e.g. the job's own eval
    benchmarks)."""
    found = Benchmarks()
    rows = [row for path in paths for row in _benchmark_rows(path)] + [(text, None) for text in texts]
    for text, qid in rows:
        if text:
            found.by_id.update(dict.fromkeys(identity_ids(text), str(text)))
            found.texts.append(str(text))
        if qid:
            found.by_id.setdefault(str(qid), "")
    return found


def exclusion_ids(paths: Iterable[str]) -> set[str]:
    """Question ids of benchmark questions, under both domains, so a question matches whatever pool it is in."""
    return set(read_benchmarks(paths).by_id)


def snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= chars else flat[:chars - 3] + "..."


# --- n-gram overlap ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NgramIndex:
    """The distinct word n-grams of benchmark questions, sorted (the lookup set), each with the first benchmark
    question holding it (`owner`, an index into `snippets`)."""
    n: int
    hashes: np.ndarray
    owner: np.ndarray
    snippets: list[str]


def ngram_index(benchmark_texts: Sequence[str], n: int = 8) -> NgramIndex:
    grams = word_ngram_hashes(benchmark_texts, n)
    order = np.lexsort((grams.owner, grams.hashes))
    hashes, owner = grams.hashes[order], grams.owner[order]
    first = np.concatenate([[True], hashes[1:] != hashes[:-1]]) if len(hashes) else np.zeros(0, bool)
    return NgramIndex(n, hashes[first], owner[first], [snippet(t) for t in benchmark_texts])


def index_overlap(questions: pa.Table, index: NgramIndex) -> pa.Table:
    """The questions (`question_id`, `question`) that share a word n-gram with a benchmark question of `index`:
    one row each (schema OVERLAP), naming the benchmark question of the first n-gram they share."""
    schemas.require_columns(questions, ["question_id", "question"], "n-gram overlap")
    if not len(index.hashes) or not questions.num_rows:
        return OVERLAP.empty_table()
    texts = questions["question"].to_pylist()
    grams = word_ngram_hashes(texts, index.n)
    at = np.minimum(np.searchsorted(index.hashes, grams.hashes), len(index.hashes) - 1)
    hit = np.flatnonzero(index.hashes[at] == grams.hashes)
    rows, first = np.unique(grams.owner[hit], return_index=True)  # n-grams come in text order: first = earliest
    hit = hit[first]
    shared = [" ".join(identity_key(texts[r]).split()[s:s + index.n]) for r, s in zip(rows, grams.start[hit])]
    return pa.table({"question_id": questions["question_id"].take(pa.array(rows)),
                     "benchmark_question": [index.snippets[b] for b in index.owner[at[hit]]],
                     "shared": shared}, schema=OVERLAP)


def ngram_overlap(questions: pa.Table, benchmark_texts: list[str], n: int = 8) -> pa.Table:
    """Questions that share a word n-gram with any of `benchmark_texts` (see the module docstring)."""
    return index_overlap(questions, ngram_index(benchmark_texts, n))


def pool_overlap(files: list[str], index: NgramIndex, on_ray: bool, batch_rows: int = 8192) -> pa.Table:
    """`index_overlap` over every question of these pool files, a batch at a time, on Ray Data when `on_ray`
    (Ray must be up); only the matches are kept, so no process holds the pool's text."""
    if not len(index.hashes) or not files:
        return OVERLAP.empty_table()
    if on_ray:
        import ray

        matches = storage.ray_dataset(files, ["question_id", "question"]).map_batches(
            index_overlap, fn_kwargs={"index": index}, batch_format="pyarrow", batch_size=batch_rows, num_cpus=0.25)
        parts = [ray.get(ref) for ref in matches.to_arrow_refs()]
    else:
        batches = storage.dataset(files, schemas.POOL).to_batches(columns=["question_id", "question"],
                                                                  batch_size=batch_rows)
        parts = [index_overlap(pa.Table.from_batches([b]), index) for b in batches]
    return pa.concat_tables([OVERLAP.empty_table(), *(p.cast(OVERLAP) for p in parts)])


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
    `drop_ids` sets in order: eval_set, benchmark, benchmark_ngram, previous_sample), null for rows left to draw
    from; and `_order`,
    the row's seeded order key (`order_key`)."""
    excluded = pa.nulls(rows.num_rows, pa.string())
    rules = [("domain", pc.invert(pc.is_in(rows["domain"], value_set=pa.array(domains))))] if domains else []
    rules += [(reason, pc.is_in(rows["question_id"], value_set=ids)) for reason, ids in drop_ids.items()]
    for reason, mask in rules:
        excluded = pc.if_else(pc.and_(pc.is_null(excluded), mask), reason, excluded)
    order = pa.array([order_key(seed, q) for q in rows["question_id"].to_pylist()], pa.string())
    return rows.append_column("excluded", excluded).append_column("_order", order)

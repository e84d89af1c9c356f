"""Near-duplicate questions at import: MinHash LSH over the importer's bucket spills.

`importer.import_pool` runs this pass (`PoolImportConfig.near_duplicates`, a `NearDuplicateConfig`, on by default)
after its exact de-duplication by `question_id`; `NearDuplicates` finds the new questions to leave out and
`near_duplicate_rejects` turns them into rows of the rejects table. `BucketSpill` (rows to `NUM_BUCKETS` Arrow files,
read back one bucket at a time) is here because both passes spill with it.

- Near duplicates are found with MinHash LSH (datasketch's `MinHash`, and its `MinHashLSH` to choose b bands of r
  rows for the threshold): each question's identity-key words are cut into word shingles (`ngram` words,
  `adaptcot.common.text.word_ngram_hashes`; a shorter question is one shingle), its signature is `num_perm` MinHash
  values, and each band of r values is folded into a 64-bit band key.
- Bucketed like the importer's exact pass (the same `BucketSpill`), so nothing holds the pool: signatures spill by
  question id, (band key, id) rows spill by band key, and questions whose keys are equal in some band are found
  bucket by bucket (a band-key group compares each member with its first 64 members).
- Each candidate pair is confirmed by its estimated Jaccard (the share of equal signature values, as
  `MinHash.jaccard`) >= `threshold`; union-find joins confirmed pairs into clusters. A cluster keeps the question the
  pool already holds (the smallest id if several), else its smallest question id; every other new question of the
  cluster goes to the rejects table as `near_duplicate`, its detail naming the kept id (and the question it matched,
  when another). The questions already in the pool take part with their signatures (recomputed from their text on
  every import) but are never removed, so a re-run rejects the same rows the same way and stores no reject twice.
  Clusters are transitive: a question may be rejected for the kept one through a third question it resembles more.

Why word 3-grams at 0.7 (web-scale dedup uses 5-grams at 0.7-0.85 on whole documents): questions are short, and
one word changed in a question of W words leaves a word-3-gram Jaccard of about (W-5)/(W+1): 0.87 at GSM8K's
typical 45 words, 0.81 at 31, 0.71 at 20 (5-grams: 0.79, 0.68, 0.52). So a question that differs from another by
one word or number is a near duplicate from about 20 words on; shorter ones (a formula with another number) stay
distinct. With these settings `MinHashLSH` picks 20 bands of 6 rows: a pair at Jaccard 0.7 becomes a candidate with
probability 0.92, at 0.75 0.98.

Not covered: near duplicates across domains or pool directories (an import looks at its own pool), and paraphrases
(rewordings share few shingles).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from pydantic import Field

from adaptcot.common import schemas
from adaptcot.common.settings import Strict
from adaptcot.common.text import word_ngram_hashes

MINHASH_SEED = 1
# datasketch's (false positive, false negative) weights for choosing bands and rows: a false positive only costs one
# signature comparison (candidates are confirmed), a false negative keeps a duplicate, so recall is favoured.
LSH_WEIGHTS = (0.1, 0.9)
GROUP_COMPARE_MAX = 64  # a band-key group compares each member with its first members only (bounds the pairs)
_BAND_BASE = np.uint64(0x9E3779B97F4A7C15)
NUM_BUCKETS = 64  # spill files per pass


# --- the bucket spill (the importer's exact pass uses it too) ------------------------------------------------------
def _bucket_of(ids: pa.Array) -> pa.Array:
    # The first two hex digits of a sha256-derived id are uniform; 256 values fold evenly onto 64 buckets.
    digits = pa.array(list("0123456789abcdef"))
    high = pc.index_in(pc.utf8_slice_codeunits(ids, 0, 1), value_set=digits)
    low = pc.index_in(pc.utf8_slice_codeunits(ids, 1, 2), value_set=digits)
    return pc.bit_wise_and(pc.add(pc.multiply(high, 16), low), NUM_BUCKETS - 1)


class BucketSpill:
    """Rows spilled to NUM_BUCKETS Arrow IPC files by question_id, so each bucket can be de-duplicated alone."""

    def __init__(self, root: Path, schema: pa.Schema):
        self.root, self.schema = root, schema
        root.mkdir(parents=True)
        self.writers: dict[int, ipc.RecordBatchFileWriter] = {}

    def add(self, table: pa.Table, buckets: pa.Array | None = None) -> None:
        """Rows to their buckets: by question_id, or `buckets` (one per row) when given."""
        buckets = _bucket_of(table["question_id"].combine_chunks()) if buckets is None else buckets
        order = pc.sort_indices(buckets)
        table, buckets = table.take(order), buckets.take(order)
        start = 0
        for bucket, length in _runs(buckets):
            self._writer(bucket).write_table(table.slice(start, length))
            start += length

    def _writer(self, bucket: int) -> ipc.RecordBatchFileWriter:
        if bucket not in self.writers:
            self.writers[bucket] = ipc.new_file(str(self.root / f"{bucket:03d}.arrow"), self.schema)
        return self.writers[bucket]

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def read(self, bucket: int) -> pa.Table | None:
        path = self.root / f"{bucket:03d}.arrow"
        return ipc.open_file(str(path)).read_all() if path.exists() else None


def _runs(sorted_values: pa.Array) -> list[tuple[int, int]]:
    """(value, run length) of a sorted array, in order."""
    encoded = pc.run_end_encode(sorted_values)
    ends = encoded.run_ends.to_pylist()
    starts = [0] + ends[:-1]
    return list(zip(encoded.values.to_pylist(), [e - s for s, e in zip(starts, ends)]))


# --- the near-duplicate pass ----------------------------------------------------------------------------------------
class NearDuplicateConfig(Strict):
    enabled: bool = True
    threshold: float = Field(default=0.7, gt=0, le=1)  # estimated Jaccard of the word-shingle sets
    num_perm: int = Field(default=128, ge=16, le=1024)  # MinHash values per question
    ngram: int = Field(default=3, ge=1)  # words per shingle


@dataclass(frozen=True)
class NearDuplicate:
    kept: str       # the question its cluster keeps
    matched: str    # the question it was confirmed against (its best pair)
    jaccard: float  # estimated Jaccard with `matched`


_BANDS_SCHEMA = pa.schema([pa.field("band_key", pa.uint64()), pa.field("question_id", pa.string()),
                           pa.field("existing", pa.bool_())])


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(questions x bands) 64-bit keys: each band's `rows` signature values folded by a polynomial mod 2^64, then
    its band number, so equal keys mean an equal band (a 2^-64 collision is caught by the Jaccard check)."""
    values = signatures[:, :bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    acc = np.zeros((len(signatures), bands), np.uint64)
    for j in range(rows):
        acc = acc * _BAND_BASE + values[:, :, j]
    return acc * _BAND_BASE + np.arange(bands, dtype=np.uint64)


class NearDuplicates:
    """MinHash signatures (spilled by question id) and LSH band keys (spilled by band key) of the pool's questions
    and the new ones; `resolve` finds the new questions to leave out."""

    def __init__(self, root: Path, cfg: NearDuplicateConfig):
        from datasketch import MinHash, MinHashLSH  # scipy comes with it: imported only when used

        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=LSH_WEIGHTS)
        self.cfg, self.bands, self.rows, self.minhash = cfg, lsh.b, lsh.r, MinHash
        self.signature_schema = pa.schema([pa.field("question_id", pa.string()),
                                           pa.field("signature", pa.list_(pa.uint32(), cfg.num_perm))])
        self.signatures = BucketSpill(root / "signatures", self.signature_schema)
        self.band_rows = BucketSpill(root / "bands", _BANDS_SCHEMA)

    def _signatures(self, questions: list[str]) -> np.ndarray:
        grams = word_ngram_hashes(questions, self.cfg.ngram, shorter="whole")
        shingles = (grams.hashes >> np.uint64(32)).astype(np.uint32)  # datasketch's affine32 scheme: 32-bit input
        bounds = np.searchsorted(grams.owner, np.arange(len(questions) + 1))
        sets = (shingles[a:b].tolist() for a, b in itertools.pairwise(bounds))
        sketches = self.minhash.generator(sets, num_perm=self.cfg.num_perm, seed=MINHASH_SEED, hashfunc=int)
        return np.array([m.hashvalues for m in sketches], np.uint32).reshape(len(questions), self.cfg.num_perm)

    def add(self, table: pa.Table, existing: bool) -> None:
        """Signatures and band keys of these questions (`question_id`, `question`)."""
        if not table.num_rows:
            return
        ids = table["question_id"].combine_chunks()
        signatures = self._signatures(table["question"].to_pylist())
        flat = pa.array(signatures.ravel(), pa.uint32())
        self.signatures.add(pa.table([ids, pa.FixedSizeListArray.from_arrays(flat, self.cfg.num_perm)],
                                     schema=self.signature_schema))
        keys = _band_keys(signatures, self.bands, self.rows).ravel()
        rows = pa.table([pa.array(keys, pa.uint64()), ids.take(np.repeat(np.arange(len(ids)), self.bands)),
                         pa.array(np.full(len(keys), existing))], schema=_BANDS_SCHEMA)
        self.band_rows.add(rows, pa.array(keys % np.uint64(NUM_BUCKETS)))

    def resolve(self) -> dict[str, NearDuplicate]:
        """New question id -> why it is left out; see the module docstring."""
        self.signatures.close()
        self.band_rows.close()
        pairs, existing = set(), set()
        for bucket in range(NUM_BUCKETS):
            if (rows := self.band_rows.read(bucket)) is not None:
                _candidate_pairs(rows, pairs, existing)
        edges = self._confirmed(sorted(pairs))
        return _clusters(edges, existing)

    def _confirmed(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str, float]]:
        """The candidate pairs whose estimated Jaccard reaches the threshold, with it."""
        if not pairs:
            return []
        needed = pa.array(sorted({q for pair in pairs for q in pair}), pa.string())
        ids, parts = [], []
        for bucket in range(NUM_BUCKETS):
            if (table := self.signatures.read(bucket)) is not None:
                table = table.filter(pc.is_in(table["question_id"], value_set=needed))
                ids += table["question_id"].to_pylist()
                parts.append(table["signature"].combine_chunks().flatten().to_numpy())
        signatures = np.concatenate(parts).reshape(len(ids), self.cfg.num_perm)
        at = {q: i for i, q in enumerate(ids)}
        left = np.array([at[a] for a, _ in pairs])
        right = np.array([at[b] for _, b in pairs])
        jaccard = np.concatenate([(signatures[left[i:i + 65536]] == signatures[right[i:i + 65536]]).mean(axis=1)
                                  for i in range(0, len(pairs), 65536)])
        return [(a, b, float(j)) for (a, b), j in zip(pairs, jaccard) if j >= self.cfg.threshold]


def _candidate_pairs(rows: pa.Table, pairs: set, existing: set) -> None:
    """Pairs of questions with an equal band key in this bucket (at least one of them new), into `pairs`; the
    questions of the pool among them into `existing`. A group is ordered pool questions first, then by id."""
    rows = rows.sort_by([("band_key", "ascending"), ("existing", "descending"), ("question_id", "ascending")])
    keys = rows["band_key"].to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, int)
    ends = np.append(starts[1:], len(keys))
    groups = [(s, e) for s, e in zip(starts, ends) if e - s >= 2]
    if not groups:
        return
    members = rows.take(np.concatenate([np.arange(s, e) for s, e in groups]))
    ids, old = members["question_id"].to_pylist(), members["existing"].to_pylist()
    at = 0
    for s, e in groups:
        group, in_pool = ids[at:at + e - s], old[at:at + e - s]
        at += e - s
        existing.update(q for q, o in zip(group, in_pool) if o)
        for i in range(1, len(group)):
            pairs.update((group[j], group[i]) for j in range(min(i, GROUP_COMPARE_MAX))
                         if not (in_pool[i] and in_pool[j]))


def _clusters(edges: list[tuple[str, str, float]], existing: set[str]) -> dict[str, NearDuplicate]:
    """Union-find over the confirmed pairs; each cluster keeps its pool question (smallest id) or smallest id."""
    parent: dict[str, str] = {}

    def find(q: str) -> str:
        while parent.setdefault(q, q) != q:
            parent[q] = parent.setdefault(parent[q], parent[q])
            q = parent[q]
        return q

    best: dict[str, tuple[float, str]] = {}
    for a, b, j in edges:  # sorted by pair: ties keep the first
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
        for q, other in ((a, b), (b, a)):
            if q not in best or j > best[q][0]:
                best[q] = (j, other)
    clusters: dict[str, list[str]] = defaultdict(list)
    for q in best:
        clusters[find(q)].append(q)
    out = {}
    for members in clusters.values():
        kept = min([q for q in members if q in existing] or members)
        out.update({q: NearDuplicate(kept, best[q][1], best[q][0]) for q in members
                    if q != kept and q not in existing})
    return out


def near_duplicate_rejects(rows: pa.Table, found: dict[str, NearDuplicate], ngram: int) -> pa.Table:
    """Rejects-table rows (`near_duplicate`) for these pool rows, each left out as `found[question_id]` says."""
    out = []
    for row in rows.to_pylist():
        near = found[row["question_id"]]
        via = "" if near.matched == near.kept else f", through {near.matched}"
        raw = {k: row[k] for k in ("question_id", "question", "reference_answer")}
        out.append({"source": row["source"], "source_row": row["source_row"], "reason": "near_duplicate",
                    "detail": f"near duplicate of {near.kept} (kept){via}: estimated Jaccard {near.jaccard:.2f} "
                              f"of word {ngram}-grams",
                    "raw": json.dumps(raw, ensure_ascii=True, default=str)[:4096]})
    return pa.Table.from_pylist(out, schema=schemas.REJECTS)

"""The bank rows a sample is drawn from, marked, group of question buckets by group (`draw.py` drives it).

`marked_buckets` restricts a group's bank rows to the pool's questions of the same buckets and marks each with the
first exclusion rule that removes it and its seeded order key (`exclusions.mark_exclusions`). `Marked` asks the
marked rows two questions, the counts per level and mark and the first k per level (`first_per_level`), in this
process for a small partition or as Ray tasks, one per group, for a large one.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import coarsen, group_buckets
from adaptcot.common.runtime import run_groups
from adaptcot.grade import manifest
from adaptcot.pool import layout as pool_layout
from adaptcot.sample.distributions import LEVEL_NAMES
from adaptcot.sample.exclusions import mark_exclusions

BANK_COLUMNS = ["question_id", "domain", "student", "grader_id", "level", "difficulty_rank"]
GROUP_ROWS = 200_000  # bank rows one task marks (a few tens of MB)


def first_per_level(rows: pa.Table, quotas: dict[str, int]) -> pa.Table:
    """The first quotas[level] rows of each level in `_order` (rows marked excluded left out): what one block
    contributes to the draw."""
    rows = rows.filter(pc.is_null(rows["excluded"]))
    parts = [rows.slice(0, 0)]
    for level, k in quotas.items():
        if k:
            parts.append(rows.filter(pc.equal(rows["level"], level)).sort_by("_order").slice(0, k))
    return pa.concat_tables(parts)


def marked_buckets(bank_files: list[str], pool_files: list[str], domains: list[str] | None,
                   drop_ids: dict[str, pa.Array], seed: int) -> pa.Table:
    """The bank rows of some buckets whose questions are in the pool's same buckets, marked (`mark_exclusions`)."""
    rows = manifest.unique_rows(storage.dataset(bank_files, schemas.BANK).to_table(columns=BANK_COLUMNS),
                                ["question_id"])
    pool_ids = storage.dataset(pool_files, schemas.POOL).to_table(columns=["question_id"])["question_id"]
    return mark_exclusions(rows.filter(pc.is_in(rows["question_id"], value_set=pool_ids)), domains, drop_ids, seed)


def level_mark_counts(rows: pa.Table) -> pa.Table:
    return rows.group_by(["level", "excluded"]).aggregate([("question_id", "count")])


def _group_counts(**kwargs) -> pa.Table:
    return level_mark_counts(marked_buckets(**kwargs))


def _group_firsts(quotas: dict[str, int], **kwargs) -> pa.Table:
    return first_per_level(marked_buckets(**kwargs), quotas)


def _group_smallest(reason: str, k: int, **kwargs) -> pa.Table:
    return smallest_ids(marked_buckets(**kwargs), reason, k)


class Marked:
    """The marked bank rows of the questions in the pool, asked two questions: the counts per level and mark, and
    the first k per level. Question-local: a group of buckets (sized by bank rows) is marked alone, against the
    pool's same buckets. A small partition's marked rows are held here; a large one's are recomputed in Ray tasks
    per question (a group each), so no process holds the partition."""

    def __init__(self, bank_root: str, student: str, grader_id: str, pool_dir: str, domains: list[str] | None,
                 seed: int, drop_ids: dict[str, set[str]], on_ray: bool):
        stored = manifest.read_manifest(str(bank_root), student, grader_id)
        pool_buckets = pool_layout.files_by_bucket(pool_dir)
        bits = min([stored.bits] + [len(b) for b in pool_buckets][:1])  # they meet at the coarser buckets
        bank_files, pool_buckets = coarsen(stored.files_by_bucket("bank"), bits), coarsen(pool_buckets, bits)
        self.payloads = [{"bank_files": [f for b in group for f in bank_files[b]],
                          "pool_files": [f for b in group for f in pool_buckets.get(b, [])]}
                         for group in group_buckets(coarsen(stored.rows_by_bucket("bank"), bits), GROUP_ROWS)]
        self.marks = {"domains": domains, "seed": seed,
                      "drop_ids": {r: pa.array(sorted(ids), pa.string()) for r, ids in drop_ids.items()}}
        self.on_ray = on_ray
        if not on_ray:
            parts = [marked_buckets(**p, **self.marks) for p in self.payloads]
            self.rows = pa.concat_tables(parts) if parts else None

    def _each(self, fn, **extra) -> list[pa.Table]:
        return run_groups(fn, self.payloads, True, **self.marks, **extra)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(questions left per level, rows removed per rule)."""
        parts = self._each(_group_counts) if self.on_ray else [level_mark_counts(self.rows)] if self.rows else []
        groups = [(lv, reason, n) for t in parts for lv, reason, n in
                  zip(*(t[c].to_pylist() for c in ("level", "excluded", "question_id_count")))]
        available, excluded = {lv: 0 for lv in LEVEL_NAMES}, Counter()
        for level, reason, n in groups:
            if level not in available:
                raise schemas.SchemaError(f"bank rows with unknown level {level!r}")
            if reason is None:
                available[level] += n
            else:
                excluded[reason] += n
        return available, dict(excluded)

    def firsts(self, quotas: dict[str, int]) -> pa.Table:
        """Every question that can be among the first quotas[level] of its level: each group's own first ones."""
        parts = self._each(_group_firsts, quotas=quotas) if self.on_ray else \
            [first_per_level(self.rows, quotas)] if self.rows else []
        return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in BANK_COLUMNS})

    def first_ids(self, reason: str, k: int) -> list[str]:
        """The k smallest question ids marked `reason`: each group's k smallest, then the k smallest of those."""
        parts = self._each(_group_smallest, reason=reason, k=k) if self.on_ray else \
            [smallest_ids(self.rows, reason, k)] if self.rows else []
        return sorted(q for part in parts for q in part["question_id"].to_pylist())[:k]


def smallest_ids(rows: pa.Table, reason: str, k: int) -> pa.Table:
    marked = rows.filter(pc.equal(rows["excluded"], reason)).select(["question_id"])
    return marked.sort_by("question_id").slice(0, k)

"""The question bank: difficulty levels of many students over one pool, with their attempts kept beside it.

One partition per student and grader config (its layout, commits and manifest: `manifest.py`):

    bank/student=<slug>/grader=<gid>/bucket=<key>/part-*.parquet         one row per question (schema BANK)
    attempts/student=<slug>/grader=<gid>/bucket=<key>/part-*.parquet     one row per sample (schema ATTEMPTS)
    step_scores/student=<slug>/grader=<gid>/bucket=<key>/part-*.parquet  PRM scores of wrong samples (STEP_SCORES)
    manifests/student=<slug>/grader=<gid>/                               what is committed, with row counts
    graders/<grader_id>.json                                             the config that produced a grader id

Every part file is published whole (`storage`) and counts only once a commit record names it, so a killed run leaves
no half-stored batch. The root is a local directory or a URI (s3://, gs://). Reading one student's grades opens only
its partition's manifest and the files it names. `summary` and `compare` are the `adaptcot bank` commands.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import bits_for, bucket_keys
from adaptcot.common.lease import Lease
from adaptcot.common.schemas import LEVELS_EASIEST_FIRST
from adaptcot.grade import manifest
from adaptcot.grade.manifest import TABLES

# A partition of up to this many rows is finalized, listed and drawn from in this process; a larger one in Ray
# tasks, a group of question buckets each (Ray's start-up is not worth it below).
IN_PROCESS_MAX_ROWS = 1_000_000


def student_slug(name: str) -> str:
    """A partition-safe name: `Qwen/Qwen2.5-7B-Instruct` -> `Qwen--Qwen2.5-7B-Instruct`."""
    return manifest.slug(name)


def partition_dir(root: str | Path, table: str, student: str, gid: str) -> str:
    return manifest.partition_path(str(root), table, student, gid)


def add_rows(root: str | Path, table: str, student: str, gid: str, rows: pa.Table) -> pa.Table:
    """Store and commit rows of one table of a partition (`manifest.commit`); the manifest rows written. A new
    bank is laid out for about as many questions as `rows` holds (tests, tools; `adaptcot grade` sizes it by its
    pool)."""
    manifest.check_layout(str(root), create=True, bits=bits_for(rows.num_rows))
    return manifest.commit(str(root), student, gid, {table: rows})


def part_files(root: str | Path, table: str, student: str, gid: str) -> list[str]:
    """The committed part files of one table of a partition, from its manifest (nothing is listed)."""
    return manifest.read_manifest(str(root), student, gid).files(table)


def read_partition(root: str | Path, table: str, student: str, gid: str,
                   columns: list[str] | None = None) -> pa.Table:
    """One student's rows of one table, each key once (`manifest.unique_rows`), reading only that partition."""
    files, schema = part_files(root, table, student, gid), TABLES[table]
    keys = manifest.KEYS[table]
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    wanted = None if columns is None else list(dict.fromkeys(keys + columns))
    rows = manifest.unique_rows(storage.dataset(files, schema).to_table(columns=wanted), keys)
    return rows.select(columns) if columns else rows


def lease(root: str | Path, student: str, gid: str) -> Lease:
    """The lease a grader holds while it writes this partition (`common/lease.py`)."""
    return Lease(partition_dir(root, "leases", student, gid), f"bank partition {student} (grader {gid})")


def remove_uncommitted(root: str | Path, student: str, gid: str) -> int:
    """Delete what a killed run left uncommitted (`manifest.sweep`); call it holding the partition's lease."""
    return manifest.sweep(manifest.read_manifest(str(root), student, gid), student, gid)


def save_grader(root: str | Path, gid: str, description: dict) -> None:
    path = storage.join(str(root), "graders", f"{gid}.json")
    if not storage.exists(path):
        storage.write_text(path, json.dumps(description, indent=2, sort_keys=True))


def cut_points_path(root: str | Path, sid: str) -> str:
    """Where the cut points calibrated for scorer `sid` are kept (`grade/calibration.py`)."""
    return storage.join(str(root), "graders", f"cut_points-{sid}.json")


def grader_cut_points(root: str | Path, gid: str) -> list[float] | None:
    """The cut points a grader cut wrong levels at: given in its config, or its scorer's calibrated record; None for
    pass_rate grading or an unknown grader."""
    path = storage.join(str(root), "graders", f"{gid}.json")
    if not storage.exists(path):
        return None
    description = json.loads(storage.read_text(path))
    grader = description.get("grader", {})
    if grader.get("mode") != "prm":
        return None
    if grader.get("thresholds") != "calibrated":
        return list(grader.get("thresholds"))
    record = cut_points_path(root, description.get("scorer_id", ""))
    return json.loads(storage.read_text(record))["cut_points"] if storage.exists(record) else None


def partitions(root: str | Path) -> list[tuple[str, str]]:
    """(student slug, grader id) of every bank partition."""
    base = storage.join(str(root), "manifests")
    found = []
    for student_dir in storage.list_dirs(base):
        if student_dir.startswith("student="):
            for grader_dir in storage.list_dirs(storage.join(base, student_dir)):
                if grader_dir.startswith("grader="):
                    found.append((student_dir.split("=", 1)[1], grader_dir.split("=", 1)[1]))
    return found


def _read_slug(root: str | Path, slug: str, gid: str, columns: list[str]) -> pa.Table:
    return read_partition(root, "bank", slug, gid, columns)


def level_counts(files: list[str]) -> dict[str, int]:
    """Questions per level of some bank part files, easiest level first, streaming (memory does not grow)."""
    counts: Counter = Counter()
    for batch in storage.dataset(files, schemas.BANK).scanner(columns=["level"]).to_batches():
        counts.update({c["values"]: c["counts"] for c in pc.value_counts(batch.column(0)).to_pylist()})
    return {lv.value: counts.get(lv.value, 0) for lv in LEVELS_EASIEST_FIRST}


def summary(root: str | Path) -> list[dict]:
    """Level histogram per (student, grader), levels easiest first."""
    out = []
    for slug, gid in partitions(root):
        files = part_files(root, "bank", slug, gid)
        first = storage.dataset(files[:1], schemas.BANK).head(1, columns=["student"]) if files else None
        levels = level_counts(files)
        out.append({"student": first["student"][0].as_py() if first is not None and first.num_rows else slug,
                    "grader_id": gid, "questions": sum(levels.values()), "levels": levels,
                    "cut_points": grader_cut_points(root, gid)})
    return out


def find_partition(root: str | Path, name: str) -> tuple[str, str]:
    """A student name or slug, optionally `NAME@GRADER_ID`, to its (slug, grader id)."""
    name, _, gid = name.partition("@")
    slug = student_slug(name)
    matches = [(s, g) for s, g in partitions(root) if s == slug and (not gid or g == gid)]
    if len(matches) != 1:
        known = ", ".join(f"{s}@{g}" for s, g in partitions(root)) or "none"
        what = "no" if not matches else "several"
        raise KeyError(f"{what} bank partitions for {name!r}{'@' + gid if gid else ''}; known: {known}")
    return matches[0]


def student_levels(root: str | Path, name: str, question_ids: list[str] | None = None) -> dict[str, str]:
    """question_id -> level of one student (NAME or NAME@GRADER_ID, as `adaptcot bank summary` lists them); with
    `question_ids`, of those only, reading only their buckets (a benchmark's few hundred, not the partition)."""
    slug, gid = find_partition(root, name)
    if question_ids is None:
        table = _read_slug(root, slug, gid, ["question_id", "level"])
    else:
        table = levels_of(root, slug, gid, pa.array(sorted(set(question_ids)), pa.string()))
    return dict(zip(table["question_id"].to_pylist(), table["level"].to_pylist()))


def levels_of(root: str | Path, student: str, gid: str, question_ids: pa.Array) -> pa.Table:
    """(question_id, level) of these questions in one partition: only the files of their buckets are read."""
    stored = manifest.read_manifest(str(root), student, gid)
    graded = stored.row_count("bank") and len(question_ids)
    files = stored.files("bank", set(bucket_keys(question_ids, stored.bits).to_pylist())) if graded else []
    if not files:
        return pa.table({"question_id": pa.array([], pa.string()), "level": pa.array([], pa.string())})
    rows = storage.dataset(files, schemas.BANK).to_table(columns=["question_id", "level"],
                                                         filter=pc.field("question_id").isin(question_ids))
    return manifest.unique_rows(rows, ["question_id"])


def compare(root: str | Path, a: str, b: str) -> dict:
    """How A's levels map to B's on the questions both graded: counts[a_level][b_level] (cross-model transfer)."""
    ta = _read_slug(root, *find_partition(root, a), ["question_id", "level"])
    tb = _read_slug(root, *find_partition(root, b), ["question_id", "level"])
    joined = ta.join(tb, "question_id", join_type="inner", left_suffix="_a", right_suffix="_b")
    names = [lv.value for lv in LEVELS_EASIEST_FIRST]
    counts = {la: {lb: 0 for lb in names} for la in names}
    for la, lb in zip(joined["level_a"].to_pylist(), joined["level_b"].to_pylist()):
        counts[la][lb] += 1
    same = sum(counts[lv][lv] for lv in names)
    cuts = {"a": grader_cut_points(root, find_partition(root, a)[1]),
            "b": grader_cut_points(root, find_partition(root, b)[1])}
    return {"a": a, "b": b, "shared_questions": joined.num_rows, "same_level": same, "counts": counts,
            "cut_points": cuts, "same_cut_points": cuts["a"] == cuts["b"]}


def format_summary(rows: list[dict]) -> str:
    names = [lv.value for lv in LEVELS_EASIEST_FIRST]
    lines = ["student".ljust(32) + "grader".ljust(14) + "".join(n.rjust(15) for n in ["questions", *names])
             + "  cut points"]
    for r in rows:
        cells = [r["questions"], *(r["levels"][n] for n in names)]
        cuts = "/".join(f"{c:.3f}" for c in r.get("cut_points") or []) or "-"
        lines.append(r["student"][:31].ljust(32) + r["grader_id"].ljust(14) + "".join(str(c).rjust(15) for c in cells)
                     + f"  {cuts}")
    return "\n".join(lines)


def format_compare(result: dict) -> str:
    names = [lv.value for lv in LEVELS_EASIEST_FIRST]
    lines = [f"rows: {result['a']} level, columns: {result['b']} level; {result['shared_questions']} shared "
             f"questions, {result['same_level']} at the same level", " " * 15 + "".join(n.rjust(15) for n in names)]
    for la in names:
        lines.append(la.ljust(15) + "".join(str(result["counts"][la][lb]).rjust(15) for lb in names))
    if not result.get("same_cut_points", True):
        cuts = result["cut_points"]
        lines.append(f"warning: the two were cut at different points ({cuts['a']} vs {cuts['b']}): their wrong levels "
                     "do not mean the same; grade both with one calibrated scorer (thresholds: calibrated)")
    return "\n".join(lines)

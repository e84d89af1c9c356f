"""The question bank: difficulty levels of many students over one pool, with their attempts kept beside it.

Layout under a bank root (Hive-style partitions, one directory per student and grader config):

    bank/student=<slug>/grader=<grader_id>/part-*.parquet         one row per question (schema BANK)
    attempts/student=<slug>/grader=<grader_id>/part-*.parquet     one row per sample (schema ATTEMPTS)
    step_scores/student=<slug>/grader=<grader_id>/part-*.parquet  PRM scores of wrong samples (schema STEP_SCORES)
    graders/<grader_id>.json                                      the config that produced a grader id

Every part file is published whole (`storage`: a temporary name and a rename on disk, one PUT on an object store),
so a killed run leaves whole files only. The root is a local directory or a URI (s3://, gs://). Reading one
student's grades opens only its partition directory. `summary` and `compare` are the `adaptcot bank` commands.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common import schemas, storage
from adaptcot.common.schemas import LEVELS_EASIEST_FIRST

TABLES = {"bank": schemas.BANK, "attempts": schemas.ATTEMPTS, "step_scores": schemas.STEP_SCORES}
# A partition of up to this many rows is checked, finalized and drawn from in one process; a larger one on Ray Data
# (Ray Data's joins and group-bys cost ~10 s of start-up; one process cannot hold tens of millions of rows).
IN_PROCESS_MAX_ROWS = 1_000_000


def student_slug(name: str) -> str:
    """A partition-safe name: `Qwen/Qwen2.5-7B-Instruct` -> `Qwen--Qwen2.5-7B-Instruct`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-") or "student"


def partition_dir(root: str | Path, table: str, student: str, gid: str) -> str:
    return storage.join(str(root), table, f"student={student_slug(student)}", f"grader={gid}")


def write_part(table: pa.Table, directory: str | Path, schema: pa.Schema, name: str | None = None) -> str | None:
    """Write one part file, published whole; None for an empty table."""
    if table.num_rows == 0:
        return None
    final = storage.join(str(directory), name or f"part-{uuid.uuid4().hex}.parquet")
    for f in schema:  # a column added to the schema since a writer was written stays null (never a required one)
        if f.nullable and f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    storage.write_table(table.select(schema.names).cast(schema), final)
    return final


def part_files(root: str | Path, table: str, student: str, gid: str) -> list[str]:
    return storage.list_files(partition_dir(root, table, student, gid), "part-*.parquet")


def read_partition(root: str | Path, table: str, student: str, gid: str,
                   columns: list[str] | None = None) -> pa.Table:
    """One student's rows of one table, reading only that partition's files."""
    files, schema = part_files(root, table, student, gid), TABLES[table]
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return storage.dataset(files, schema).to_table(columns=columns)


def remove_uncommitted(root: str | Path, student: str, gid: str) -> int:
    """Delete what a killed run left half-done: temporary files (local disks only: an object store never shows
    half-written objects), and step-score parts whose attempts part (the commit mark, written second under the
    same name) never appeared. Returns how many files were removed."""
    committed = {storage.name(p) for p in part_files(root, "attempts", student, gid)}
    removed = 0
    for table in TABLES:
        directory = partition_dir(root, table, student, gid)
        leftovers = [p for p in storage.list_files(directory, ".*.tmp", hidden=True)]
        orphans = [p for p in part_files(root, table, student, gid)
                   if table == "step_scores" and storage.name(p) not in committed]
        for path in leftovers + orphans:
            storage.remove(path)
            removed += 1
    return removed


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
    base = storage.join(str(root), "bank")
    found = []
    for student_dir in storage.list_dirs(base):
        if student_dir.startswith("student="):
            for grader_dir in storage.list_dirs(storage.join(base, student_dir)):
                if grader_dir.startswith("grader="):
                    found.append((student_dir.split("=", 1)[1], grader_dir.split("=", 1)[1]))
    return found


def _read_slug(root: str | Path, slug: str, gid: str, columns: list[str]) -> pa.Table:
    directory = storage.join(str(root), "bank", f"student={slug}", f"grader={gid}")
    return storage.dataset(storage.list_files(directory, "part-*.parquet"), schemas.BANK).to_table(columns=columns)


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
        files = storage.list_files(storage.join(str(root), "bank", f"student={slug}", f"grader={gid}"),
                                   "part-*.parquet")
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


def student_levels(root: str | Path, name: str) -> dict[str, str]:
    """question_id -> level of one student (NAME or NAME@GRADER_ID, as `adaptcot bank summary` lists them)."""
    table = _read_slug(root, *find_partition(root, name), ["question_id", "level"])
    return dict(zip(table["question_id"].to_pylist(), table["level"].to_pylist()))


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

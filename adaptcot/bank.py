"""The question bank: difficulty levels of many students over one pool, with their attempts kept beside it.

Layout under a bank root (Hive-style partitions, one directory per student and grader config):

    bank/student=<slug>/grader=<grader_id>/part-*.parquet         one row per question (schema BANK)
    attempts/student=<slug>/grader=<grader_id>/part-*.parquet     one row per sample (schema ATTEMPTS)
    step_scores/student=<slug>/grader=<grader_id>/part-*.parquet  PRM scores of wrong samples (schema STEP_SCORES)
    graders/<grader_id>.json                                      the config that produced a grader id

Every part file is written to a temporary name and renamed, so a killed run leaves whole files only. Reading one
student's grades opens only its partition directory. `summary` and `compare` are the `adaptcot bank` commands.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from adaptcot import schemas
from adaptcot.schemas import LEVELS_EASIEST_FIRST

TABLES = {"bank": schemas.BANK, "attempts": schemas.ATTEMPTS, "step_scores": schemas.STEP_SCORES}


def student_slug(name: str) -> str:
    """A partition-safe name: `Qwen/Qwen2.5-7B-Instruct` -> `Qwen--Qwen2.5-7B-Instruct`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-") or "student"


def partition_dir(root: str | Path, table: str, student: str, gid: str) -> Path:
    return Path(root) / table / f"student={student_slug(student)}" / f"grader={gid}"


def write_part(table: pa.Table, directory: Path, schema: pa.Schema, name: str | None = None) -> Path | None:
    """Write one part file atomically (temporary name, then rename); None for an empty table."""
    if table.num_rows == 0:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / (name or f"part-{uuid.uuid4().hex}.parquet")
    tmp = directory / f".{final.name}.tmp"
    pq.write_table(table.select(schema.names).cast(schema), tmp)
    os.replace(tmp, final)
    return final


def read_partition(root: str | Path, table: str, student: str, gid: str,
                   columns: list[str] | None = None) -> pa.Table:
    """One student's rows of one table, reading only that partition's files."""
    directory = partition_dir(root, table, student, gid)
    files = sorted(str(p) for p in directory.glob("part-*.parquet")) if directory.exists() else []
    schema = TABLES[table]
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return pads.dataset(files, schema=schema, format="parquet").to_table(columns=columns)


def remove_uncommitted(root: str | Path, student: str, gid: str) -> int:
    """Delete what a killed run left half-done: temporary files, and step-score parts whose attempts part (the
    commit mark, written second under the same name) never appeared. Returns how many files were removed."""
    attempts_dir = partition_dir(root, "attempts", student, gid)
    committed = {p.name for p in attempts_dir.glob("part-*.parquet")} if attempts_dir.exists() else set()
    removed = 0
    for table in TABLES:
        directory = partition_dir(root, table, student, gid)
        if not directory.exists():
            continue
        for path in directory.iterdir():
            orphan = table == "step_scores" and path.name not in committed
            if path.name.endswith(".tmp") or orphan:
                path.unlink()
                removed += 1
    return removed


def save_grader(root: str | Path, gid: str, description: dict) -> None:
    path = Path(root) / "graders" / f"{gid}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(description, indent=2, sort_keys=True))
        os.replace(tmp, path)


def partitions(root: str | Path) -> list[tuple[str, str]]:
    """(student slug, grader id) of every bank partition."""
    base = Path(root) / "bank"
    found = []
    for student_dir in sorted(base.glob("student=*")):
        for grader_dir in sorted(student_dir.glob("grader=*")):
            found.append((student_dir.name.split("=", 1)[1], grader_dir.name.split("=", 1)[1]))
    return found


def _read_slug(root: str | Path, slug: str, gid: str, columns: list[str]) -> pa.Table:
    directory = Path(root) / "bank" / f"student={slug}" / f"grader={gid}"
    files = sorted(str(p) for p in directory.glob("part-*.parquet"))
    return pads.dataset(files, schema=schemas.BANK, format="parquet").to_table(columns=columns)


def summary(root: str | Path) -> list[dict]:
    """Level histogram per (student, grader), levels easiest first."""
    out = []
    for slug, gid in partitions(root):
        t = _read_slug(root, slug, gid, ["student", "level"])
        counts = Counter(t["level"].to_pylist())
        out.append({"student": t["student"][0].as_py() if t.num_rows else slug, "grader_id": gid,
                    "questions": t.num_rows,
                    "levels": {lv.value: counts.get(lv.value, 0) for lv in LEVELS_EASIEST_FIRST}})
    return out


def _resolve(root: str | Path, name: str) -> tuple[str, str]:
    """A student name or slug, optionally `NAME@GRADER_ID`, to its (slug, grader id)."""
    name, _, gid = name.partition("@")
    slug = student_slug(name)
    matches = [(s, g) for s, g in partitions(root) if s == slug and (not gid or g == gid)]
    if len(matches) != 1:
        known = ", ".join(f"{s}@{g}" for s, g in partitions(root)) or "none"
        what = "no" if not matches else "several"
        raise KeyError(f"{what} bank partitions for {name!r}{'@' + gid if gid else ''}; known: {known}")
    return matches[0]


def compare(root: str | Path, a: str, b: str) -> dict:
    """How A's levels map to B's on the questions both graded: counts[a_level][b_level] (cross-model transfer)."""
    ta = _read_slug(root, *_resolve(root, a), ["question_id", "level"])
    tb = _read_slug(root, *_resolve(root, b), ["question_id", "level"])
    joined = ta.join(tb, "question_id", join_type="inner", left_suffix="_a", right_suffix="_b")
    names = [lv.value for lv in LEVELS_EASIEST_FIRST]
    counts = {la: {lb: 0 for lb in names} for la in names}
    for la, lb in zip(joined["level_a"].to_pylist(), joined["level_b"].to_pylist()):
        counts[la][lb] += 1
    same = sum(counts[lv][lv] for lv in names)
    return {"a": a, "b": b, "shared_questions": joined.num_rows, "same_level": same, "counts": counts}


def format_summary(rows: list[dict]) -> str:
    names = [lv.value for lv in LEVELS_EASIEST_FIRST]
    lines = ["student".ljust(32) + "grader".ljust(14) + "".join(n.rjust(15) for n in ["questions", *names])]
    for r in rows:
        cells = [r["questions"], *(r["levels"][n] for n in names)]
        lines.append(r["student"][:31].ljust(32) + r["grader_id"].ljust(14) + "".join(str(c).rjust(15) for c in cells))
    return "\n".join(lines)


def format_compare(result: dict) -> str:
    names = [lv.value for lv in LEVELS_EASIEST_FIRST]
    lines = [f"rows: {result['a']} level, columns: {result['b']} level; {result['shared_questions']} shared "
             f"questions, {result['same_level']} at the same level", " " * 15 + "".join(n.rjust(15) for n in names)]
    for la in names:
        lines.append(la.ljust(15) + "".join(str(result["counts"][la][lb]).rjust(15) for lb in names))
    return "\n".join(lines)

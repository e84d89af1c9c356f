"""`adaptcot bank migrate BANK`: rewrite a bank of the first layout (part files directly in each partition's
directory, an attempts part the commit mark of the step-score part of the same name) into question buckets with
manifests (`manifest.py`), in place.

Each old part file is committed as it is (attempts with their step scores), so memory holds one file; the first
finalize afterwards compacts the small parts. The new files and commit records are written first, `layout.json`
next, and the old files are deleted last: a migration killed before `layout.json` is redone from the start (the new
parts are named by their content, so nothing is stored twice), one killed after it only has old files left to
delete, which a rerun does. A pool of the first layout is migrated by `adaptcot pool migrate` (`pool/layout.py`).
"""

from __future__ import annotations

import json

from adaptcot.common import schemas, storage
from adaptcot.common.buckets import bits_for
from adaptcot.grade import manifest
from adaptcot.grade.manifest import TABLES

OLD_TABLES = ("attempts", "step_scores", "bank")


def _old_partitions(root: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(student dir, grader dir) -> table -> its old part files (those not under a bucket directory)."""
    found: dict = {}
    for table in OLD_TABLES:
        for path in storage.list_files(storage.join(root, table), "part-*.parquet", recursive=True):
            if "/bucket=" in path:
                continue
            student_dir, grader_dir = path.split("/")[-3:-1]
            if student_dir.startswith("student=") and grader_dir.startswith("grader="):
                found.setdefault((student_dir[8:], grader_dir[7:]), {}).setdefault(table, []).append(path)
    return found


def migrate_bank(root: str) -> dict:
    """Migrate the bank at `root` in place; what was moved (partitions, rows per table, old files removed)."""
    root = str(root)
    old = _old_partitions(root)
    moved = {t: 0 for t in OLD_TABLES}
    layout = storage.join(root, "layout.json")
    if not storage.exists(layout):
        largest = max([storage.row_count(files.get("attempts", [])) for files in old.values()] or [0])
        bits = bits_for(largest)
        for (slug, gid), files in old.items():
            scores = {storage.name(p): p for p in files.get("step_scores", [])}
            for path in files.get("attempts", []):  # an attempts part commits the step scores of its name
                tables = {"attempts": storage.read_table(path, schema=None)}
                if storage.name(path) in scores:
                    tables["step_scores"] = storage.read_table(scores[storage.name(path)])
                _commit(root, slug, gid, tables, bits, moved)
            for path in files.get("bank", []):
                _commit(root, slug, gid, {"bank": storage.read_table(path)}, bits, moved)
        storage.write_text(layout, json.dumps({"layout": manifest.LAYOUT_VERSION, "bucket_bits": bits,
                                               "schema_version": schemas.SCHEMA_VERSION}))
        manifest.layout_bits.cache_clear()
    removed = 0
    for files in old.values():
        for paths in files.values():
            for path in paths:
                storage.remove(path)
                removed += 1
    return {"partitions": len(old), "rows": moved, "old_files_removed": removed}


def _commit(root: str, slug: str, gid: str, tables: dict, bits: int, moved: dict) -> None:
    tables = {t: manifest.conform(rows, TABLES[t]) for t, rows in tables.items()}
    manifest.commit(root, slug, gid, tables, bits)
    for t, rows in tables.items():
        moved[t] += rows.num_rows

"""Paths and URIs: the same calls on a local disk and on an S3-compatible server the tests start (moto)."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from adaptcot.common import schemas, storage
from adaptcot.grade import bank
from adaptcot.pool.importer import PoolImportConfig, import_pool, read_pool, read_rejects
from adaptcot.teach import journal as teacher_journal


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("bucket") + "/root"


def test_join_keeps_uris_whole():
    assert storage.join("s3://b/runs", "r1", "bank") == "s3://b/runs/r1/bank"
    assert storage.join("runs/local", "pool") == "runs/local/pool"
    assert storage.join("s3://b/runs", "/abs/models") == "/abs/models" and storage.join("x", "gs://b/y") == "gs://b/y"
    assert storage.parent("s3://b/runs/r1") == "s3://b/runs" and storage.name("s3://b/runs/r1/") == "r1"
    assert storage.is_remote("s3://b") and not storage.is_remote("/tmp/x") and not storage.is_remote("file:///x")


def test_files_tables_and_listings(root):
    storage.write_text(storage.join(root, "a", "x.json"), json.dumps({"k": 1}))
    storage.write_table(pa.table({"v": [1, 2]}), storage.join(root, "a", "part-1.parquet"))
    storage.write_table(pa.table({"v": [3]}), storage.join(root, "a", "part-2.parquet"))
    storage.write_text(storage.join(root, "a", "sub", "deep.txt"), "deep")
    assert json.loads(storage.read_text(storage.join(root, "a", "x.json"))) == {"k": 1}
    assert [storage.name(p) for p in storage.list_files(storage.join(root, "a"), "part-*.parquet")] == [
        "part-1.parquet", "part-2.parquet"]
    assert storage.read_table(storage.join(root, "a"))["v"].to_pylist() == [1, 2, 3]  # a directory of parts
    assert storage.list_dirs(root) == ["a"] and storage.list_dirs(storage.join(root, "a")) == ["sub"]
    assert storage.list_files(storage.join(root, "a"), "*.txt", recursive=True)[0].endswith("a/sub/deep.txt")
    assert storage.is_dir(storage.join(root, "a")) and not storage.exists(storage.join(root, "nope"))
    assert storage.list_files(storage.join(root, "nope")) == [] and storage.list_dirs(storage.join(root, "no")) == []
    storage.remove_tree(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "x.json"))


def test_a_write_that_fails_midway_publishes_nothing(root):
    path = storage.join(root, "half.parquet")

    def broken(fs, target):
        with fs.open_output_stream(target) as f:
            f.write(b"PAR1 half a file")
            raise KeyboardInterrupt  # the process is stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        storage._publish(path, broken)
    assert not storage.exists(path) and storage.list_files(root, hidden=True) == []


def test_a_pool_and_a_bank_live_in_a_bucket(bucket, tmp_path):
    src = tmp_path / "math.jsonl"
    src.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                           for i in range(5)) + "not json\n")
    storage.upload(src, f"{bucket}/raw/math.jsonl")  # the source is read from the bucket too
    cfg = PoolImportConfig(sources=[f"{bucket}/raw/math.jsonl"], domain="math", preset="gsm8k", out=f"{bucket}/pool")
    assert import_pool(cfg).imported == 5
    assert import_pool(cfg).already_in_pool == 5  # a rerun against the bucket adds nothing
    pool = read_pool(f"{bucket}/pool")
    assert pool.num_rows == 5 == len(set(pool["question_id"].to_pylist()))
    assert read_rejects(f"{bucket}/pool")["reason"].to_pylist() == ["malformed_row"]
    rows = [{"question_id": q, "domain": "math", "student": "org/s", "grader_id": "g", "level": "easy",
             "difficulty_rank": 0, "pass_rate": 1.0, "num_samples": 1, "prm_score": None, "attempts_ref": None}
            for q in pool["question_id"].to_pylist()]
    bank.add_rows(f"{bucket}/bank", "bank", "org/s", "g", pa.Table.from_pylist(rows, schemas.BANK))
    assert bank.summary(f"{bucket}/bank") == [{"student": "org/s", "grader_id": "g", "questions": 5,
                                              "levels": {lv.value: 5 if lv.value == "easy" else 0
                                                         for lv in schemas.LEVELS_EASIEST_FIRST},
                                              "cut_points": None}]  # no grader description stored in this bucket


def test_the_teacher_journal_on_an_object_store_is_written_in_chunks(bucket):
    out = f"{bucket}/teach"
    journal = teacher_journal.Journal(out)
    for i in range(teacher_journal.JOURNAL_CHUNK_ROWS + 6):
        journal.write({"key": f"k{i}", "question_id": f"q{i}", "error": None})
    # Killed here: the first full chunk is stored, the last 6 responses are not (and will be asked again).
    assert len(teacher_journal.stored_rows(out)) == teacher_journal.JOURNAL_CHUNK_ROWS
    journal.close()
    assert len(teacher_journal.stored_rows(out)) == teacher_journal.JOURNAL_CHUNK_ROWS + 6


def test_a_local_journal_keeps_every_line_it_was_told(tmp_path):
    journal = teacher_journal.Journal(str(tmp_path))
    journal.write({"key": "k", "question_id": "q", "error": None})
    assert list(teacher_journal.stored_rows(str(tmp_path))) == ["k"]  # before close: flushed line by line
    journal.close()
    assert [p.name.endswith(".jsonl") for p in Path(tmp_path, "journal").iterdir()] == [True]

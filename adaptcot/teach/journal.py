"""What the teacher has stored, and what it still has to ask: CoT keys, journal rows, the journal, the to-do.

Every response is keyed by (question, teacher, sampling key, sample index) and appended to the journal the moment it
arrives (teacher.py's docstring says how that makes reruns pay nothing twice); online, batch and in-cluster runs all
write the same rows (`cot_row`) and read the same keys back (`stored_rows`, `todo_requests`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from adaptcot.common import schemas, storage
from adaptcot.grade.answering import build_messages
from adaptcot.teach.client import ChatResult
from adaptcot.teach.config import TeacherConfig


@dataclass
class TeachReport:
    questions: int = 0
    requests_todo: int = 0
    received: int = 0
    failed: int = 0
    retries: int = 0
    cost_usd: float | None = 0.0  # None: the teacher's price is unknown
    stored: int = 0
    possibly_billed: int = 0  # attempts that timed out or were cut once sent: the provider may have billed them
    unsaved_file: str | None = None  # answers the journal could not take (see `teach_endpoint`)
    capped: str | None = None  # why the run stopped sending (teacher.max_usd)

    def add_cost(self, usd: float | None) -> None:
        self.cost_usd = None if usd is None or self.cost_usd is None else self.cost_usd + usd

    def lines(self) -> list[str]:
        billed = (f"; {self.possibly_billed} attempts timed out or were cut once sent (possibly billed, not in the "
                  f"estimate)" if self.possibly_billed else "")
        cost = "cost unknown (no price)" if self.cost_usd is None else f"${self.cost_usd:.4f} estimated this run"
        return [f"teacher: {self.questions} questions, {self.requests_todo} requests to make, {self.received} "
                f"answered ({self.failed} failed after retries, {self.retries} retries), "
                f"{cost}; {self.stored} CoTs stored in all{billed}"] + ([self.capped] if self.capped else [])


def request_key(question_id: str, teacher: str, sampling_key: str, sample_index: int) -> str:
    return f"{question_id}|{teacher}|{sampling_key}|{sample_index}"


def cot_row(sample: dict, cfg: TeacherConfig, skey: str, index: int, result: ChatResult) -> dict:
    return {"key": request_key(sample["question_id"], cfg.name, skey, index), "question_id": sample["question_id"],
            "domain": sample["domain"], "teacher": cfg.name, "sampling_key": skey, "sample_index": index,
            "level": sample.get("level"), "reasoning": result.reasoning, "answer_text": result.answer_text,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason, "cost_usd": cfg.cost(result.prompt_tokens, result.completion_tokens),
            "error": result.error, "possibly_billed": result.possibly_billed}


# --- What is stored -----------------------------------------------------------------------------------------------
JOURNAL_CHUNK_ROWS, JOURNAL_CHUNK_SECONDS = 64, 10.0


class Journal:
    """Where endpoint responses go as they arrive: one JSON line each. On a local disk, one file, each line written
    and fsynced before `write` returns (a killed process or a lost machine loses nothing it was told); on an object
    store, chunk objects (each one fsynced by `storage` before it is published)."""

    def __init__(self, out: str):
        self.base, self.remote = storage.join(out, "journal", uuid.uuid4().hex), storage.is_remote(out)
        self.lines, self.chunks, self.last_flush = [], 0, time.monotonic()
        if not self.remote:
            storage.makedirs(storage.parent(self.base))
            self.file = open(f"{self.base}.jsonl", "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        if not self.remote:
            self.file.write(line)
            self.file.flush()
            os.fsync(self.file.fileno())
            return
        self.lines.append(line)
        if len(self.lines) >= JOURNAL_CHUNK_ROWS or time.monotonic() - self.last_flush > JOURNAL_CHUNK_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            storage.write_text(f"{self.base}-{self.chunks:06d}.jsonl", "".join(self.lines))
            self.lines, self.chunks = [], self.chunks + 1
        self.last_flush = time.monotonic()

    def close(self) -> None:
        if self.remote:
            self.flush()
        else:
            self.file.close()


def journal_rows(out: str) -> Iterator[dict]:
    for path in storage.list_files(storage.join(out, "journal"), "*.jsonl"):
        for line in storage.read_bytes(path).splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue  # the last line of a killed run may be half-written: it was not stored
    for path in storage.list_files(storage.join(out, "parts"), "part-*.parquet"):
        yield from storage.read_table(path).to_pylist()


def stored_rows(out: str | Path) -> dict[str, dict]:
    """One row per key: the first answer stored for it (failures only where nothing better exists)."""
    rows: dict[str, dict] = {}
    for row in journal_rows(str(out)):
        if row["key"] not in rows or (rows[row["key"]].get("error") and not row.get("error")):
            rows[row["key"]] = row
    return rows


def collect(out: str | Path) -> pa.Table:
    """The stored CoTs as a `teacher_cots` table (verdict columns empty until the filter runs)."""
    rows = [r for r in stored_rows(out).values()]
    empty = {"verdict": None, "correct": None, "verify_detail": None, "drop_reason": None}
    table = pa.Table.from_pylist([{**empty, **r} for r in rows]) if rows else schemas.TEACHER_COTS.empty_table()
    return table.select(schemas.TEACHER_COTS.names).cast(schemas.TEACHER_COTS)


def todo_requests(samples: pa.Table, cfg: TeacherConfig, out: str) -> list[tuple[str, dict, int]]:
    """(key, sample row, sample index) for every CoT not stored yet (stored failures are asked again)."""
    done = {k for k, row in stored_rows(out).items() if not row.get("error")}
    skey = cfg.sampling_key()
    todo = []
    for sample in samples.to_pylist():
        for index in range(cfg.samples):
            key = request_key(sample["question_id"], cfg.name, skey, index)
            if key not in done:
                todo.append((key, sample, index))
    return todo


def student_row(sample: dict) -> dict:
    return {**sample, "tests_json": schemas.tests_to_json(sample.get("tests"))}


def request_bodies(todo: list[tuple[str, dict, int]], cfg: TeacherConfig) -> Iterator[tuple[str, dict]]:
    """(key, chat request body without the model) per to-do entry, lazily: what online and batch modes send."""
    prompts = cfg.prompt_config()
    params = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
              "max_tokens": cfg.sampling.max_tokens}
    return ((key, {"messages": build_messages(student_row(sample), prompts), **params}) for key, sample, _ in todo)

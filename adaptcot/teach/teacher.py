"""Teacher CoT generation: k long CoTs per sampled question, from an API endpoint or an in-cluster vLLM model.

    samples.parquet -> todo (question x k, minus what is already stored) -> teacher -> journal -> cots table

**No double pay.** Every response is keyed by (question, teacher, sampling key, sample index) and appended to a
journal the moment it arrives (`<out>/journal/*.jsonl` for endpoints, one line flushed per response;
`<out>/parts/*.parquet` for the in-cluster model, one part per finished block). A rerun reads the stored keys first
and requests only the rest, so a run killed at any point repeats at most the requests that were in flight, never
one whose answer was stored; `collect` keeps one row per key, so nothing is stored twice. `<out>` may be a cloud
URI: object stores cannot append, so the endpoint journal is written there as chunk objects, one every
`JOURNAL_CHUNK_ROWS` responses or `JOURNAL_CHUNK_SECONDS` seconds, and a kill loses (and later re-asks) at most
that last chunk. A request that failed
after all its retries is journaled with its error and asked again by the next run (failures are not billed).

- `endpoint`: any OpenAI-compatible chat endpoint (DeepSeek, OpenAI, vLLM or SGLang servers) through
  `client.ChatClient`, from the driver: one process keeps hundreds of requests in flight.
- `vllm`: an in-cluster model through `ray.data.llm` (the same processor as student answering).
The teacher sees the student's prompts (`grade/answering.py::build_messages`), so its CoTs answer what the student
is asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pydantic import Field, model_validator

from adaptcot.common import schemas, storage
from adaptcot.common.lease import Lease
from adaptcot.common.settings import Strict
from adaptcot.common.terminal import bar
from adaptcot.grade.answering import CODE_PROMPT, MATH_PROMPT, SamplingConfig, StudentConfig, build_messages
from adaptcot.teach.client import ChatClient, ChatResult, EndpointConfig, StoreError, split_reasoning


class PricesConfig(Strict):
    input_usd_per_mtok: float = Field(default=0.0, ge=0)
    output_usd_per_mtok: float = Field(default=0.0, ge=0)  # reasoning tokens are billed as output

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input_usd_per_mtok
                + (completion_tokens or 0) * self.output_usd_per_mtok) / 1e6


class TeacherConfig(Strict):
    name: str
    samples: int = Field(default=1, ge=1)  # k CoTs per question
    sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=0.95, max_tokens=16384)
    math_prompt: str = MATH_PROMPT
    code_prompt: str = CODE_PROMPT
    system_prompt: str | None = None
    prices: PricesConfig = PricesConfig()
    endpoint: EndpointConfig | None = None
    vllm: StudentConfig | None = None  # in-cluster: model, engine, resources (its sampling and prompts are ignored)

    @model_validator(mode="after")
    def _one_backend(self):
        if (self.endpoint is None) == (self.vllm is None):
            raise ValueError("set exactly one of teacher.endpoint (an API) or teacher.vllm (an in-cluster model)")
        if self.endpoint is not None and self.sampling.vllm_extra():
            raise ValueError(f"teacher.sampling.{next(iter(self.sampling.vllm_extra()))}: vLLM sampling fields reach "
                             "an in-cluster teacher (teacher.vllm) only; an API takes its own in endpoint.extra_body")
        return self

    def sampling_key(self) -> str:
        """What changes the CoTs a request returns: the model, its prompts and its sampling parameters."""
        model = self.endpoint.model if self.endpoint else self.vllm.model
        spec = {"model": model, "sampling": self.sampling.model_dump(), "math_prompt": self.math_prompt,
                "code_prompt": self.code_prompt, "system_prompt": self.system_prompt,
                "extra_body": self.endpoint.extra_body if self.endpoint else None}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def prompt_config(self) -> StudentConfig:
        """The teacher's prompts in the form `build_messages` takes."""
        return StudentConfig(model=self.name, math_prompt=self.math_prompt, code_prompt=self.code_prompt,
                             system_prompt=self.system_prompt)


@dataclass
class TeachReport:
    questions: int = 0
    requests_todo: int = 0
    received: int = 0
    failed: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    stored: int = 0
    possibly_billed: int = 0  # attempts that timed out or were cut once sent: the provider may have billed them
    unsaved_file: str | None = None  # answers the journal could not take (see `teach_endpoint`)

    def lines(self) -> list[str]:
        billed = (f"; {self.possibly_billed} attempts timed out or were cut once sent (possibly billed, not in the "
                  f"estimate)" if self.possibly_billed else "")
        return [f"teacher: {self.questions} questions, {self.requests_todo} requests to make, {self.received} "
                f"answered ({self.failed} failed after retries, {self.retries} retries), "
                f"${self.cost_usd:.4f} estimated this run; {self.stored} CoTs stored in all{billed}"]


def request_key(question_id: str, teacher: str, sampling_key: str, sample_index: int) -> str:
    return f"{question_id}|{teacher}|{sampling_key}|{sample_index}"


def _cot_row(sample: dict, cfg: TeacherConfig, skey: str, index: int, result: ChatResult) -> dict:
    return {"key": request_key(sample["question_id"], cfg.name, skey, index), "question_id": sample["question_id"],
            "domain": sample["domain"], "teacher": cfg.name, "sampling_key": skey, "sample_index": index,
            "level": sample.get("level"), "reasoning": result.reasoning, "answer_text": result.answer_text,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason, "cost_usd": cfg.prices.cost(result.prompt_tokens,
                                                                               result.completion_tokens),
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


def _journal_rows(out: str) -> Iterator[dict]:
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
    for row in _journal_rows(str(out)):
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


def _student_row(sample: dict) -> dict:
    return {**sample, "tests_json": schemas.tests_to_json(sample.get("tests"))}


# --- Endpoint teachers ----------------------------------------------------------------------------------------------
def teach_endpoint(samples: pa.Table, cfg: TeacherConfig, out: str | Path) -> TeachReport:
    out = str(out)
    todo = todo_requests(samples, cfg, out)
    report = TeachReport(questions=samples.num_rows, requests_todo=len(todo))
    client, skey, prompts = ChatClient(cfg.endpoint), cfg.sampling_key(), cfg.prompt_config()
    params = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
              "max_tokens": cfg.sampling.max_tokens}
    requests = ((key, {"messages": build_messages(_student_row(sample), prompts), **params})
                for key, sample, _ in todo)
    by_key = {key: (sample, index) for key, sample, index in todo}
    journal = Journal(out)
    progress = bar(len(todo), f"teacher {cfg.name}", "CoT")

    def on_result(key: str, result: ChatResult) -> None:
        sample, index = by_key[key]
        report.possibly_billed += result.possibly_billed
        report.cost_usd += cfg.prices.cost(result.prompt_tokens, result.completion_tokens)
        journal.write(_cot_row(sample, cfg, skey, index, result))  # raises: the client drains, then StoreError
        report.received += result.error is None
        report.failed += result.error is not None
        progress.update()
        progress.set_postfix(failed=report.failed, usd=f"{report.cost_usd:.2f}", refresh=False)

    try:
        with _sigterm_as_exit():
            asyncio.run(client.run(requests, on_result))
    except StoreError as error:  # paid answers the journal refused: kept in a file of their own, never dropped
        rows = [_cot_row(by_key[key][0], cfg, skey, by_key[key][1], result) for key, result, _ in error.failures]
        report.unsaved_file = _save_unsaved(rows)
        raise StoreError(error.failures, f"{error}. They are in {report.unsaved_file} (journal lines): copy it into "
                                         f"{storage.join(out, 'journal')}/ once the storage works, and rerun") \
            from None
    finally:
        journal.close()
        progress.close()
    report.retries = client.retries
    report.stored = sum(1 for r in stored_rows(out).values() if not r.get("error"))
    return report


def _save_unsaved(rows: list[dict]) -> str:
    """Rows the journal could not take, in journal format, in the machine's temp directory (another disk than the
    output, often; the message names it)."""
    path = os.path.join(tempfile.gettempdir(), f"adaptcot-teacher-unsaved-{uuid.uuid4().hex}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    return path


class _sigterm_as_exit:
    """SIGTERM (a cancelled Ray job, a pod evicted) raises SystemExit in the main thread, so the journal's last
    chunk is written by the `finally` instead of lost (a remote journal buffers up to JOURNAL_CHUNK_ROWS rows)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._exit)
        return self

    @staticmethod
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


# --- In-cluster teachers ----------------------------------------------------------------------------------------------
def teach_in_cluster(samples: pa.Table, cfg: TeacherConfig, out: str | Path) -> TeachReport:
    """Through `ray.data.llm` (Ray must be initialised); one Parquet part per finished block."""
    import ray

    from adaptcot.grade.answering import CARRIED, answer_processor

    out = str(out)
    todo = todo_requests(samples, cfg, out)
    report = TeachReport(questions=samples.num_rows, requests_todo=len(todo))
    if todo:
        rows = [{k: {**_student_row(s), "sample_index": i}.get(k) for k in CARRIED} for _, s, i in todo]
        engine = cfg.vllm.model_copy(update={"name": cfg.name, "sampling": cfg.sampling, "math_prompt":
                                             cfg.math_prompt, "code_prompt": cfg.code_prompt,
                                             "system_prompt": cfg.system_prompt})
        answered = answer_processor(engine)(ray.data.from_items(rows))
        levels = {s["question_id"]: s.get("level") for _, s, _ in todo}
        written = answered.map_batches(_write_part, fn_kwargs={"cfg": cfg, "out": out, "levels": levels},
                                       batch_format="pyarrow", num_cpus=cfg.vllm.resources.cpus_per_light_stage)
        with bar(len(todo), f"teacher {cfg.name}", "CoT") as progress:
            for counts in written.iter_rows():  # a row per finished block, as it finishes
                report.received += counts["received"]
                report.failed += counts["failed"]
                report.cost_usd += counts["cost_usd"]
                progress.update(counts["received"] + counts["failed"])
    report.stored = sum(1 for r in stored_rows(out).values() if not r.get("error"))
    return report


def _write_part(batch: pa.Table, cfg: TeacherConfig, out: str, levels: dict) -> pa.Table:
    skey, rows = cfg.sampling_key(), []
    for row in batch.to_pylist():
        error = row.get("__inference_error__") or None
        reasoning, answer = split_reasoning({"content": row.get("response") or ""})
        result = ChatResult(reasoning=reasoning, answer_text=None if error else answer, error=error,
                            finish_reason="error" if error else row.get("finish_reason"),
                            completion_tokens=row.get("num_tokens"))
        sample = {"question_id": row["question_id"], "domain": row["domain"], "level": levels.get(row["question_id"])}
        rows.append(_cot_row(sample, cfg, skey, int(row["sample_index"]), result))
    storage.write_table(pa.Table.from_pylist(rows), storage.join(out, "parts", f"part-{uuid.uuid4().hex}.parquet"))
    failed = sum(1 for r in rows if r["error"])
    return pa.table({"received": [len(rows) - failed], "failed": [failed],
                     "cost_usd": [sum(r["cost_usd"] for r in rows)]})


def teach(samples_path: str | Path, cfg: TeacherConfig, out: str | Path) -> TeachReport:
    """Write the teacher's CoTs for the sampled questions into `out`, holding its lease (`common/lease.py`): a second
    run on the same output stops at once, naming the holder, rather than pay for the same requests twice."""
    samples = storage.read_table(str(samples_path))
    schemas.require_columns(samples, ["question_id", "domain", "question"], "teach")
    with Lease(storage.join(str(out), "leases"), f"teacher output {out}"):
        return teach_endpoint(samples, cfg, out) if cfg.endpoint else teach_in_cluster(samples, cfg, out)

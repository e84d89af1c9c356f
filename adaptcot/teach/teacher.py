"""Teacher CoT generation: k long CoTs per sampled question, from an API endpoint or an in-cluster vLLM model.

    samples.parquet -> todo (question x k, minus what is already stored) -> teacher -> journal -> cots table

**No double pay.** Every response is keyed by (question, teacher, sampling key, sample index) and appended to a
journal the moment it arrives (`journal.py`: `<out>/journal/*.jsonl` for endpoints, one line fsynced per response;
`<out>/parts/*.parquet` for the in-cluster model, one part per finished block). A rerun reads the stored keys first
and requests only the rest, so a run killed at any point repeats at most the requests that were in flight, never
one whose answer was stored; `collect` keeps one row per key, so nothing is stored twice. `<out>` may be a cloud
URI: object stores cannot append, so the endpoint journal is written there as chunk objects, one every
`JOURNAL_CHUNK_ROWS` responses or `JOURNAL_CHUNK_SECONDS` seconds, and a kill loses (and later re-asks) at most
that last chunk. A request that failed after all its retries is journaled with its error and asked again by the
next run. One run at a time writes an output: `teach` holds its lease.

- `endpoint`: any OpenAI-compatible chat endpoint (DeepSeek, OpenAI, vLLM or SGLang servers) through
  `client.ChatClient`, from the driver: one process keeps hundreds of requests in flight; with `teacher.max_usd`,
  under a spending cap (`cost.py`). `mode: batch` sends them through the OpenAI Batch API instead (`batch.py`).
- `vllm`: an in-cluster model through `ray.data.llm` (the same processor as student answering).
The teacher sees the student's prompts (`grade/answering.py::build_messages`), so its CoTs answer what the student
is asked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
import uuid
from pathlib import Path

import pyarrow as pa

from adaptcot.common import schemas, storage
from adaptcot.common.lease import Lease
from adaptcot.common.terminal import bar
from adaptcot.teach.batch import teach_batch
from adaptcot.teach.client import ChatClient, ChatResult, StoreError, split_reasoning
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.cost import Cap, Estimator, Plan, estimator
from adaptcot.teach.journal import (
    Journal,
    TeachReport,
    cot_row,
    journal_rows,
    request_bodies,
    stored_rows,
    student_row,
    todo_requests,
)


# --- Estimates ------------------------------------------------------------------------------------------------------
def teacher_estimator(samples: pa.Table, cfg: TeacherConfig, rows: list[dict]) -> Estimator:
    """The estimate of one request (`teach/cost.py`), measured on what this teacher already stored in the output."""
    skey, by_question = cfg.sampling_key(), {s["question_id"]: s for s in samples.to_pylist()}
    mine = [(row["key"], by_question[row["question_id"]], row["sample_index"]) for row in rows
            if row.get("sampling_key") == skey and row.get("teacher") == cfg.name and row["question_id"] in by_question]
    by_key = {row["key"]: row for row in rows}
    stored = [(by_key[key], body) for key, body in request_bodies(mine, cfg)]
    return estimator(stored, cfg.resolved_prices(), cfg.expected_output_tokens, cfg.sampling.max_tokens,
                     batch=cfg.mode == "batch")


def plan(samples: pa.Table, cfg: TeacherConfig, out: str | Path) -> Plan:
    """What `teach` would send, in requests, tokens and dollars; nothing is sent (`adaptcot teach --dry-run`)."""
    rows = list(journal_rows(str(out)))
    todo, estimate = todo_requests(samples, cfg, str(out)), teacher_estimator(samples, cfg, rows)
    tokens = [estimate.tokens(body) for _, body in request_bodies(todo, cfg)]
    input_tokens, output_tokens = sum(t[0] for t in tokens), sum(t[1] for t in tokens)
    usd = estimate.prices.cost(input_tokens, output_tokens, estimate.batch)
    return Plan(cfg.name, cfg.mode if cfg.endpoint else "in-cluster", samples.num_rows * cfg.samples, len(todo),
                input_tokens, output_tokens, usd, sum(r.get("cost_usd") or 0.0 for r in rows), estimate, cfg.max_usd)


# --- Endpoint teachers ----------------------------------------------------------------------------------------------
def teach_endpoint(samples: pa.Table, cfg: TeacherConfig, out: str | Path) -> TeachReport:
    out = str(out)
    todo = todo_requests(samples, cfg, out)
    report = TeachReport(questions=samples.num_rows, requests_todo=len(todo))
    client, skey = ChatClient(cfg.endpoint), cfg.sampling_key()
    requests = request_bodies(todo, cfg)
    by_key = {key: (sample, index) for key, sample, index in todo}
    cap = None
    if cfg.max_usd is not None:
        rows = list(journal_rows(out))
        cap = Cap(cfg.max_usd, sum(r.get("cost_usd") or 0.0 for r in rows), teacher_estimator(samples, cfg, rows).usd)
    journal = Journal(out)
    progress = bar(len(todo), f"teacher {cfg.name}", "CoT")

    def on_result(key: str, result: ChatResult) -> None:
        sample, index = by_key[key]
        row = cot_row(sample, cfg, skey, index, result)
        report.possibly_billed += result.possibly_billed
        report.add_cost(row["cost_usd"])
        if cap is not None:
            cap.settle(key, row["cost_usd"], result.possibly_billed)
        journal.write(row)  # raises: the client drains, then StoreError
        report.received += result.error is None
        report.failed += result.error is not None
        progress.update()
        progress.set_postfix(failed=report.failed, usd="?" if report.cost_usd is None else f"{report.cost_usd:.2f}",
                             refresh=False)

    try:
        with _sigterm_as_exit():
            asyncio.run(client.run(requests, on_result, gate=cap.admit if cap else None))
        report.capped = cap.line() if cap is not None and cap.refused else None
    except StoreError as error:  # paid answers the journal refused: kept in a file of their own, never dropped
        rows = [cot_row(by_key[key][0], cfg, skey, by_key[key][1], result) for key, result, _ in error.failures]
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

    from adaptcot.grade.answerer import answerer
    from adaptcot.grade.answering import CARRIED

    out = str(out)
    todo = todo_requests(samples, cfg, out)
    report = TeachReport(questions=samples.num_rows, requests_todo=len(todo))
    if todo:
        rows = [{k: {**student_row(s), "sample_index": i}.get(k) for k in CARRIED} for _, s, i in todo]
        engine = cfg.vllm.model_copy(update={"name": cfg.name, "sampling": cfg.sampling, "math_prompt":
                                             cfg.math_prompt, "code_prompt": cfg.code_prompt,
                                             "system_prompt": cfg.system_prompt})
        answered = answerer(engine)(ray.data.from_items(rows))
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
        rows.append(cot_row(sample, cfg, skey, int(row["sample_index"]), result))
    storage.write_table(pa.Table.from_pylist(rows), storage.join(out, "parts", f"part-{uuid.uuid4().hex}.parquet"))
    failed = sum(1 for r in rows if r["error"])
    return pa.table({"received": [len(rows) - failed], "failed": [failed],
                     "cost_usd": [sum(r["cost_usd"] or 0.0 for r in rows)]})


def teach(samples_path: str | Path, cfg: TeacherConfig, out: str | Path) -> TeachReport:
    """Write the teacher's CoTs for the sampled questions into `out`, holding its lease (`common/lease.py`): a second
    run on the same output stops at once, naming the holder, rather than pay for the same requests twice."""
    samples = storage.read_table(str(samples_path))
    schemas.require_columns(samples, ["question_id", "domain", "question"], "teach")
    with Lease(storage.join(str(out), "leases"), f"teacher output {out}"):
        if cfg.endpoint is None:
            return teach_in_cluster(samples, cfg, out)
        if cfg.mode == "batch":
            return teach_batch(samples, cfg, out)
        return teach_endpoint(samples, cfg, out)

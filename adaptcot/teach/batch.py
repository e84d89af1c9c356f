"""Batch mode (`teacher.mode: batch`): the teacher's requests through a provider's Batch API, at its batch price.

    todo -> JSONL of requests (custom_id = CoT key) -> upload -> create -> poll -> download -> journal

The requests, the reading of replies and the rows are the online path's (`teacher.request_bodies`,
`client.parse_reply`, `teacher.cot_row` into `teacher.Journal`): a batch-mode output is collected and resumed like an
online one, and the two modes can share an output (a CoT stored by one is not asked by the other). A line with an
error, a status other than 200 or a body without a message is journaled as a failure, asked again by the next run.

**Which providers.** The format is OpenAI's Batch API: `POST /v1/files` (purpose `batch`) and `/v1/batches` over
`/v1/chat/completions`, input lines `{custom_id, method, url, body}`, output and error lines `{id, custom_id,
response: {status_code, request_id, body}, error}`. OpenAI has it. Azure OpenAI documents the same API for its batch
deployments (set `batch.request_url: /chat/completions` and the deployment as the model if its version asks for
it), and some OpenAI-compatible hosts (Groq, Together) document the same endpoints: adaptcot's tests run against a
local server of the documented API, not against these services. Anthropic's Message Batches and Gemini's batch mode
take other formats and are not supported. DeepSeek, the default teacher, has no batch API, nor have most
OpenAI-compatible servers (vLLM reads and writes this file format offline, `vllm run-batch`, but serves no
`/v1/batches`): `mode: online` stays the default.

**Paid once, across kills.** Each batch has a record, `<out>/batches/<intent>.json` (`intent` a fresh id): the keys
and row fields of its requests and the uploaded input file, written before the batch is created with
`metadata.adaptcot_intent = <intent>`, rewritten with the batch id once it is. A run reads the records first: a
record with a batch id is polled; one without (killed between create and rewrite) is matched to the provider's batch
of the same intent (`batches.list`) and adopted, and dropped only if the provider has none (its requests then go
into this run's new batches). Keys held by an unmerged record never go into a new batch. A finished batch's output
and error files are journaled line by line (a key in neither is a failure), the journal is flushed, and the record
is marked merged; after a kill during the merge, the rerun merges that batch again and skips the answers already
journaled.
A failed, expired or cancelled batch's unanswered requests are journaled as failures; an expired batch's partial
output is kept. `batches.create` is sent without the SDK's automatic retries (they carry no idempotency key): after
an error the run looks for the intent first, so a lost response is adopted rather than paid for twice.
`teacher.max_usd` does not apply to batch mode (a batch is priced only when it returns).
"""

from __future__ import annotations

import json
import time
import uuid

import pyarrow as pa

from adaptcot.common import storage
from adaptcot.common.terminal import bar, say
from adaptcot.teach.client import RETRY_STATUS, ChatResult, EndpointConfig, ReplyError, parse_reply
from adaptcot.teach.config import BatchConfig
from adaptcot.teach.journal import Journal, TeachReport, cot_row, request_bodies, stored_rows, todo_requests

TERMINAL = ("completed", "failed", "expired", "cancelled")
CREATE_ATTEMPTS = 5
LIST_LOOKBACK_S = 3600.0  # `batches.list` is newest first: an intent is looked for back to its record's time - this


# --- Records ----------------------------------------------------------------------------------------------------------
def records_dir(out: str) -> str:
    return storage.join(out, "batches")


def write_record(out: str, record: dict) -> None:
    storage.write_text(storage.join(records_dir(out), f"{record['intent']}.json"), json.dumps(record))


def read_records(out: str) -> list[dict]:
    return [json.loads(storage.read_text(p)) for p in storage.list_files(records_dir(out), "*.json")]


def new_record(cfg, skey: str, entries: list[tuple[str, dict, int]]) -> dict:
    """A batch's record before anything is uploaded: what each request's row needs once its reply is back."""
    return {"intent": uuid.uuid4().hex, "teacher": cfg.name, "sampling_key": skey, "base_url": cfg.endpoint.base_url,
            "state": "creating", "created_at": time.time(), "input_file_id": None, "batch_id": None,
            "requests": [[key, s["question_id"], s["domain"], s.get("level"), index] for key, s, index in entries]}


# --- The provider's API -----------------------------------------------------------------------------------------------
def openai_client(endpoint: EndpointConfig):
    import openai

    return openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key() or "none", max_retries=5)


def find_intent(client, record: dict) -> str | None:
    """The id of the provider's batch created for this record, if there is one."""
    for batch in client.batches.list(limit=100):  # newest first, pages fetched as needed
        if (batch.metadata or {}).get("adaptcot_intent") == record["intent"]:
            return batch.id
        if batch.created_at < record["created_at"] - LIST_LOOKBACK_S:
            return None
    return None


def create_batch(client, cfg: BatchConfig, record: dict) -> str:
    """Create the record's batch exactly once: after any error, a batch carrying its intent is adopted."""
    import openai

    once = client.with_options(max_retries=0)
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return once.batches.create(input_file_id=record["input_file_id"], endpoint=cfg.request_url,
                                       completion_window=cfg.completion_window,
                                       metadata={"adaptcot_intent": record["intent"]}).id
        except openai.APIStatusError as error:
            if error.status_code not in RETRY_STATUS:
                raise  # refused: nothing was created
        except openai.APIError:
            pass  # no answer (connection lost, timeout): it may have been created
        if (found := find_intent(client, record)) is not None:
            return found
        time.sleep(min(30.0, 2.0 ** attempt))
    raise RuntimeError(f"teacher batch: could not create a batch for {record['intent']} "
                       f"in {CREATE_ATTEMPTS} attempts; its record stays, the next run tries again")


def request_lines(bodies, endpoint: EndpointConfig, cfg: BatchConfig):
    """(key, JSONL line) per (key, chat body): the online request, as a batch input line."""
    for key, body in bodies:
        line = {"custom_id": key, "method": "POST", "url": cfg.request_url,
                "body": {"model": endpoint.model, **body, **endpoint.extra_body}}
        yield key, (json.dumps(line) + "\n").encode()


def chunks(lines, cfg: BatchConfig):
    """Lists of (key, line) of at most `max_requests_per_batch` lines and `max_file_mb` bytes."""
    limit, chunk, size = int(cfg.max_file_mb * 1e6), [], 0
    for key, line in lines:
        if chunk and (len(chunk) >= cfg.max_requests_per_batch or size + len(line) > limit):
            yield chunk
            chunk, size = [], 0
        chunk.append((key, line))
        size += len(line)
    if chunk:
        yield chunk


def read_output_line(line: str) -> tuple[str | None, ChatResult]:
    """(custom_id, result) of one output or error file line: an answer only for a 200 whose body has a message."""
    try:
        data = json.loads(line)
    except ValueError:
        return None, ChatResult(error="batch output line is not JSON")
    if not isinstance(data, dict):
        return None, ChatResult(error="batch output line is not an object")
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    status, error = response.get("status_code"), data.get("error")
    if error or status != 200:
        detail = json.dumps(error or response.get("body"))[:300]
        return data.get("custom_id"), ChatResult(error=f"batch line: HTTP {status}: {detail}")
    try:
        return data.get("custom_id"), parse_reply(response.get("body"))
    except ReplyError as exc:
        return data.get("custom_id"), ChatResult(error=f"HTTP 200 without an answer: {exc}"[:300])


def batch_results(client, batch):
    """(custom_id, result) per line of the batch's output and error files, streamed (a file of long CoTs is GBs)."""
    import openai

    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        try:
            with client.files.with_streaming_response.content(file_id) as response:
                for line in response.iter_lines():
                    if line.strip():
                        yield read_output_line(line)
        except openai.NotFoundError:
            say(f"teacher batch: file {file_id} of {batch.id} is gone; its requests count as failed", error=True)


def batch_problem(batch) -> str:
    errors = "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data or [])) if batch.errors else ""
    return f"batch {batch.id} {batch.status}" + (f" ({errors})"[:300] if errors else "")


# --- The run ----------------------------------------------------------------------------------------------------------
def settle_records(client, out: str, cfg) -> list[dict]:
    """The unmerged records, each with a batch id: one without adopts its intent's batch, or is dropped when the
    provider has none (nothing was created: its requests are simply to do). Records of another endpoint or teacher
    come back as they are: their keys stay held."""
    pending = []
    for record in read_records(out):
        if record["state"] == "merged":
            continue
        if record["base_url"] != cfg.endpoint.base_url or record["teacher"] != cfg.name:
            say(f"teacher batch: {len(record['requests'])} requests of record {record['intent']} wait at "
                f"{record['base_url']} ({record['teacher']}): not asked again here; delete "
                f"{records_dir(out)}/{record['intent']}.json to give them up", error=True)
            pending.append(record)
            continue
        if record["batch_id"] is None and record["input_file_id"] is not None:
            record["batch_id"] = find_intent(client, record)
            if record["batch_id"] is not None:
                say(f"teacher batch: adopted {record['batch_id']} (created for {record['intent']} before a kill)")
                record["state"] = "submitted"
                write_record(out, record)
        if record["batch_id"] is None:
            storage.remove(storage.join(records_dir(out), f"{record['intent']}.json"))
            continue
        pending.append(record)
    return pending


def submit(client, out: str, cfg, skey: str, todo: list[tuple[str, dict, int]], bodies) -> list[dict]:
    """Upload and create the batches of `todo`; their records, each with its batch id."""
    by_key = {key: (sample, index) for key, sample, index in todo}
    records = []
    for chunk in chunks(request_lines(bodies, cfg.endpoint, cfg.batch), cfg.batch):
        record = new_record(cfg, skey, [(key, *by_key[key]) for key, _ in chunk])
        data = b"".join(line for _, line in chunk)
        record["input_file_id"] = client.files.create(file=(f"adaptcot-{record['intent']}.jsonl", data),
                                                      purpose="batch").id
        write_record(out, record)  # before create: a kill from here on is resumed by intent
        record.update(batch_id=create_batch(client, cfg.batch, record), state="submitted")
        write_record(out, record)
        say(f"teacher batch: created {record['batch_id']} ({len(chunk)} requests, record {record['intent']})")
        records.append(record)
    return records


def merge(client, out: str, batch, record: dict, store, flush) -> None:
    """`store(record, request, result)` for every request of a finished batch, `flush()`, then mark it merged."""
    requests, seen = {request[0]: request for request in record["requests"]}, set()
    for key, result in batch_results(client, batch):
        if key in requests:  # (a key twice: both stored, `stored_rows` keeps the answer)
            store(record, requests[key], result)
            seen.add(key)
    problem = batch_problem(batch)
    for key in [key for key in requests if key not in seen]:
        store(record, requests[key], ChatResult(error=f"{problem}: no result for this request"))
    flush()  # every row stored before the record says so (a bucket journal buffers)
    write_record(out, dict(record, state="merged", status=batch.status))


def retrieve(client, out: str, record: dict):
    import openai

    try:
        return client.batches.retrieve(record["batch_id"])
    except openai.NotFoundError:
        raise RuntimeError(f"teacher batch: {record['base_url']} does not know batch {record['batch_id']} any more; "
                           f"delete {records_dir(out)}/{record['intent']}.json to ask its requests again") from None


def wait_and_merge(client, out: str, cfg, records: list[dict], store, flush) -> None:
    """Poll every record's batch until it ends, merging each as it does."""
    pending, done = {r["batch_id"]: r for r in records}, {}
    with bar(sum(len(r["requests"]) for r in records), f"teacher {cfg.name} (batch)", "CoT") as progress:
        while pending:
            for batch_id, record in list(pending.items()):
                batch = retrieve(client, out, record)
                counts = batch.request_counts
                done[batch_id] = (counts.completed + counts.failed) if counts else 0
                if batch.status in TERMINAL:
                    merge(client, out, batch, record, store, flush)
                    done[batch_id] = len(record["requests"])
                    say(f"teacher batch: {batch_id} {batch.status}, merged")
                    del pending[batch_id]
            progress.n = sum(done.values())
            progress.refresh()
            if pending:
                time.sleep(cfg.batch.poll_interval_s)


def teach_batch(samples: pa.Table, cfg, out: str):
    """`teacher.teach` for `mode: batch`: resume the batches in flight, submit the rest of the to-do, merge all."""
    out, skey = str(out), cfg.sampling_key()
    client = openai_client(cfg.endpoint)
    records = settle_records(client, out, cfg)
    held = {request[0] for record in records for request in record["requests"]}
    records = [r for r in records if r["base_url"] == cfg.endpoint.base_url and r["teacher"] == cfg.name]
    if records:
        say(f"teacher batch: resuming {len(records)} batches: " + ", ".join(r["batch_id"] for r in records))
    todo = [entry for entry in todo_requests(samples, cfg, out) if entry[0] not in held]
    report = TeachReport(questions=samples.num_rows, requests_todo=len(todo))
    journal = Journal(out)
    # Answers a run killed while merging had already journaled: not written twice.
    answered = {key for key, row in stored_rows(out).items() if not row.get("error")} if records else set()

    def store(record: dict, request: list, result: ChatResult) -> None:
        key, question_id, domain, level, index = request
        if key in answered:
            return
        sample = {"question_id": question_id, "domain": domain, "level": level}
        row = cot_row(sample, cfg, record["sampling_key"], index, result)
        journal.write(row)
        report.received += result.error is None
        report.failed += result.error is not None
        report.add_cost(row["cost_usd"])

    try:
        records += submit(client, out, cfg, skey, todo, request_bodies(todo, cfg))
        wait_and_merge(client, out, cfg, records, store, journal.flush)
    finally:
        journal.close()
    report.stored = sum(1 for r in stored_rows(out).values() if not r.get("error"))
    return report

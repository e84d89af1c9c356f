"""Batch mode (`teacher.mode: batch`) against a local server of OpenAI's Batch API over a real vLLM server
(`batch_server.py`): the server as the official `openai` client sees it, CoTs stored once and shaped like the online
path's, and a run killed while polling, or between creating a batch and recording it, that resumes without
submitting again. Failed, expired and bad lines are failures asked again, never answers."""

import json
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from batch_server import BatchServer
from test_teacher import samples_table, teacher

from adaptcot.teach.batch import BatchConfig, chunks, read_output_line, read_records
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.journal import collect, request_key, stored_rows
from adaptcot.teach.teacher import teach, teach_endpoint

KILLABLE_RUN = """
import sys
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.teacher import teach
teach(sys.argv[2], TeacherConfig.model_validate_json(sys.argv[1]), sys.argv[3])
"""


def batch_teacher(url: str, model: str, **batch) -> TeacherConfig:
    online = teacher(url, model).model_dump()
    return TeacherConfig.model_validate({**online, "mode": "batch", "batch": {"poll_interval_s": 0.1, **batch}})


def run(tmp_path, cfg: TeacherConfig, questions: int):
    pq.write_table(samples_table(questions), tmp_path / "samples.parquet")
    return teach(tmp_path / "samples.parquet", cfg, tmp_path / "teach")


def keys(cfg: TeacherConfig, questions: int) -> list[str]:
    return [request_key(f"q{q:03d}", cfg.name, cfg.sampling_key(), i) for q in range(questions) for i in range(2)]


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- Reading output lines (no server) -------------------------------------------------------------------------------
ANSWER = {"choices": [{"message": {"content": "<think>2 and 2</think>4"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 3}}


@pytest.mark.parametrize("line,error", [
    ({"custom_id": "k", "response": {"status_code": 200, "body": ANSWER}, "error": None}, None),
    ({"custom_id": "k", "response": {"status_code": 200, "body": {"error": {"message": "x"}}}, "error": None},
     "HTTP 200 without an answer"),
    ({"custom_id": "k", "response": {"status_code": 200, "body": {"choices": []}}, "error": None},
     "HTTP 200 without an answer"),
    ({"custom_id": "k", "response": {"status_code": 400, "body": {"error": {"message": "bad"}}}, "error": None},
     "HTTP 400"),
    ({"custom_id": "k", "response": None, "error": {"code": "server_error", "message": "x"}}, "server_error"),
], ids=["answer", "error-body-200", "no-choices-200", "status-400", "error-object"])
def test_an_output_line_is_an_answer_only_with_status_200_and_a_message(line, error):
    key, result = read_output_line(json.dumps(line))
    assert key == "k"
    if error is None:
        assert (result.error, result.reasoning, result.answer_text, result.completion_tokens) == \
               (None, "2 and 2", "4", 3)
    else:
        assert error in result.error and result.answer_text is None


def test_requests_are_split_by_count_and_by_size():
    lines = [(f"k{i}", b"x" * 400) for i in range(10)]
    assert [len(c) for c in chunks(lines, BatchConfig(max_requests_per_batch=4))] == [4, 4, 2]
    assert [len(c) for c in chunks(lines, BatchConfig(max_file_mb=0.001))] == [2, 2, 2, 2, 2]


# --- Against the local Batch API ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_local_server_is_the_batch_api_the_official_client_knows(teacher_server):
    import openai
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    server = BatchServer(teacher_server[0])
    client = openai.OpenAI(base_url=server.url, api_key="sk-test")
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": teacher_server[1], "messages": [{"role": "user", "content": f"{i} + {i}?"}],
                       "max_tokens": 16}} for i in range(4)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert (client.files.retrieve(uploaded.id).bytes, client.files.content(uploaded.id).content) == (len(data), data)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"adaptcot_intent": "i1"})
    assert batch.status == "validating" and batch.metadata == {"adaptcot_intent": "i1"}
    wait_for(lambda: client.batches.retrieve(batch.id).status in ("completed", "failed"), "the batch")
    batch = client.batches.retrieve(batch.id)
    assert (batch.status, batch.request_counts.total, batch.request_counts.completed) == ("completed", 4, 4)
    outputs = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["r0", "r1", "r2", "r3"]
    for output in outputs:
        BatchRequestOutput.model_validate(output)  # what vLLM's own batch runner writes
        assert output["response"]["status_code"] == 200 and output["response"]["body"]["choices"][0]["message"]

    server.released.clear()  # a second batch, held, then cancelled
    second = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
    wait_for(lambda: client.batches.retrieve(second.id).status == "in_progress", "in_progress")
    assert client.batches.cancel(second.id).status == "cancelling"
    server.release()
    wait_for(lambda: client.batches.retrieve(second.id).status == "cancelled", "the cancel")
    assert [b.id for b in client.batches.list(limit=1)] == [second.id, batch.id]  # newest first, paged by `after`


@pytest.mark.slow
def test_batch_mode_stores_every_cot_once_like_the_online_path_and_a_rerun_creates_no_batch(teacher_server, tmp_path):
    server = BatchServer(teacher_server[0])
    cfg = batch_teacher(server.url, teacher_server[1], max_requests_per_batch=5)
    report = run(tmp_path, cfg, 6)
    assert (report.requests_todo, report.received, report.failed, report.stored) == (12, 12, 0, 12)
    assert len(server.batches) == 3 and sorted(server.forwarded) == sorted(keys(cfg, 6))
    assert set(server.forwarded.values()) == {1}
    assert all(r["state"] == "merged" for r in read_records(str(tmp_path / "teach")))
    table = collect(tmp_path / "teach")
    online_out = tmp_path / "online"
    teach_endpoint(samples_table(6), teacher(teacher_server[0], teacher_server[1]), online_out)
    online = collect(online_out)
    assert table.schema == online.schema
    assert sorted(stored_rows(tmp_path / "teach")) == sorted(stored_rows(online_out)) == sorted(keys(cfg, 6))
    assert all(t > 0 for t in table["completion_tokens"].to_pylist())
    assert None not in table["answer_text"].to_pylist() and set(table["error"].to_pylist()) == {None}

    again = run(tmp_path, cfg, 6)
    assert (again.requests_todo, again.received, len(server.batches)) == (0, 0, 3)

    # A run killed after journaling a batch's answers but before marking its record merged: the rerun merges the
    # batch again (no new batch) and writes none of its answers twice.
    record = read_records(str(tmp_path / "teach"))[0]
    unmerged = {**record, "state": "submitted"}
    (tmp_path / "teach" / "batches" / f"{record['intent']}.json").write_text(json.dumps(unmerged))
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "teach" / "journal").glob("*.jsonl"))
    rerun = run(tmp_path, cfg, 6)
    assert (rerun.received, len(server.batches), rerun.stored) == (0, 3, 12)
    assert sum(len(p.read_text().splitlines()) for p in (tmp_path / "teach" / "journal").glob("*.jsonl")) == lines
    assert all(r["state"] == "merged" for r in read_records(str(tmp_path / "teach")))


@pytest.mark.slow
def test_a_run_killed_while_polling_resumes_without_resubmitting(teacher_server, tmp_path):
    server = BatchServer(teacher_server[0], hold=True)
    cfg = batch_teacher(server.url, teacher_server[1])
    pq.write_table(samples_table(4), tmp_path / "samples.parquet")
    out = tmp_path / "teach"
    killed = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, cfg.model_dump_json(),
                               str(tmp_path / "samples.parquet"), str(out)])
    wait_for(lambda: sum(server.polls.values()) >= 3 or killed.poll() is not None, "the run to poll")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    [batch_id] = server.batches
    assert server.status(batch_id) == "in_progress" and not stored_rows(out)
    assert [r["batch_id"] for r in read_records(str(out))] == [batch_id]

    server.release()
    report = run(tmp_path, cfg, 4)
    assert list(server.batches) == [batch_id]  # polled again, not resubmitted
    assert (report.requests_todo, report.received, report.stored) == (0, 8, 8)
    assert sorted(server.forwarded) == sorted(keys(cfg, 4)) and set(server.forwarded.values()) == {1}
    assert collect(out).num_rows == 8


@pytest.mark.slow
def test_a_run_killed_between_create_and_record_adopts_its_batch(teacher_server, tmp_path):
    server = BatchServer(teacher_server[0])
    cfg = batch_teacher(server.url, teacher_server[1])
    pq.write_table(samples_table(3), tmp_path / "samples.parquet")
    out = tmp_path / "teach"
    killed = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, cfg.model_dump_json(),
                               str(tmp_path / "samples.parquet"), str(out)])
    server.kill_on_create = killed.pid
    assert killed.wait(timeout=120) == -signal.SIGKILL
    [record] = read_records(str(out))
    assert record["batch_id"] is None and record["input_file_id"] is not None and len(server.batches) == 1

    report = run(tmp_path, cfg, 3)
    assert len(server.batches) == 1 and (report.requests_todo, report.received, report.stored) == (0, 6, 6)
    assert read_records(str(out))[0]["batch_id"] == next(iter(server.batches))
    assert set(server.forwarded.values()) == {1}


@pytest.mark.slow
def test_a_lost_create_reply_is_adopted_not_paid_twice(teacher_server, tmp_path):
    server = BatchServer(teacher_server[0])
    server.drop_create_reply = 1
    report = run(tmp_path, batch_teacher(server.url, teacher_server[1]), 3)
    assert len(server.batches) == 1 and (report.received, report.stored) == (6, 6)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["failed", "expired"])
def test_a_failed_or_expired_batch_is_journaled_as_failures_and_asked_again(teacher_server, tmp_path, fault):
    server = BatchServer(teacher_server[0])
    server.fail_next, server.expire_after = (1, None) if fault == "failed" else (0, 2)
    cfg = batch_teacher(server.url, teacher_server[1])
    first = run(tmp_path, cfg, 3)
    answered = 0 if fault == "failed" else 2
    assert (first.received, first.failed, first.stored) == (answered, 6 - answered, answered)
    errors = [r["error"] for r in stored_rows(tmp_path / "teach").values() if r["error"]]
    assert len(errors) == 6 - answered and all(f" {fault}" in e for e in errors)
    if fault == "failed":
        assert all("token_limit_exceeded" in e for e in errors)

    server.expire_after = None
    second = run(tmp_path, cfg, 3)
    assert (second.requests_todo, second.received, second.stored) == (6 - answered, 6 - answered, 6)
    assert len(server.batches) == 2 and set(server.forwarded.values()) == {1}


@pytest.mark.slow
def test_an_error_line_or_a_200_without_choices_is_a_failure_not_an_answer(teacher_server, tmp_path):
    server = BatchServer(teacher_server[0])
    cfg = batch_teacher(server.url, teacher_server[1])
    bad = keys(cfg, 3)[:2]
    server.bad_lines = {bad[0]: "error", bad[1]: "nochoices"}
    first = run(tmp_path, cfg, 3)
    assert (first.received, first.failed, first.stored) == (4, 2, 4)
    rows = stored_rows(tmp_path / "teach")
    assert [rows[k]["answer_text"] for k in bad] == [None, None]
    assert "server_error" in rows[bad[0]]["error"] and "without an answer" in rows[bad[1]]["error"]

    server.bad_lines = {}
    second = run(tmp_path, cfg, 3)
    assert (second.requests_todo, second.received, second.stored) == (2, 2, 6)
    assert server.forwarded[bad[0]] == 1 and server.forwarded[bad[1]] == 2  # nochoices reached the engine once

"""The teacher bill under faults (a real vLLM server behind the fault-injecting proxy): a 200 that is not an answer
is never stored as one, a storage failure loses no paid answer, a stalled stream is bought again at most once, a
slow stream is not abandoned, and a SIGTERM'd run on a bucket keeps every answer it received."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from teacher_fixtures import BAD_200, SLOW_STREAM_GAP_S, FaultProxy
from test_teacher import samples_table, teacher

from adaptcot.teach import journal as teacher_journal
from adaptcot.teach.client import RetryConfig, StoreError
from adaptcot.teach.journal import collect, stored_rows
from adaptcot.teach.teacher import teach_endpoint

pytestmark = pytest.mark.slow
FAST = {"base_delay_s": 0.05, "max_delay_s": 0.3}


def test_a_200_that_is_not_an_answer_is_retried_and_never_stored_as_one(teacher_server, tmp_path):
    proxy = FaultProxy(teacher_server[0], fault_rate=0.7, faults=BAD_200)
    cfg = teacher(proxy.url, teacher_server[1], max_in_flight=8, retry=RetryConfig(**FAST))
    out = tmp_path / "teach"
    report = teach_endpoint(samples_table(16), cfg, out)
    assert set(proxy.faults) == set(BAD_200)
    assert (report.received, report.failed, report.stored) == (32, 0, 32)
    table = collect(out)
    assert all(table["finish_reason"].to_pylist()) and all(t > 0 for t in table["completion_tokens"].to_pylist())
    assert all((a or "") + (r or "") for a, r in zip(table["answer_text"].to_pylist(), table["reasoning"].to_pylist()))
    assert report.possibly_billed == proxy.faults["midcut"]  # a stream cut once generating may have been billed


def test_a_key_that_never_gets_an_answer_is_recorded_as_failed_and_asked_again(teacher_server, tmp_path):
    samples = samples_table(2)
    cfg = teacher(teacher_server[0], teacher_server[1], retry=RetryConfig(max_retries=2, **FAST))
    broken = teacher_journal.request_key("q000", cfg.name, cfg.sampling_key(), 0)
    proxy = FaultProxy(teacher_server[0], always={broken})
    proxy.fault_for = lambda key: "error200" if key == broken else None  # that key, on every attempt
    cfg = teacher(proxy.url, teacher_server[1], retry=RetryConfig(max_retries=2, **FAST))
    out = tmp_path / "teach"
    report = teach_endpoint(samples, cfg, out)
    assert (report.received, report.failed, proxy.requests[broken]) == (3, 1, 3)
    row = stored_rows(out)[broken]
    assert "without an answer" in row["error"] and row["answer_text"] is None
    assert teach_endpoint(samples, cfg, out).requests_todo == 1  # asked again, as a failure


def test_a_storage_failure_stops_new_requests_and_keeps_every_paid_answer(teacher_server, tmp_path, monkeypatch):
    proxy = FaultProxy(teacher_server[0])
    cfg = teacher(proxy.url, teacher_server[1], max_in_flight=4, retry=RetryConfig(**FAST))
    real_write, written = teacher_journal.Journal.write, []

    def disk_full_after_six(self, row):
        if len(written) >= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, row)
        written.append(row["key"])

    monkeypatch.setattr(teacher_journal.Journal, "write", disk_full_after_six)
    out = tmp_path / "teach"
    with pytest.raises(StoreError, match="could not be stored .*No space left.* They are in ") as caught:
        teach_endpoint(samples_table(20), cfg, out)
    unsaved_path = str(caught.value).split("They are in ")[1].split(" ")[0]
    unsaved = [json.loads(line) for line in open(unsaved_path)]
    assert 1 <= len(unsaved) <= 4  # the one that failed and those in flight with it
    paid = set(proxy.answered)
    assert set(written) | {r["key"] for r in unsaved} == paid  # every paid answer is somewhere
    assert sum(proxy.requests.values()) < 40  # no new request after the failure
    monkeypatch.setattr(teacher_journal.Journal, "write", real_write)
    (out / "journal" / "recovered.jsonl").write_text(open(unsaved_path).read())  # the recovery the message gives
    assert teach_endpoint(samples_table(20), cfg, out).requests_todo == 40 - len(paid)


def test_a_stalled_request_is_bought_again_at_most_once_and_a_slow_stream_is_not_abandoned(teacher_server, tmp_path):
    cfg = teacher(teacher_server[0], teacher_server[1])
    keys = [teacher_journal.request_key("q000", cfg.name, cfg.sampling_key(), i) for i in range(2)]
    proxy = FaultProxy(teacher_server[0], stall_s=30.0)
    proxy.fault_for = lambda key: {keys[0]: "stall", keys[1]: "slowstream"}.get(key)
    proxy.always = {keys[0], keys[1]}
    idle = 3 * SLOW_STREAM_GAP_S
    cfg = teacher(proxy.url, teacher_server[1], retry=RetryConfig(idle_timeout_s=idle, **FAST))
    started = time.monotonic()
    report = teach_endpoint(samples_table(1), cfg, tmp_path / "teach")
    rows = stored_rows(tmp_path / "teach")
    assert proxy.requests[keys[0]] == 2 and report.possibly_billed == 2  # one attempt, one more, then given up
    assert "2 possibly billed" in rows[keys[0]]["error"]
    assert rows[keys[1]]["error"] is None and proxy.requests[keys[1]] == 1  # slower than the idle timeout in all
    assert time.monotonic() - started > idle and rows[keys[1]]["completion_tokens"] > 3


KILLABLE_RUN = """
import sys
import pyarrow.parquet as pq
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.teacher import teach_endpoint
teach_endpoint(pq.read_table(sys.argv[2]), TeacherConfig.model_validate_json(sys.argv[1]), sys.argv[3])
"""


def test_a_sigterm_on_a_bucket_run_keeps_every_answer_it_received(teacher_server, tmp_path, bucket, s3_server):
    proxy = FaultProxy(teacher_server[0])
    cfg = teacher(proxy.url, teacher_server[1], max_in_flight=4, retry=RetryConfig(**FAST))
    pq.write_table(samples_table(40), tmp_path / "samples.parquet")
    out = f"{bucket}/teach"
    run = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, cfg.model_dump_json(),
                            str(tmp_path / "samples.parquet"), out], env={**os.environ, **s3_server})
    while len(proxy.answered) < 10 and run.poll() is None:  # fewer than one journal chunk (64 rows)
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) != 0
    answered, stored = set(proxy.answered), set(stored_rows(out))
    assert 10 <= len(answered) < 80
    # Fewer than a chunk's worth of rows: without the flush on SIGTERM none would be in the bucket. At most the
    # requests in flight (answered by the server, not yet handed to the journal) are missing.
    assert stored <= answered and len(stored) >= len(answered) - 4

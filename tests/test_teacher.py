"""Teacher CoT generation against a real vLLM server on 127.0.0.1, with faults injected by a proxy in front of it."""

import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from teacher_fixtures import FaultProxy

from adaptcot.grade.answering import SamplingConfig
from adaptcot.teach.client import EndpointConfig, RetryConfig, split_reasoning
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.journal import collect, request_key, stored_rows
from adaptcot.teach.teacher import teach_endpoint


def samples_table(n: int, start: int = 0) -> pa.Table:
    ids = [f"q{i:03d}" for i in range(start, start + n)]
    return pa.table({"question_id": ids, "domain": ["math"] * n,
                     "question": [f"What is {i} + {i}?" for i in range(start, start + n)],
                     "reference_answer": [str(2 * i) for i in range(start, start + n)],
                     "level": ["wrong_mid"] * n})


def teacher(url: str, model: str, **endpoint) -> TeacherConfig:
    retry = endpoint.pop("retry", RetryConfig(base_delay_s=0.05, max_delay_s=0.5, idle_timeout_s=20))
    return TeacherConfig(name="tiny-teacher", samples=2, sampling=SamplingConfig(max_tokens=24, temperature=1.0),
                         prices={"input_usd_per_mtok": 0.55, "output_usd_per_mtok": 2.19},
                         endpoint=EndpointConfig(base_url=url, model=model, retry=retry, **endpoint))


def test_reasoning_is_read_in_all_three_conventions():
    assert split_reasoning({"content": "42", "reasoning_content": "think hard"}) == ("think hard", "42")
    assert split_reasoning({"content": "42", "reasoning": "channel"}) == ("channel", "42")
    assert split_reasoning({"content": "<think>a\nb</think>\n\nThe answer is 42"}) == ("a\nb", "The answer is 42")
    assert split_reasoning({"content": "<think>never finished"}) == ("never finished", "")
    assert split_reasoning({"content": "plain"}) == (None, "plain")


def test_a_missing_api_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("ADAPTCOT_TEST_KEY", raising=False)
    cfg = teacher("http://127.0.0.1:9/v1", "m", api_key_env="ADAPTCOT_TEST_KEY")
    with pytest.raises(ValueError, match="ADAPTCOT_TEST_KEY is not set"):
        teach_endpoint(samples_table(2), cfg, tmp_path / "teach")


@pytest.mark.slow
def test_every_cot_is_stored_once_and_a_rerun_requests_nothing(teacher_server, tmp_path, monkeypatch):
    proxy = FaultProxy(teacher_server[0])
    monkeypatch.setenv("ADAPTCOT_TEST_KEY", "sk-secret-value")
    cfg = teacher(proxy.url, teacher_server[1], api_key_env="ADAPTCOT_TEST_KEY", max_in_flight=8)
    out = tmp_path / "teach"
    report = teach_endpoint(samples_table(10), cfg, out)
    assert (report.requests_todo, report.received, report.failed, report.stored) == (20, 20, 0, 20)
    assert report.cost_usd > 0
    table = collect(out)
    keys = [request_key(q, "tiny-teacher", cfg.sampling_key(), i)
            for q, i in zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist())]
    assert len(set(keys)) == table.num_rows == 20
    assert all(t > 0 for t in table["completion_tokens"].to_pylist())
    again = teach_endpoint(samples_table(10), cfg, out)
    assert (again.requests_todo, sum(proxy.requests.values())) == (0, 20)
    # More questions later: only the new ones are requested.
    grown = teach_endpoint(samples_table(12), cfg, out)
    assert grown.requests_todo == 4 and max(proxy.requests.values()) == 1
    assert "sk-secret-value" not in "".join(p.read_text() for p in (out / "journal").glob("*.jsonl"))


@pytest.mark.slow
def test_429_500_stalls_and_cut_connections_are_retried(teacher_server, tmp_path):
    proxy = FaultProxy(teacher_server[0], fault_rate=0.6, stall_s=6.0)
    cfg = teacher(proxy.url, teacher_server[1], max_in_flight=16,
                  retry=RetryConfig(base_delay_s=0.05, max_delay_s=0.5, idle_timeout_s=4.0))
    out = tmp_path / "teach"
    report = teach_endpoint(samples_table(16), cfg, out)
    assert set(proxy.faults) == {"429", "500", "stall", "cut"}
    assert (report.received, report.failed, report.stored) == (32, 0, 32)
    assert report.retries >= sum(proxy.faults.values())  # (a slow answer under load may time out too)
    assert set(proxy.answered) == set(stored_rows(out))


@pytest.mark.slow
def test_a_refused_request_is_stored_as_failed_and_asked_again_next_run(teacher_server, tmp_path):
    cfg = teacher(teacher_server[0], "no-such-model", max_in_flight=4)
    out = tmp_path / "teach"
    report = teach_endpoint(samples_table(2), cfg, out)
    assert (report.received, report.failed, report.stored) == (0, 4, 0)
    assert all("404" in r["error"] for r in stored_rows(out).values())
    assert teach_endpoint(samples_table(2), cfg, out).requests_todo == 4


@pytest.mark.slow
def test_qps_limit_spaces_request_starts(teacher_server, tmp_path):
    proxy = FaultProxy(teacher_server[0])
    cfg = teacher(proxy.url, teacher_server[1], max_in_flight=16, qps=8.0)
    started = time.monotonic()
    teach_endpoint(samples_table(8), cfg, tmp_path / "teach")
    assert time.monotonic() - started >= 15 / 8.0  # 16 starts at 8 per second: at least 15 intervals


KILLABLE_RUN = """
import json, sys
import pyarrow.parquet as pq
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.teacher import teach_endpoint
cfg = TeacherConfig.model_validate_json(sys.argv[1])
teach_endpoint(pq.read_table(sys.argv[2]), cfg, sys.argv[3])
"""


@pytest.mark.slow
def test_a_killed_run_resumes_without_asking_for_anything_stored(teacher_server, tmp_path):
    proxy = FaultProxy(teacher_server[0])
    cfg = teacher(proxy.url, teacher_server[1], max_in_flight=4)
    pq.write_table(samples_table(20), tmp_path / "samples.parquet")
    out = tmp_path / "teach"
    run = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, cfg.model_dump_json(),
                            str(tmp_path / "samples.parquet"), str(out)])
    while len(proxy.answered) < 12 and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    stored_before = set(stored_rows(out))
    assert 0 < len(stored_before) < 40, "the kill should land mid-run"
    requests_before = dict(proxy.requests)

    report = teach_endpoint(samples_table(20), cfg, out)
    asked_again = {k for k, n in proxy.requests.items() if n > requests_before.get(k, 0)}
    assert not asked_again & stored_before  # nothing that was stored is paid for twice
    assert report.requests_todo == 40 - len(stored_before)
    table = collect(out)
    pairs = list(zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == 40  # no row lost, none twice
    json.dumps(report.lines())


@pytest.mark.slow
def test_an_in_cluster_teacher_through_ray_data_llm(ray_session, tiny_models_dir, tmp_path):
    from adaptcot.grade.answering import EngineConfig, ResourcesConfig, StudentConfig
    from adaptcot.teach.teacher import teach_in_cluster

    engine = StudentConfig(model=str(tiny_models_dir["teacher"]),
                           engine=EngineConfig(max_model_len=512, dtype="float32", enforce_eager=True),
                           resources=ResourcesConfig(cpus_per_engine=0.5, cpus_per_light_stage=0.1, batch_size=4))
    cfg = TeacherConfig(name="tiny-vllm", samples=2, sampling=SamplingConfig(max_tokens=16, temperature=1.0),
                        vllm=engine)
    out = tmp_path / "teach"
    report = teach_in_cluster(samples_table(5), cfg, out)
    assert (report.requests_todo, report.received, report.stored) == (10, 10, 10)
    table = collect(out)
    assert sorted(zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist())) == \
        sorted((f"q{i:03d}", s) for i in range(5) for s in range(2))
    assert set(table["level"].to_pylist()) == {"wrong_mid"} and all(t == 16 for t in table["completion_tokens"].to_pylist())
    parts = sorted((out / "parts").glob("part-*.parquet"))
    assert teach_in_cluster(samples_table(5), cfg, out).requests_todo == 0
    assert sorted((out / "parts").glob("part-*.parquet")) == parts


@pytest.mark.slow
def test_the_llm_judge_asks_the_endpoint_once_per_prompt(teacher_server):
    from adaptcot.teach.cot_filter import JudgeConfig, endpoint_judge

    proxy = FaultProxy(teacher_server[0], fault_rate=0.5)
    judge = endpoint_judge(JudgeConfig(max_tokens=8, endpoint=EndpointConfig(
        base_url=proxy.url, model=teacher_server[1], retry=RetryConfig(base_delay_s=0.01, idle_timeout_s=20))))
    replies = judge(["Is 1/2 equal to 0.5? Answer YES or NO.", "Is 2 equal to 3? Answer YES or NO."])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert len(proxy.answered) == 2


def test_a_second_teacher_run_on_the_same_output_stops_before_any_request(tmp_path):
    from adaptcot.common.lease import Lease, LeaseHeld
    from adaptcot.teach.teacher import teach

    out = tmp_path / "teach"
    pq.write_table(samples_table(2), tmp_path / "samples.parquet")
    cfg = teacher("http://127.0.0.1:9/v1", "m")  # nothing listens: a request would fail, not hang
    with Lease(str(out / "leases"), "the first run"):
        with pytest.raises(LeaseHeld, match="is being written by another run"):
            teach(tmp_path / "samples.parquet", cfg, out)
    assert not (out / "journal").exists()  # nothing was requested or written

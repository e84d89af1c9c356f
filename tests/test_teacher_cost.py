"""What the teacher costs: prices from litellm's bundled map, the dry run, the cap, spend per level and per kept CoT."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from teacher_fixtures import FaultProxy
from test_teacher import samples_table

from adaptcot.grade.answering import SamplingConfig
from adaptcot.teach.client import EndpointConfig, RetryConfig
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.cost import PricesConfig, resolve_prices, spend_lines, spend_of
from adaptcot.teach.journal import collect, journal_rows, stored_rows
from adaptcot.teach.teacher import plan, teach_endpoint


def priced_teacher(url: str, model: str, max_usd: float | None = None, **prices) -> TeacherConfig:
    return TeacherConfig(name="tiny-teacher", samples=1, sampling=SamplingConfig(max_tokens=24, temperature=1.0),
                         prices=prices or {"input_usd_per_mtok": 1000.0, "output_usd_per_mtok": 4000.0},
                         max_usd=max_usd, endpoint=EndpointConfig(
                             base_url=url, model=model, max_in_flight=4,
                             retry=RetryConfig(base_delay_s=0.05, max_delay_s=0.5, idle_timeout_s=20)))


def test_prices_are_read_from_litellms_bundled_map_without_importing_or_fetching_it():
    probe = ("import sys; from adaptcot.teach.cost import PricesConfig, resolve_prices; "
             "p = resolve_prices(PricesConfig(), 'deepseek-reasoner'); "
             "print(p.input, p.output, p.source, 'litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) > 0 and float(out[1]) > float(out[0])  # reasoning output is dearer than input
    assert "litellm's" in out and out[-1] == "False"  # read as a file: importing litellm would fetch the map
    batch = resolve_prices(PricesConfig(), "gpt-4o")  # OpenAI's batch prices are in the map: half the online ones
    assert batch.per_mtok(batch=True)[0] == pytest.approx(batch.input / 2)
    mine = resolve_prices(PricesConfig(output_usd_per_mtok=9.0), "deepseek-reasoner")
    assert (mine.output, mine.input) == (9.0, float(out[0]))  # an override wins field by field


def test_a_model_the_map_cannot_price_says_so_and_a_cap_on_it_fails_at_config_time():
    unknown = resolve_prices(PricesConfig(), "tiny-teacher")
    assert not unknown.known and unknown.cost(100, 100) is None and "tiny-teacher" in unknown.source
    with pytest.raises(ValueError, match="teacher.prices.model.*several providers"):
        resolve_prices(PricesConfig(), "gpt-oss-120b")  # offered by many providers at different prices
    # A model served by many providers, priced in the config (a self-hosted server at $0): no need to name one.
    assert resolve_prices(PricesConfig(input_usd_per_mtok=0, output_usd_per_mtok=0), "gpt-oss-120b").known
    gpt_oss = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="gpt-oss-120b")
    with pytest.raises(ValidationError, match="teacher.prices.model"):  # at config time, not at the first answer
        TeacherConfig(name="t", endpoint=gpt_oss)
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="tiny-teacher")
    with pytest.raises(ValidationError, match="teacher.max_usd needs prices"):
        TeacherConfig(name="t", endpoint=endpoint, max_usd=10)
    with pytest.raises(ValidationError, match="teacher.max_usd: a cap applies to online"):
        TeacherConfig(name="t", endpoint=endpoint, max_usd=10, mode="batch", prices={"input_usd_per_mtok": 1,
                                                                                    "output_usd_per_mtok": 1})


def test_spend_per_level_and_per_kept_cot_count_the_dropped_cots():
    cots = pa.table({"level": ["wrong_mid", "wrong_mid", "easy", None],
                     "cost_usd": [0.5, 0.25, 0.125, None], "drop_reason": [None, "wrong_answer", None, "error"]})
    spend = spend_of(cots)
    assert spend["usd"] == 0.875 and spend["usd_per_kept_cot"] == pytest.approx(0.875 / 2)
    assert list(spend["by_level"]) == ["easy", "wrong_mid", "(no level)"]  # easiest first
    assert spend["by_level"]["wrong_mid"]["usd_per_kept_cot"] == 0.75  # its dropped CoT was paid for too
    assert "$0.4375 per kept CoT" in "\n".join(spend_lines(spend))
    unpriced = spend_of(cots.set_column(1, "cost_usd", pa.array([None] * 4, pa.float64())))
    assert unpriced["usd"] is None and "unknown" in spend_lines(unpriced)[0]
    free = spend_of(cots.set_column(1, "cost_usd", pa.array([0.0] * 4)))
    assert free["usd"] == 0 and spend_lines(free) == [spend_lines(free)[0]] and "$0" in spend_lines(free)[0]


@pytest.mark.slow
def test_the_dry_run_estimates_from_what_is_stored_and_sends_nothing(teacher_server, tmp_path):
    proxy = FaultProxy(teacher_server[0])
    cfg, out = priced_teacher(proxy.url, teacher_server[1]), tmp_path / "teach"
    before = plan(samples_table(12), cfg, out)
    assert (before.requests, before.estimator.output_tokens) == (12, 24)  # nothing measured: max_tokens, an upper bound
    assert "sampling.max_tokens, an upper bound" in "\n".join(before.lines())
    teach_endpoint(samples_table(4), cfg, out)
    sent = sum(proxy.requests.values())
    after = plan(samples_table(12), cfg, out)
    assert sum(proxy.requests.values()) == sent == 4  # the dry run sent nothing
    stored = list(stored_rows(out).values())
    measured = sum(r["completion_tokens"] for r in stored) / len(stored)
    assert after.requests == 8 and after.estimator.output_tokens == pytest.approx(measured)
    per_token = sum(r["prompt_tokens"] for r in stored) / len(stored)  # prompts are alike: the measured ratio fits
    assert after.input_tokens / 8 == pytest.approx(per_token, rel=0.2)
    assert after.usd == pytest.approx((after.input_tokens * 1000 + after.output_tokens * 4000) / 1e6)
    assert after.spent_usd == pytest.approx(sum(r["cost_usd"] for r in stored))

    # The command: `adaptcot teach --config C --dry-run` on a job whose sample exists.
    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    pq.write_table(samples_table(12), run_dir / "samples" / "samples.parquet")
    overrides = [f"run_dir={run_dir}", "teacher.vllm=null", "tiny_models.enabled=false",
                 f"teacher.endpoint={json.dumps(cfg.endpoint.model_dump())}", "teacher.max_usd=1.0",
                 "teacher.prices.input_usd_per_mtok=1000", "teacher.prices.output_usd_per_mtok=4000"]
    argv = ["teach", "--config", "configs/local.yaml", "--dry-run"] + [a for o in overrides for a in ("--set", o)]
    result = subprocess.run([sys.executable, "-m", "adaptcot", *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "requests       12" in result.stdout and "teacher.max_usd $1.00" in result.stdout
    assert sum(proxy.requests.values()) == 4 and not (run_dir / "teach").exists()  # nothing sent, nothing written
    no_sample = subprocess.run([sys.executable, "-m", "adaptcot", *argv[:4], "--set", f"run_dir={tmp_path}/empty"],
                               capture_output=True, text=True)
    assert no_sample.returncode == 2 and "no sample yet; run `adaptcot sample`" in no_sample.stderr


@pytest.mark.slow
def test_the_cap_stops_new_requests_finishes_those_in_flight_and_a_higher_cap_goes_on(teacher_server, tmp_path):
    proxy, out = FaultProxy(teacher_server[0]), tmp_path / "teach"
    probe = priced_teacher(proxy.url, teacher_server[1])
    teach_endpoint(samples_table(2), probe, out)  # two stored answers: the estimate is measured, not max_tokens
    per_cot = max(r["cost_usd"] for r in stored_rows(out).values())
    spent = sum(r["cost_usd"] for r in stored_rows(out).values())
    cap = spent + 6.5 * per_cot
    report = teach_endpoint(samples_table(24), priced_teacher(proxy.url, teacher_server[1], max_usd=cap), out)
    rows = list(journal_rows(str(out)))
    total = sum(r["cost_usd"] for r in rows)
    assert 2 < len(rows) < 24 and report.capped and "teacher.max_usd" in report.capped
    assert total <= cap + 4 * per_cot  # past the cap by at most one in-flight window (4 requests)
    assert len(rows) == len(stored_rows(out)) and not any(r["error"] for r in rows)  # all sent ones were stored
    asked = sum(proxy.requests.values())
    again = teach_endpoint(samples_table(24), priced_teacher(proxy.url, teacher_server[1], max_usd=cap), out)
    total_again = sum(r["cost_usd"] for r in journal_rows(str(out)))
    assert again.capped and sum(proxy.requests.values()) - asked <= 4 and total_again <= cap + 4 * per_cot
    done = teach_endpoint(samples_table(24), priced_teacher(proxy.url, teacher_server[1], max_usd=cap * 100), out)
    assert done.capped is None and len(collect(out)) == 24 and max(proxy.requests.values()) == 1

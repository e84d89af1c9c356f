"""Evaluation on a tiny model with real vLLM: samples, verdicts, metrics, cascaded inference, the CLI."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.evaluation import EvalConfig, answer_key, metrics_of, sample_rows
from adaptcot.synthetic import code_rows, math_rows, write_jsonl

VERDICTS = {"passed", "wrong_answer", "no_answer", "runtime_error", "timeout", "memory_limit", "compile_error",
            "error", "sandbox_error"}


def test_answer_key_groups_boxed_answers():
    assert answer_key("math", "<think>\\boxed{9}</think> so \\boxed{ \\left(1, 2\\right) }.") == "(1,2)"
    assert answer_key("math", "no box here") is None and answer_key("code", "\\boxed{1}") is None


def test_sample_rows_count_undecided_attempts_as_not_correct_and_carry_levels():
    attempts = pa.table({"question_id": ["a", "a", "b"], "domain": ["math"] * 3, "sample_index": [0, 1, 0],
                         "response": ["\\boxed{1}", "\\boxed{1}", None], "num_tokens": [3, 4, 0],
                         "finish_reason": ["stop", "stop", "error"], "verdict": ["passed", "passed", "error"],
                         "correct": [True, True, None]})
    samples = sample_rows(attempts, "bench", {"a": "easy"})
    assert samples["correct"].to_pylist() == [True, True, False]
    assert samples["level"].to_pylist() == ["easy", "easy", None]
    m = metrics_of(samples)
    assert m["overall"]["majority_vote"] == 0.5 and set(m["by_level"]) == {"easy", "unknown"}


def test_unknown_benchmark_names_fail_at_config_time():
    with pytest.raises(ValueError, match="unknown benchmark 'math501'"):
        EvalConfig(model={"model": "m"}, benchmarks=["math501"])


@pytest.mark.slow
def test_eval_on_a_tiny_model_with_real_vllm(ray_session, tiny_models_dir, tmp_path, capsys):
    from adaptcot.cli import main as cli
    from adaptcot.evaluation import evaluate

    write_jsonl(math_rows(6, seed=1), tmp_path / "math.jsonl")
    write_jsonl(code_rows(3, seed=2), tmp_path / "code.jsonl")
    model = {"model": str(tiny_models_dir["student"]), "sampling": {"n": 3, "max_tokens": 12},
             "engine": {"max_model_len": 1024, "enforce_eager": True, "dtype": "float32"}}
    cfg = EvalConfig(model=model, out=str(tmp_path / "eval"), benchmarks=[
        {"name": "toy-math", "source": str(tmp_path / "math.jsonl"), "domain": "math", "preset": "gsm8k"},
        {"name": "toy-code", "source": str(tmp_path / "code.jsonl"), "domain": "code", "preset": "apps"}])
    metrics = evaluate(cfg)
    samples = pq.read_table(tmp_path / "eval" / "student" / "samples.parquet")
    assert samples.num_rows == (6 + 3) * 3
    assert set(samples["verdict"].to_pylist()) <= VERDICTS and all(t <= 12 for t in samples["num_tokens"].to_pylist())
    saved = json.loads((tmp_path / "eval" / "student" / "metrics.json").read_text())
    assert saved["benchmarks"].keys() == {"toy-math", "toy-code"} == metrics["benchmarks"].keys()
    math = saved["benchmarks"]["toy-math"]["overall"]
    assert (math["questions"], math["samples_per_question"], list(math["pass_at_k"])) == (6, 3, ["1", "2", "3"])
    lengths = sum(f == "length" for f in samples.filter(pa.compute.equal(samples["benchmark"], "toy-math"))[
        "finish_reason"].to_pylist())
    assert math["truncation_rate"] == pytest.approx(lengths / 18)
    assert "majority_vote" in math and saved["benchmarks"]["toy-code"]["overall"]["questions"] == 3

    # Cascaded, through the CLI: two generations per sample, so some answers count more than max_tokens tokens.
    rc = cli(["eval", "--model", str(tiny_models_dir["student"]), "--benchmarks", str(tmp_path / "math.jsonl"),
              "--preset", "gsm8k", "--n", "2", "--max-tokens", "12", "--max-model-len", "1024", "--dtype",
              "float32", "--enforce-eager", "--cascaded", "--out", str(tmp_path / "cascaded")])
    assert rc == 0 and "(cascaded)" in capsys.readouterr().out
    cascaded = pq.read_table(tmp_path / "cascaded" / "student" / "samples.parquet")
    assert cascaded.num_rows == 12 and max(cascaded["num_tokens"].to_pylist()) > 12
    assert all(t <= 24 for t in cascaded["num_tokens"].to_pylist())

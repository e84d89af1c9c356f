"""Evaluation on a tiny model with real vLLM: samples, verdicts, metrics, cascaded inference, the CLI."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.common.schemas import SFT_RECORDS
from adaptcot.demo.synthetic import code_rows, math_rows, write_jsonl
from adaptcot.evaluate.evaluation import EvalConfig, answer_key, metrics_of, sample_rows

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


def test_metrics_by_category_give_each_categorys_accuracy_and_are_printed():
    from adaptcot.evaluate.evaluation import format_metrics

    # LiveCodeBench-like: two easy questions (3/4 right), one medium (1/2), one hard (0/2), one without a category.
    qids = ["e1", "e1", "e2", "e2", "m1", "m1", "h1", "h1", "x", "x"]
    correct = [True, True, True, False, True, False, False, False, True, True]
    attempts = pa.table({"question_id": qids, "domain": ["code"] * 10, "sample_index": [0, 1] * 5,
                         "response": ["```python\nprint(1)\n```"] * 10, "num_tokens": [10] * 10,
                         "finish_reason": ["stop"] * 10, "verdict": ["passed" if c else "wrong_answer" for c in correct],
                         "correct": correct})
    categories = {"e1": "easy", "e2": "easy", "m1": "medium", "h1": "hard", "x": None}
    samples = sample_rows(attempts, "livecodebench", {}, categories)
    assert samples["category"].to_pylist() == [categories[q] for q in qids]
    m = metrics_of(samples)
    assert "by_level" not in m
    by = m["by_category"]
    assert {c: (by[c]["questions"], by[c]["accuracy"]) for c in by} == {
        "easy": (2, 0.75), "medium": (1, 0.5), "hard": (1, 0.0), "unknown": (1, 1.0)}
    assert m["overall"]["accuracy"] == pytest.approx((1 + 0.5 + 0.5 + 0 + 1) / 5)
    lines = format_metrics({"name": "student", "cascaded": False, "benchmarks": {"livecodebench": m}})
    assert lines[-1] == "    by category: easy 0.750 (2), medium 0.500 (1), hard 0.000 (1), unknown 1.000 (1)"
    assert "by_category" not in metrics_of(sample_rows(attempts, "b", {}))  # no categories: no such metrics


def test_multiple_choice_answers_vote_by_the_letter_chosen():
    responses = ["\\boxed{C}", "The answer is (C).", "\\boxed{\\text{B}}", "Answer: B", "**Answer:** C",
                 "<think>Answer: B, surely. But wait"]
    attempts = pa.table({"question_id": ["q"] * 6, "domain": ["math"] * 6, "sample_index": list(range(6)),
                         "response": responses, "num_tokens": [5] * 6, "finish_reason": ["stop"] * 5 + ["length"],
                         "verdict": ["passed", "passed", "wrong_answer", "wrong_answer", "passed", "no_answer"],
                         "correct": [True, True, False, False, True, False], "reference_answer": ["C"] * 6})
    samples = sample_rows(attempts, "gpqa_diamond", {})
    assert samples["answer_key"].to_pylist() == ["C", "C", "B", "B", "C", None]  # cut-off reasoning does not vote
    assert metrics_of(samples)["overall"]["majority_vote"] == 1.0


def test_metrics_count_which_rule_found_the_math_answers():
    from adaptcot.evaluate.evaluation import format_metrics

    attempts = pa.table({"question_id": ["a", "a", "b", "b"], "domain": ["math"] * 4, "sample_index": [0, 1] * 2,
                         "response": ["\\boxed{1}", "So it is $1$.", "So it is $3$.", "So it is"],
                         "num_tokens": [3] * 4, "finish_reason": ["stop", "stop", "stop", "length"],
                         "verdict": ["passed", "passed", "wrong_answer", "no_answer"],
                         "correct": [True, True, False, False],
                         "answer_rule": ["boxed", "last_expression", "last_expression", None]})
    samples = sample_rows(attempts, "bench", {})
    assert samples["answer_rule"].to_pylist() == ["boxed", "last_expression", "last_expression", None]
    m = metrics_of(samples)
    assert m["answer_rules"] == {"boxed": {"answers": 1, "correct": 1}, "last_expression": {"answers": 2, "correct": 1}}
    lines = format_metrics({"name": "student", "cascaded": False, "benchmarks": {"bench": m}})
    assert lines[2] == "    answers found by rule: boxed 1 (1 correct), last_expression 2 (1 correct)"
    assert "answer_rules" not in metrics_of(sample_rows(attempts.drop_columns(["answer_rule"]), "bench", {}))


def test_gpqa_and_livecodebench_are_known_names():
    cfg = EvalConfig(model={"model": "m"}, benchmarks=["gpqa_diamond", "livecodebench"])
    gpqa, lcb = cfg.specs()
    assert (gpqa.source, gpqa.hf_config, gpqa.hf_split, gpqa.domain) == ("hf:Idavidrein/gpqa", "gpqa_diamond",
                                                                         "train", "math")
    assert (lcb.domain, lcb.preset) == ("code", "livecodebench") and lcb.source.startswith("hf://datasets/")


def test_local_files_in_the_hub_formats_load_as_benchmarks(tmp_path):
    from adaptcot.evaluate.evaluation import BenchmarkSpec, load_benchmark

    gpqa = {"Question": "Which particle mediates the electromagnetic force?", "Correct Answer": "photon",
            "Incorrect Answer 1": "gluon", "Incorrect Answer 2": "W boson", "Incorrect Answer 3": "graviton",
            "Record ID": "rec1"}
    lcb = {"question_content": "Print the sum of A and B.", "starter_code": "", "difficulty": "hard",
           "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
           "private_test_cases": "[]", "metadata": "{}", "question_id": "abc1_a"}
    write_jsonl([gpqa], tmp_path / "gpqa.jsonl")
    write_jsonl([lcb], tmp_path / "lcb.jsonl")
    mc = load_benchmark(BenchmarkSpec(name="gpqa", source=str(tmp_path / "gpqa.jsonl"), domain="math",
                                      preset="gpqa"), tmp_path / "eval").to_pylist()[0]
    code = load_benchmark(BenchmarkSpec(name="lcb", source=str(tmp_path / "lcb.jsonl"), domain="code",
                                        preset="livecodebench"), tmp_path / "eval").to_pylist()[0]
    assert f"{mc['reference_answer']}) photon" in mc["question"] and mc["category"] is None
    assert (code["category"], code["tests"]["kind"]) == ("hard", "stdin_stdout")


def test_unknown_benchmark_names_fail_at_config_time():
    with pytest.raises(ValueError, match="unknown benchmark 'math501'"):
        EvalConfig(model={"model": "m"}, benchmarks=["math501"])


@pytest.mark.slow
def test_eval_on_a_tiny_model_with_real_vllm(ray_session, tiny_models_dir, tmp_path, capsys):
    from adaptcot.evaluate.evaluation import evaluate
    from adaptcot.job.cli import main as cli

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
    code = saved["benchmarks"]["toy-code"]["overall"]
    assert "majority_vote" in math and code["questions"] == 3 and "majority_vote" not in code  # no answers to vote

    # Cascaded, through the CLI: two generations per sample, so some answers count more than max_tokens tokens.
    rc = cli(["eval", "--model", str(tiny_models_dir["student"]), "--benchmarks", str(tmp_path / "math.jsonl"),
              "--preset", "gsm8k", "--n", "2", "--max-tokens", "12", "--max-model-len", "1024", "--dtype",
              "float32", "--enforce-eager", "--cascaded", "--out", str(tmp_path / "cascaded")])
    assert rc == 0 and "(cascaded)" in capsys.readouterr().out
    cascaded = pq.read_table(tmp_path / "cascaded" / "student" / "samples.parquet")
    assert cascaded.num_rows == 12 and max(cascaded["num_tokens"].to_pylist()) > 12
    assert all(t <= 24 for t in cascaded["num_tokens"].to_pylist())


def test_a_benchmark_that_cannot_be_read_fails_before_any_model_starts(tmp_path, capsys):
    from adaptcot.job.cli import main as cli

    rc = cli(["eval", "--model", str(tmp_path / "no-model"), "--benchmarks", str(tmp_path / "missing.jsonl"),
              "--out", str(tmp_path / "eval")])
    assert rc == 2 and "source not found" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "no-model").exists()


def test_cascaded_eval_takes_the_rationale_prompt_from_the_sft_records(tmp_path):
    from adaptcot.evaluate.evaluation import second_turn_prompts, with_sft_prompts
    from adaptcot.sft.records import SFTConfig, write_records

    sft = SFTConfig(formats=["cascod"], math_prompt="Solve: {question}", rationale_prompt="{prompt}\nR: {rationale}\nA:")
    write_records(pa.Table.from_pylist([], schema=SFT_RECORDS), tmp_path / "sft", config=sft)
    model = {"model": "m", "math_prompt": "Solve: {question}"}
    cfg = with_sft_prompts(EvalConfig(model=model, benchmarks=["gsm8k"], cascaded=True,
                                      sft_records=str(tmp_path / "sft")))
    assert cfg.rationale_prompt == "{prompt}\nR: {rationale}\nA:"
    row = {"question_id": "q", "domain": "math", "question": "1 + 1?", "rationale": "one and one make two"}
    assert second_turn_prompts([row], cfg) == ["Solve: 1 + 1?\nR: one and one make two\nA:"]
    plain = EvalConfig(model=model, benchmarks=["gsm8k"], cascaded=False, sft_records=str(tmp_path / "sft"))
    assert with_sft_prompts(plain) is plain  # read only for cascaded evaluations


def test_cascaded_eval_refuses_prompts_that_differ_from_the_sft_records(tmp_path):
    from adaptcot.evaluate.evaluation import with_sft_prompts
    from adaptcot.sft.records import SFTConfig, write_records

    write_records(pa.Table.from_pylist([], schema=SFT_RECORDS), tmp_path / "sft",
                  config=SFTConfig(formats=["cascod"], math_prompt="Solve: {question}"))
    cfg = EvalConfig(model={"model": "m"}, benchmarks=["gsm8k"], cascaded=True, sft_records=str(tmp_path / "sft"))
    with pytest.raises(ValueError, match=r"math_prompt here is '.*\{question\}.*' but .* built with 'Solve: "):
        with_sft_prompts(cfg)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"math_prompt": "Solve: {question}"})})
    with pytest.raises(ValueError, match="rationale_prompt here is 'R: {rationale}'"):
        with_sft_prompts(EvalConfig(**{**cfg.model_dump(), "rationale_prompt": "R: {rationale}"}))

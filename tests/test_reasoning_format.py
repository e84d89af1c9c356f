"""gpt-oss's harmony replies are split into reasoning and answer wherever `<think>` replies are (common/reasoning.py).

The replies below are written the way gpt-oss writes them: as vLLM returns them with special tokens kept (no
leading `<|start|>assistant`, which is in the prompt; the stop token `<|return|>` sometimes left out), and as a
server with no reasoning parser returns them.
"""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.common.reasoning import Reply, split_reply
from adaptcot.evaluate.evaluation import answer_key
from adaptcot.grade.answering import StudentConfig, sampling_params, writes_harmony
from adaptcot.grade.prm import split_steps
from adaptcot.teach.client import split_reasoning
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.cot_filter import parse_judgement
from adaptcot.teach.teacher import _write_part
from adaptcot.verify.code_answers import extract_code
from adaptcot.verify.math_answers import MathVerifier, verify_math

# Analysis drafts a wrong box; the final channel states the answer (vLLM output, stop token not included).
MATH = ("<|channel|>analysis<|message|>We need the sum of all integer bases b > 9 for which 17_b divides 97_b. "
        "17_b = b + 7 and 97_b = 9b + 7. First guess: b + 7 divides 9b + 7 only for b = 49, so \\boxed{49}? "
        "Wait: 9b + 7 = 9(b + 7) - 56, so b + 7 must divide 56. Divisors of 56 above 16 are 28 and 56, so b = 21 "
        "or b = 49. Sum = 70.<|end|><|start|>assistant<|channel|>final<|message|>Since $97_b = 9(b+7) - 56$, "
        "$b+7$ divides $56$; with $b > 9$ this gives $b = 21$ or $b = 49$.\n\nThe answer is 70.")
# Reasoning, a commentary preamble, a python tool call and its result, then the final program (<|return|> kept).
CODE = ("<|start|>assistant<|channel|>analysis<|message|>Read n, print the sum of squares 1..n. Draft:\n"
        "```python\nprint(sum(range(int(input()))))\n```\nThat sums, it does not square. Let me check.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>I'll check the formula on a small case first.<|end|>"
        "<|start|>assistant to=python<|channel|>commentary code<|message|>print(sum(i*i for i in range(1, 4)))"
        "<|call|><|start|>python to=assistant<|channel|>commentary<|message|>14<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Sum the squares directly:\n\n```python\nn = int(input())\n"
        "print(sum(i * i for i in range(1, n + 1)))\n```<|return|>")
CUT_OFF = ("<|channel|>analysis<|message|>Let's compute 12 * 6 = 72. So the answer is 72, but let me double-check "
           "the units: the question asks for dozens, so")
# A gpt-oss judge with structured output: <|constrain|> in the final header.
JUDGE = ("<|channel|>analysis<|message|>Reference 1/2, candidate 0.5. At first glance NO, the forms differ; but "
         "0.5 = 1/2.<|end|><|start|>assistant<|channel|>final <|constrain|>text<|message|>YES<|return|>")


@pytest.mark.parametrize("text, expected", [
    (MATH, Reply(MATH.split("<|message|>")[1].split("<|end|>")[0], MATH.rsplit("<|message|>", 1)[1], False,
                 "harmony")),
    (CUT_OFF, Reply(CUT_OFF.split("<|message|>")[1], "", True, "harmony")),
    (JUDGE, Reply("Reference 1/2, candidate 0.5. At first glance NO, the forms differ; but 0.5 = 1/2.", "YES",
                  False, "harmony")),
    ("<|channel|>final<|message|>42<|return|>", Reply(None, "42", False, "harmony")),  # no analysis at all
    ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>fin", Reply("a", "", True, "harmony")),
    # <think>: today's rules, unchanged
    ("<think>a\nb</think>\n\nThe answer is 42", Reply("a\nb", "\n\nThe answer is 42", False, "think")),
    ("<think>x</think>draft</think>final", Reply("x</think>draft", "final", False, "think")),  # the LAST </think>
    ("thoughts</think> 42", Reply("thoughts", " 42", False, "think")),  # <think> was in the prompt
    ("<think>never finished", Reply("never finished", "", True, "think")),
    ("plain \\boxed{3}", Reply(None, "plain \\boxed{3}", False, "plain")),
    ("", Reply(None, "", False, "plain")),
])
def test_split_reply(text, expected):
    assert split_reply(text) == expected


def test_all_non_final_channels_are_reasoning_in_order():
    reply = split_reply(CODE)
    assert reply.reasoning.split("\n\n")[-3:] == ["I'll check the formula on a small case first.",
                                                  "print(sum(i*i for i in range(1, 4)))", "14"]
    assert reply.reasoning.startswith("Read n, print the sum of squares") and "<|" not in reply.reasoning
    assert reply.answer.startswith("Sum the squares directly:") and reply.answer.endswith("```")


def test_math_answer_is_read_from_the_final_channel_not_the_analysis():
    verdict = verify_math(MATH, "70", finished=True)
    assert (verdict.verdict, verdict.rule) == ("passed", "marker")  # the analysis' \boxed{49} is not the answer
    cut = verify_math(CUT_OFF, "72", finished=False)
    assert (cut.verdict, cut.detail) == ("no_answer", "reasoning cut off: no final channel")
    with MathVerifier(workers=1, timeout_s=10.0) as verifier:
        got = verifier.verify_many([(MATH, "70"), (MATH, "49")], finished=[True, True])
    assert [v.correct for v in got] == [True, False]


def test_choice_and_answer_key_come_from_the_final_channel():
    choice = "<|channel|>analysis<|message|>Options: \\boxed{B} looks tempting, but (C) fits.<|end|>" \
             "<|start|>assistant<|channel|>final<|message|>The answer is \\boxed{C}.<|return|>"
    assert verify_math(choice, "C").correct is True
    assert answer_key("math", choice, "C") == "C"
    assert answer_key("math", choice.replace("\\boxed{C}", "\\boxed{ \\frac{1}{2} }")) == "\\frac{1}{2}"


def test_code_is_extracted_from_the_final_channel():
    program = "n = int(input())\nprint(sum(i * i for i in range(1, n + 1)))\n"
    assert extract_code(CODE) == program
    assert extract_code(CODE, choice="first") == program  # never the draft in the analysis
    assert extract_code(CODE.split("<|start|>assistant<|channel|>final")[0]) is None  # cut off before the final


def test_judge_verdict_is_read_from_the_final_channel():
    assert parse_judgement(JUDGE) is True
    assert parse_judgement(JUDGE.split("<|end|>")[0]) is None  # cut off while reasoning


def test_client_splits_raw_harmony_content():
    reasoning, answer = split_reasoning({"content": MATH})
    assert reasoning.startswith("We need the sum") and reasoning.endswith("Sum = 70.")
    assert answer.startswith("Since $97_b") and "<|" not in answer
    assert split_reasoning({"content": CUT_OFF}) == (CUT_OFF.split("<|message|>")[1], "")
    assert split_reasoning({"content": "The answer is 70.", "reasoning": "analysis text"}) == ("analysis text",
                                                                                                "The answer is 70.")


def test_prm_steps_have_no_harmony_markers():
    assert split_steps("<|channel|>analysis<|message|>Step one.\n\nStep two.<|end|><|start|>assistant"
                       "<|channel|>final<|message|>\\boxed{3}<|return|>", "double_newline") == [
        "Step one.", "Step two.", "\\boxed{3}"]


def test_in_cluster_teacher_rows_separate_reasoning_and_answer(tmp_path):
    cfg = TeacherConfig(name="gpt-oss-20b", vllm=StudentConfig(model="openai/gpt-oss-20b"))
    batch = pa.table({"question_id": ["q1", "q2", "q3"], "domain": ["math", "code", "math"],
                      "sample_index": [0, 0, 1], "response": [MATH, CODE, CUT_OFF], "num_tokens": [180, 240, 4096],
                      "finish_reason": ["stop", "stop", "length"], "__inference_error__": ["", "", ""]})
    counts = _write_part(batch, cfg, str(tmp_path), {"q1": "wrong_mid"})
    assert counts.to_pylist() == [{"received": 3, "failed": 0, "cost_usd": 0.0}]
    rows = {r["question_id"]: r for r in pq.read_table(next((tmp_path / "parts").glob("*.parquet"))).to_pylist()}
    assert rows["q1"]["reasoning"].endswith("Sum = 70.") and rows["q1"]["answer_text"].endswith("The answer is 70.")
    assert rows["q1"]["level"] == "wrong_mid"
    assert "```python\nn = int(input())" in rows["q2"]["answer_text"] and "Draft" in rows["q2"]["reasoning"]
    assert rows["q3"]["answer_text"] == "" and rows["q3"]["reasoning"].startswith("Let's compute")
    assert not any("<|" in (r["answer_text"] + r["reasoning"]) for r in rows.values())


@pytest.mark.parametrize("model, name, fmt, harmony", [
    ("openai/gpt-oss-20b", None, "auto", True),
    ("/models/gpt_oss_120b_ckpt", None, "auto", True),
    ("/models/student-7", "GPT-OSS-student", "auto", True),
    ("Qwen/Qwen3-0.6B", None, "auto", False),
    ("openai/gpt-oss-20b", None, "think", False),
    ("/models/finetuned", None, "harmony", True),
])
def test_special_tokens_are_kept_for_harmony_models(model, name, fmt, harmony):
    cfg = StudentConfig(model=model, name=name, reasoning_format=fmt)
    params = sampling_params(cfg)
    assert writes_harmony(cfg) is harmony
    assert params.get("skip_special_tokens", True) is not harmony
    assert {k: params[k] for k in ("temperature", "top_p", "max_tokens")} == {"temperature": 0.6, "top_p": 0.95,
                                                                             "max_tokens": 2048}
    assert ("reasoning_format" in cfg.answering_key()) is harmony  # other models keep their grader ids


def test_vllm_sampling_fields_reach_the_requests_and_leave_other_configs_keys_alone():
    cfg = StudentConfig(model="Qwen/Qwen3-0.6B", sampling={"max_tokens": 64, "ignore_eos": True, "stop": ["END"],
                                                           "top_k": "20"})
    params = sampling_params(cfg)
    assert (params["ignore_eos"], params["stop"], params["top_k"], params["max_tokens"]) == (True, ["END"], 20, 64)
    plain = StudentConfig(model="Qwen/Qwen3-0.6B")
    assert plain.answering_key()["sampling"] == {"n": 1, "temperature": 0.6, "top_p": 0.95, "max_tokens": 2048}
    assert cfg.answering_key()["sampling"]["ignore_eos"] is True  # a set field is part of the grader id
    for bad, named in (({"ignore_eoss": True}, "sampling.ignore_eoss"), ({"seed": 3}, "sampling.seed"),
                       ({"skip_special_tokens": False}, "reasoning_format"), ({"min_p": "x"}, "sampling.min_p")):
        with pytest.raises(ValueError, match=named):
            StudentConfig(model="m", sampling=bad)


def test_vllm_sampling_fields_are_vllm_sampling_params_fields():
    from vllm.sampling_params import SamplingParams

    from adaptcot.grade.answering import MANAGED_SAMPLING, VLLM_SAMPLING
    assert set(VLLM_SAMPLING) | set(MANAGED_SAMPLING) <= set(SamplingParams.__struct_fields__)


def test_a_harmony_model_is_answered_through_ray_data_llm_with_the_engines_own_text(tiny_models_dir, ray_session,
                                                                                  tmp_path):
    """The path gpt-oss takes (special tokens kept by the engine's own detokenizing: the processor has no stage that
    re-decodes) returns the engine's text and token counts: here with the tiny student under a gpt-oss name."""
    import shutil

    import ray

    from adaptcot.grade.answering import CARRIED, answer_processor

    model = tmp_path / "tiny-gpt-oss"
    shutil.copytree(tiny_models_dir["student"], model)
    # ignore_eos (a vLLM sampling field) makes every answer its max_tokens long; q0's own request asks for 5
    cfg = StudentConfig(model=str(model), sampling={"n": 1, "temperature": 0.0, "max_tokens": 12, "ignore_eos": True},
                        engine={"max_model_len": 512, "dtype": "float32", "enforce_eager": True},
                        resources={"cpus_per_engine": 0.5, "cpus_per_light_stage": 0.1})
    assert writes_harmony(cfg)
    rows = [{**dict.fromkeys(CARRIED), "question_id": f"q{i}", "domain": "math", "question": f"What is {i} + 1?",
             "sample_index": 0} for i in range(3)]
    out = answer_processor(cfg, row_sampling=lambda row: {"max_tokens": 5} if row["question_id"] == "q0" else {})(
        ray.data.from_items(rows)).take_all()
    assert sorted(r["question_id"] for r in out) == ["q0", "q1", "q2"]
    assert all(r["response"] and r["finish_reason"] == "length" and not r["__inference_error__"] for r in out)
    assert {r["question_id"]: r["num_tokens"] for r in out} == {"q0": 5, "q1": 12, "q2": 12}

"""`engine.in_process`: vLLM in the Ray Data actor's own process (grade/in_process.py) answers like ray.data.llm's
processor: the same rows, the same greedy text, a refused request as an error row of its own."""

from __future__ import annotations

import pytest

from adaptcot.grade.answering import CARRIED, StudentConfig


def student(model, in_process: bool, **sampling) -> StudentConfig:
    return StudentConfig(model=str(model), sampling={"n": 1, "temperature": 0.0, "max_tokens": 12, **sampling},
                         engine={"max_model_len": 256, "dtype": "float32", "enforce_eager": True,
                                 "in_process": in_process},
                         resources={"cpus_per_engine": 0.5, "cpus_per_light_stage": 0.1, "batch_size": 4,
                                    "max_concurrent_batches": 4})


def rows(n: int) -> list[dict]:
    return [{**dict.fromkeys(CARRIED), "question_id": f"q{i}", "domain": "math", "question": f"What is {i} + 1?",
             "reference_answer": str(i + 1), "sample_index": 0} for i in range(n)]


def test_in_process_refuses_what_one_process_cannot_run():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        StudentConfig(model="m", engine={"in_process": True, "tensor_parallel_size": 2})


@pytest.mark.slow
def test_in_process_answers_every_row_once_with_ray_data_llms_greedy_text(tiny_models_dir, ray_session):
    import ray

    from adaptcot.grade.answerer import answerer

    questions = rows(10)
    # A question far longer than the engine's context: the engine refuses it; that row is an error, the rest go on.
    questions.append({**questions[0], "question_id": "too_long", "question": "one plus one " * 400})
    # q0's own request asks for 5 tokens (row_sampling), every other answer runs to max_tokens (ignore_eos)
    short_q0 = lambda row: {"max_tokens": 5} if row["question_id"] == "q0" else {}  # noqa: E731
    answers = {}
    for in_process in (True, False):
        cfg = student(tiny_models_dir["student"], in_process, ignore_eos=True)
        out = answerer(cfg, short_q0)(ray.data.from_items(questions, override_num_blocks=3)).take_all()
        assert sorted(r["question_id"] for r in out) == sorted(q["question_id"] for q in questions)
        answers[in_process] = {r["question_id"]: r for r in out}
    mine, theirs = answers[True], answers[False]
    assert mine["too_long"]["__inference_error__"] and mine["too_long"]["response"] is None
    assert theirs["too_long"]["__inference_error__"]
    ok = [q for q in mine if q != "too_long"]
    assert all(not mine[q]["__inference_error__"] and mine[q]["finish_reason"] == "length" for q in ok)
    assert {q: mine[q]["num_tokens"] for q in ok} == {q: 5 if q == "q0" else 12 for q in ok}
    assert {q: mine[q]["response"] for q in ok} == {q: theirs[q]["response"] for q in ok}
    assert all(mine[q]["reference_answer"] == theirs[q]["reference_answer"] for q in ok)  # carried fields
    # A batch the engine refuses whole still has typed answer columns (Ray Data joins it to the other blocks).
    cfg = student(tiny_models_dir["student"], True)
    refused = answerer(cfg)(ray.data.from_items([questions[-1], {**questions[-1], "question_id": "too_long_2"}],
                                                override_num_blocks=1))
    out = refused.union(answerer(cfg)(ray.data.from_items(questions[:2]))).take_all()
    assert sorted((r["question_id"], bool(r["__inference_error__"]), r["response"] is None) for r in out) == \
        [("q0", False, False), ("q1", False, False), ("too_long", True, True), ("too_long_2", True, True)]

"""Teacher CoT filtering with the real verifiers: math-verify worker processes and namespaced sandboxes.

The LLM judge is a plain function here (prompts in, replies out), standing in for the OpenAI-compatible endpoint
the caller wires in; what is under test is which rows reach it, what they carry, and how its replies are read.
"""

import json

import pyarrow as pa
import pytest
from pydantic import ValidationError

from adaptcot.common import schemas
from adaptcot.teach.cot_filter import (CoTFilterActor, FilterConfig, FilterReport, JudgeConfig, filter_cots,
                                       parse_judgement)
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
from adaptcot.verify.math_answers import MathVerifier
from adaptcot.verify.sandbox import SandboxConfig

CODE = CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces", timeout_s=2.0, memory_mb=256), workers=2)
CONFIG = FilterConfig(max_completion_tokens=4096, verify_workers=2, verify_timeout_s=3.0, code=CODE)
SUM_TESTS = {"kind": "stdin_stdout", "cases": [{"input": "3\n1 2 3\n", "output": "6\n"},
                                               {"input": "2\n-5 5\n", "output": "0\n"}]}
RIGHT_PROGRAM = "Read n, then sum the numbers.\n\n```python\ninput()\nprint(sum(map(int, input().split())))\n```\n"
WRONG_PROGRAM = "Take the largest.\n\n```python\ninput()\nprint(max(map(int, input().split())))\n```\n"
UNFENCED_PROGRAM = "input()\nprint(sum(map(int, input().split())))\n"
CLIPS = "Natalia sold 48 clips in April and half as many in May. How many did she sell in April and May?"
CLIPS_ANSWER = "She sold $48 + 24 = 72$ clips.\n\n**Final Answer**\n\\[\n\\boxed{72}\n\\]"
HANG = "The answer is \\boxed{9^{9^{9^{9}}}}."  # sympy evaluates the power tower exactly: the verifier times out


def question(qid, domain, text, reference=None, tests=None, level="easy"):
    return {"question_id": qid, "domain": domain, "student": "s", "grader_id": "g", "level": level,
            "difficulty_rank": schemas.Level(level).rank, "question": text, "reference_answer": reference,
            "tests": tests, "starter_code": None}


def cot(qid, domain, answer, level="easy", finish="stop", tokens=900, error=None, index=0, **stale):
    return {"question_id": qid, "domain": domain, "teacher": "r1", "sampling_key": "k", "sample_index": index,
            "level": level, "reasoning": None if error else "Let me think step by step.", "answer_text": answer,
            "prompt_tokens": 80, "completion_tokens": None if error else tokens,
            "finish_reason": None if error else finish, "cost_usd": 0.01, "error": error, **stale}


def tables(cots, questions):
    return (pa.Table.from_pylist(cots, schema=schemas.TEACHER_COTS),
            pa.Table.from_pylist(questions, schema=schemas.SAMPLES))


def column(table, name):
    return table.column(name).to_pylist()


@pytest.fixture(scope="module")
def math():
    with MathVerifier(workers=CONFIG.verify_workers, timeout_s=CONFIG.verify_timeout_s) as verifier:
        verifier.verify_many([("\\boxed{1}", "1")] * 2)  # start the workers outside the timed pairs
        yield verifier


@pytest.fixture(scope="module")
def code():
    with CodeVerifier(CODE) as verifier:
        yield verifier


# --- Reading the judge's reply ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ("YES", True), ("NO", False), ("Yes.", True), ("**Verdict:** no", False), ("\\boxed{YES}", True),
    ("The two answers are equivalent.", True), ("The two answers are not equivalent.", False),
    ("They are non-equivalent.", False), ("3/4 isn't equivalent to 0.7.", False),
    ("At first I thought no, but 0.75 = 3/4.\nYES", True),  # the last verdict word wins
    ("<think>Is 1/2 the same as 0.5? Yes, equivalent.</think>\n\nNO", False),  # only what follows the reasoning
    ("<think>\nThey look equivalent, so the answer is YES... but wait", None),  # reasoning cut off
    ("<think>Yes.</think>\nI cannot tell from the text given.", None),
    ("Unknown", None), ("", None), (None, None),
])
def test_parse_judgement(reply, expected):
    assert parse_judgement(reply) is expected


# --- Configuration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"on": ["passed"]}, {"on": []}, {"prompt": "Is {answer} right?"}, {"prompt": "{reference} {answer} {score}"},
    {"prompt": "{reference} {answer!z}"}, {"model": "qwen"},
])
def test_judge_config_rejects_what_cannot_work(bad):
    with pytest.raises(ValidationError):
        JudgeConfig(**bad)


def test_filter_config_rejects_a_judge_that_never_sees_its_rows():
    with pytest.raises(ValidationError, match="bad_format"):
        FilterConfig(judge=JudgeConfig(on=["no_answer"]))
    assert FilterConfig(require_format=False, judge=JudgeConfig(on=["no_answer"])).judge.on == ("no_answer",)
    with pytest.raises(ValidationError):
        FilterConfig(max_completion_tokens=0)


# --- Checks in order, math and code in one batch ---------------------------------------------------------------------
ROWS = [  # (cot, drop_reason, verdict, correct)
    (cot("m1", "math", CLIPS_ANSWER), None, "passed", True),
    (cot("m2", "math", "So the total is \\boxed{70}.", level="wrong_mid"), "wrong_answer", "wrong_answer", False),
    (cot("c1", "code", RIGHT_PROGRAM, level="wrong_mid"), None, "passed", True),
    (cot("c2", "code", WRONG_PROGRAM, index=1), "wrong_answer", "wrong_answer", False),
    (cot("m3", "math", None, finish="length", tokens=8192), "truncated", None, None),  # also too long
    (cot("m4", "math", CLIPS_ANSWER, tokens=5000, level="wrong_hardest"), "too_long", None, None),
    (cot("m5", "math", None, error="HTTP 503 after 3 retries", verdict="passed", correct=True), "error", None, None),
    (cot("m6", "math", "Adding both months gives the total number of clips she sold."), "bad_format", "no_answer",
     False),  # no answer at all (a result stated in prose is read: see the extraction tests below)
    (cot("c3", "code", UNFENCED_PROGRAM, level="wrong_hardest"), "bad_format", "no_answer", False),
]
QUESTIONS = [question(q, "math", CLIPS, "72") for q in ("m1", "m2", "m3", "m4", "m5", "m6")] + \
            [question(q, "code", "Print the sum of the n numbers.", tests=SUM_TESTS) for q in ("c1", "c2", "c3")]


def test_rows_are_kept_or_dropped_by_the_first_check_that_applies(math, code):
    cots, questions = tables([r[0] for r in ROWS], QUESTIONS)
    out = filter_cots(cots, questions, CONFIG, math, code)
    assert out.schema.equals(schemas.TEACHER_COTS, check_metadata=True)
    assert column(out, "question_id") == column(cots, "question_id")  # same rows, same order
    assert column(out, "drop_reason") == [r[1] for r in ROWS]
    assert column(out, "verdict") == [r[2] for r in ROWS]  # the stale verdict of the failed request is gone
    assert column(out, "correct") == [r[3] for r in ROWS]
    details = dict(zip(column(out, "question_id"), column(out, "verify_detail")))
    assert "finish_reason 'length'" in details["m3"] and "5000 completion tokens > 4096" in details["m4"]
    assert "HTTP 503" in details["m5"] and "expected '72', got '70'" in details["m2"]
    assert "case 1/2" in details["c2"]
    assert column(out, "answer_text") == column(cots, "answer_text")  # everything else passes through


def test_report_counts_kept_per_level_and_drops_per_reason(math, code):
    out = filter_cots(*tables([r[0] for r in ROWS], QUESTIONS), CONFIG, math, code)
    report = FilterReport.of(out)
    assert report.rows == 9
    assert report.kept == {"easy": 1, "wrong_mid": 1}
    assert report.dropped == {"wrong_answer": 2, "truncated": 1, "too_long": 1, "error": 1, "bad_format": 2}
    assert report.dropped_by_level == {"easy": {"wrong_answer": 1, "truncated": 1, "error": 1, "bad_format": 1},
                                       "wrong_mid": {"wrong_answer": 1},
                                       "wrong_hardest": {"too_long": 1, "bad_format": 1}}
    assert report.lines()[:3] == ["teacher CoTs: 9, kept 2, dropped 7",
                                  "  kept per level: easy 1, wrong_mid 1, wrong_hardest 0",
                                  "  dropped: error 1, truncated 1, too_long 1, bad_format 2, wrong_answer 2"]
    assert "    wrong_hardest: too_long 1, bad_format 1" in report.lines()


def test_checks_that_are_switched_off_let_rows_through_to_the_verifier(math, code):
    config = FilterConfig(drop_truncated=False, require_format=False, verify_workers=2, code=CODE)
    out = filter_cots(*tables([r[0] for r in ROWS], QUESTIONS), config, math, code)
    drops = dict(zip(column(out, "question_id"), column(out, "drop_reason")))
    assert drops["m4"] is None  # no length limit: the right answer is kept
    assert drops["m3"] == drops["m6"] == drops["c3"] == "wrong_answer"  # no answer is a wrong answer
    assert drops["m5"] == "error"


PROSE_CLIPS = "She sold 48 clips in April and 24 in May, so she sold 72 clips altogether."  # no box, no marker


def test_a_finished_prose_answer_is_kept_and_counted_by_its_rule(math):
    rows = [cot("m1", "math", CLIPS_ANSWER), cot("m2", "math", PROSE_CLIPS),
            cot("m3", "math", PROSE_CLIPS, finish="length"), cot("m4", "math", PROSE_CLIPS, finish=None)]
    cots, questions = tables(rows, [question(f"m{i}", "math", CLIPS, "72") for i in range(1, 5)])
    config = CONFIG.model_copy(update={"drop_truncated": False})  # the cut-off CoT reaches the verifier
    out = filter_cots(cots, questions, config, math, None)
    assert column(out, "drop_reason") == [None, None, "bad_format", "bad_format"]  # only a finished CoT's prose
    assert column(out, "verify_detail")[:2] == ["answer rule: boxed", "answer rule: last_expression"]
    report = FilterReport.of(out, config.math_extraction)
    assert report.rules == {"boxed": 1, "last_expression": 1}
    assert report.lines()[-1] == "  kept math answers found by rule (extraction math_verify): boxed 1, last_expression 1"


def test_strict_extraction_drops_a_prose_answer_as_bad_format():
    config = CONFIG.model_copy(update={"math_extraction": "strict"})
    cots, questions = tables([cot("m1", "math", PROSE_CLIPS)], [question("m1", "math", CLIPS, "72")])
    with MathVerifier(workers=1, timeout_s=5.0, extraction=config.math_extraction) as strict:
        out = filter_cots(cots, questions, config, strict, None)
    assert column(out, "drop_reason") == ["bad_format"]
    assert "  kept math answers found by rule (extraction strict): -" in FilterReport.of(out, "strict").lines()
    with pytest.raises(ValidationError):
        FilterConfig(math_extraction="lenient")


def test_code_tests_may_arrive_as_json_text(math, code):
    cots, _ = tables([ROWS[2][0], ROWS[3][0]], [])
    questions = pa.table({"question_id": ["c1", "c2"], "domain": ["code", "code"], "question": ["Sum.", "Sum."],
                          "reference_answer": pa.array([None, None], pa.string()),
                          "tests": [json.dumps(SUM_TESTS)] * 2})
    out = filter_cots(cots, questions, CONFIG, math, code)
    assert column(out, "verdict") == ["passed", "wrong_answer"]


# --- The judge -------------------------------------------------------------------------------------------------------
JUDGE_REPLIES = {  # question text -> what the stand-in judge replies
    "Q-yes": "<think>\nComparing the final answer with the reference: not equivalent? No, the same.\n</think>\nYES",
    "Q-no": "<think>\n9^(9^(9^9)) is far larger than 3.\n</think>\n\nNO",
    "Q-garbage": "I am sorry, I cannot help with that request.",
    "Q-empty-set": "The reference says there is no solution; the empty set says the same.\n\nYES",
}


class StandInJudge:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompts):
        self.calls.append(prompts)
        return [next(reply for q, reply in JUDGE_REPLIES.items() if f"Problem:\n{q}\n" in p) for p in prompts]


def judge_tables():
    rows = [cot("j1", "math", HANG), cot("j2", "math", HANG), cot("j3", "math", HANG),
            cot("j4", "math", "No real x works, so the solution set is $\\boxed{\\varnothing}$.", level="wrong_near"),
            cot("j5", "math", CLIPS_ANSWER), cot("c2", "code", WRONG_PROGRAM)]
    questions = [question("j1", "math", "Q-yes", "3"), question("j2", "math", "Q-no", "3"),
                 question("j3", "math", "Q-garbage", "3"),
                 question("j4", "math", "Q-empty-set", "\\text{no solution}", level="wrong_near"),
                 question("j5", "math", CLIPS, "72"),
                 question("c2", "code", "Print the sum.", tests=SUM_TESTS)]
    return tables(rows, questions)


def test_the_judge_decides_what_the_rules_could_not(math, code):
    judge = StandInJudge()
    config = CONFIG.model_copy(update={"judge": JudgeConfig(on=["timeout", "error", "wrong_answer"])})
    out = filter_cots(*judge_tables(), config, math, code, judge)
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 4  # one call; not the passed row, never code
    prompt = judge.calls[0][3]
    assert "Reference answer:\n\\text{no solution}" in prompt and "\\boxed{\\varnothing}" in prompt
    assert column(out, "verdict") == ["judge_passed", "judge_failed", "timeout", "judge_passed", "passed",
                                      "wrong_answer"]
    assert column(out, "correct") == [True, False, None, True, True, False]
    assert column(out, "drop_reason") == [None, "wrong_answer", "undecided", None, None, "wrong_answer"]
    details = column(out, "verify_detail")
    assert details[0].startswith("judge: YES; rules: timeout") and details[1].startswith("judge: NO; rules: timeout")
    assert "judge reply unreadable: I am sorry" in details[2]
    report = FilterReport.of(out)
    assert report.judged == {"judge_passed": 2, "judge_failed": 1} and report.dropped["undecided"] == 1
    assert "  judge: 2 passed, 1 failed" in report.lines()


def test_by_default_only_undecided_rows_reach_the_judge(math, code):
    judge = StandInJudge()
    cots, questions = judge_tables()
    config = CONFIG.model_copy(update={"judge": JudgeConfig()})
    out = filter_cots(cots.slice(3), questions, config, math, code, judge)  # wrong, passed, code: nothing undecided
    assert judge.calls == []
    assert column(out, "verdict") == ["wrong_answer", "passed", "wrong_answer"]


def test_wiring_mistakes_fail_loudly(math, code):
    cots, questions = tables([r[0] for r in ROWS], QUESTIONS)
    with pytest.raises(ValueError, match="judge"):
        filter_cots(cots, questions, CONFIG.model_copy(update={"judge": JudgeConfig()}), math, code)
    with pytest.raises(RuntimeError, match="0 replies for 1 prompts"):
        filter_cots(cots, questions, CONFIG.model_copy(update={"judge": JudgeConfig(on=["wrong_answer"])}), math,
                    code, lambda prompts: [])
    with pytest.raises(ValueError, match="code row"):
        filter_cots(cots, questions, CONFIG, math, None)
    with pytest.raises(schemas.SchemaError, match="no question row"):
        filter_cots(cots, questions.slice(1), CONFIG, math, code)
    with pytest.raises(schemas.SchemaError, match="duplicated"):
        filter_cots(pa.concat_tables([cots, cots.slice(0, 1)]), questions, CONFIG, math, code)
    with pytest.raises(schemas.SchemaError, match="answer_text"):
        filter_cots(cots.drop_columns(["answer_text"]), questions, CONFIG, math, code)


# --- Ray Data ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_data_actor_filters_like_the_function(ray_session, math, code):
    import ray

    cots, questions = tables([r[0] for r in ROWS], QUESTIONS)
    by_id = {q["question_id"]: q for q in QUESTIONS}
    joined = cots.drop_columns(["verdict", "correct", "verify_detail", "drop_reason"])
    for name in ("question", "reference_answer", "tests"):
        values = [by_id[qid][name] for qid in column(cots, "question_id")]
        joined = joined.append_column(schemas.SAMPLES.field(name), pa.array(values, schemas.SAMPLES.field(name).type))
    refs = (ray.data.from_arrow(joined)
            .map_batches(CoTFilterActor, fn_constructor_kwargs={"config": CONFIG}, batch_format="pyarrow",
                         concurrency=1, num_cpus=0.5)
            .to_arrow_refs())
    out = pa.concat_tables(ray.get(refs))
    expected = filter_cots(cots, questions, CONFIG, math, code)
    assert out.schema.equals(schemas.TEACHER_COTS)
    assert sorted(out.to_pylist(), key=str) == sorted(expected.to_pylist(), key=str)


@pytest.mark.slow
def test_filter_on_ray_gives_every_actor_of_its_pool_blocks(ray_session, monkeypatch):
    """Ray Data hands a block to one actor: the CoTs arrive in blocks for every actor the pool may grow to (from
    one table they were one block, so a pool of 4 filtered on one)."""
    from adaptcot.common import runtime
    from adaptcot.teach import cot_filter

    seen = []
    real = runtime.dataset_in_blocks

    def spy(table, workers, max_rows=None):
        ds = real(table, workers, max_rows)
        seen.append(ds.materialize().num_blocks())
        return ds
    monkeypatch.setattr(cot_filter, "dataset_in_blocks", spy)
    cots, questions = tables([{**r[0], "sample_index": k} for k in range(4) for r in ROWS], QUESTIONS)
    config = CONFIG.model_copy(update={"concurrency": (1, 4), "num_cpus": 0.25})
    out = cot_filter.filter_on_ray(cots, questions, config)
    assert len(seen) == 1 and seen[0] >= 4  # at least a block for each actor the pool may grow to
    assert out.num_rows == cots.num_rows

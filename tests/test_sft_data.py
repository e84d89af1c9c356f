"""SFT records from hand-built teacher CoTs: which CoTs are used, trace styles, CasCoD splits, ids, Parquet output."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from adaptcot.common.schemas import SAMPLES, SFT_RECORDS, TEACHER_COTS
from adaptcot.grade.answering import StudentConfig, build_messages
from adaptcot.sft.answer_text import final_answer_span, split_answer_text, strip_stated_answer
from adaptcot.sft.records import CAP_MARKER, SFTConfig, build_records, build_sft, read_prompts, write_records

MATH_Q = "What is 2 + 3 * 4?"
MATH_REASONING = "First multiply: 3 * 4 = 12. Then add 2: 2 + 12 = 14. So the result is 14."
MATH_ANSWER = "Multiplication comes first, so 2 + 12 = 14.\n\nThe answer is $\\boxed{14}$."
CODE_Q = "Read two integers and print their sum."
CODE_REASONING = "I need to read a line, split it, convert both parts to int and print the sum."
PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"
CODE_ANSWER = f"Here is the solution.\n\n```python\n{PROGRAM}\n```\n"
STDIN_TESTS = {"kind": "stdin_stdout", "cases": [{"input": "1 2\n", "output": "3\n"}], "fn_name": None,
               "test_code": None, "entry_point": None}


def question(qid, domain, text, tests=None, starter=None):
    return {"question_id": qid, "domain": domain, "student": "s", "grader_id": "g", "level": "easy",
            "difficulty_rank": 0, "question": text, "reference_answer": "14" if domain == "math" else None,
            "tests": tests, "starter_code": starter}


def cot(qid, domain, reasoning, answer, teacher="r1", index=0, correct=True, drop_reason=None):
    return {"question_id": qid, "domain": domain, "teacher": teacher, "sampling_key": "k1", "sample_index": index,
            "level": "wrong_mid", "reasoning": reasoning, "answer_text": answer, "prompt_tokens": 10,
            "completion_tokens": 100, "finish_reason": "stop", "cost_usd": 0.0, "error": None,
            "verdict": "passed" if correct else "wrong_answer", "correct": correct, "verify_detail": "",
            "drop_reason": drop_reason}


@pytest.fixture
def questions():
    return pa.Table.from_pylist([question("m1", "math", MATH_Q), question("c1", "code", CODE_Q, STDIN_TESTS)],
                                schema=SAMPLES)


@pytest.fixture
def cots():
    return pa.Table.from_pylist([
        cot("m1", "math", MATH_REASONING, MATH_ANSWER),
        cot("c1", "code", CODE_REASONING, CODE_ANSWER),
        cot("m1", "math", MATH_REASONING, "The answer is \\boxed{15}.", index=1, correct=False,
            drop_reason="wrong_answer"),
        cot("m1", "math", None, None, index=2, correct=None, drop_reason="error"),
        cot("m1", "math", MATH_REASONING, "\\boxed{13}", index=3, correct=False),  # not marked dropped, still wrong
    ], schema=TEACHER_COTS)


def records_of(table, kind, qid):
    rows = [r for r in table.to_pylist() if r["kind"] == kind and r["question_id"] == qid]
    assert len(rows) == 1
    return rows[0]["messages"]


def test_only_kept_correct_cots_become_records(cots, questions):
    table, report = build_sft(cots, questions, SFTConfig(formats=["cot", "cascod"]))
    assert table.schema.equals(SFT_RECORDS, check_metadata=True)
    assert sorted((r["question_id"], r["kind"]) for r in table.to_pylist()) == sorted(
        (q, k) for q in ("m1", "c1") for k in ("cot", "cascod_rationale", "cascod_answer"))
    assert {(r["level"], r["teacher"]) for r in table.to_pylist()} == {("wrong_mid", "r1")}
    assert (report.cots_in, report.cots_used) == (5, 2)
    assert report.skipped == {"wrong_answer": 2, "error": 1}


def test_trace_keep_strip_cap(cots, questions):
    keep = records_of(build_records(cots, questions, SFTConfig()), "cot", "m1")[-1]["content"]
    assert keep == f"<think>\n{MATH_REASONING}\n</think>\n\n{MATH_ANSWER}"
    strip = records_of(build_records(cots, questions, SFTConfig(trace="strip")), "cot", "m1")[-1]["content"]
    assert strip == MATH_ANSWER
    cap = records_of(build_records(cots, questions, SFTConfig(trace="cap", cap_words=4)), "cot", "m1")[-1]["content"]
    assert cap == f"<think>\nFirst multiply: 3 *{CAP_MARKER}\n</think>\n\n{MATH_ANSWER}"


def test_cap_leaves_short_reasoning_whole(cots, questions):
    table = build_records(cots, questions, SFTConfig(trace="cap", cap_words=1000))
    assert CAP_MARKER not in records_of(table, "cot", "m1")[-1]["content"]


def test_cap_needs_cap_words():
    with pytest.raises(ValidationError, match="cap_words"):
        SFTConfig(trace="cap")
    with pytest.raises(ValidationError, match="cap_words"):
        SFTConfig(trace="keep", cap_words=10)
    with pytest.raises(ValidationError, match="rationale"):
        SFTConfig(rationale_prompt="{prompt} Answer now.")


def test_no_separate_reasoning_gives_the_answer_alone(questions):
    cots = pa.Table.from_pylist([cot("m1", "math", "", MATH_ANSWER)], schema=TEACHER_COTS)
    assert records_of(build_records(cots, questions, SFTConfig()), "cot", "m1")[-1]["content"] == MATH_ANSWER


def test_cascod_math_rationale_and_answer(cots, questions):
    table = build_records(cots, questions, SFTConfig(formats=["cascod"]))  # cascod_answer "final", the paper's form
    rationale = records_of(table, "cascod_rationale", "m1")
    stated = MATH_REASONING.removesuffix(" So the result is 14.")
    assert rationale[-1]["content"] == stated
    assert "\\boxed" not in rationale[-1]["content"] and "<think>" not in rationale[-1]["content"]
    answer = records_of(table, "cascod_answer", "m1")
    assert MATH_Q in answer[0]["content"] and stated in answer[0]["content"]
    assert answer[-1]["content"] == "The answer is $\\boxed{14}$."


def test_cascod_answer_full_keeps_the_reasoning_and_answer_text_as_written(cots, questions):
    table = build_records(cots, questions, SFTConfig(formats=["cascod"], cascod_answer="full"))
    assert records_of(table, "cascod_rationale", "m1")[-1]["content"] == MATH_REASONING
    assert records_of(table, "cascod_answer", "m1")[-1]["content"] == MATH_ANSWER


def test_cascod_code_answer_is_the_program_block(cots, questions):
    table = build_records(cots, questions, SFTConfig(formats=["cascod"]))
    assert records_of(table, "cascod_rationale", "c1")[-1]["content"] == CODE_REASONING
    answer = records_of(table, "cascod_answer", "c1")
    assert CODE_Q in answer[0]["content"] and CODE_REASONING in answer[0]["content"]
    assert answer[-1]["content"] == f"```python\n{PROGRAM}\n```"


def test_cascod_split_of_answer_text_without_reasoning(questions):
    math_text = "Multiply first: 3 * 4 = 12.\nThen 2 + 12 = 14.\nSo the answer is $\\boxed{14}$."
    code_text = f"Sum the two numbers.\n```python\n{PROGRAM}\n```\nDone."
    cots = pa.Table.from_pylist([cot("m1", "math", None, math_text), cot("c1", "code", "", code_text),
                                 cot("m1", "math", "", "\\boxed{14}", index=1)], schema=TEACHER_COTS)
    table, report = build_sft(cots, questions, SFTConfig(formats=["cot", "cascod"]))
    rationale = records_of(table, "cascod_rationale", "m1")[-1]["content"]
    assert rationale == "Multiply first: 3 * 4 = 12.\nThen 2 + 12 = 14."
    assert records_of(table, "cascod_answer", "m1")[-1]["content"] == "So the answer is $\\boxed{14}$."
    assert records_of(table, "cascod_rationale", "c1")[-1]["content"] == "Sum the two numbers."
    assert records_of(table, "cascod_answer", "c1")[-1]["content"] == f"```python\n{PROGRAM}\n```"
    assert report.no_cascod_split == 1  # the bare "\boxed{14}" has no rationale to split off; its `cot` record stays
    assert report.by_kind == {"cot": 3, "cascod_rationale": 2, "cascod_answer": 2}


@pytest.mark.parametrize("text, expected", [
    ("x = 3. Thus x + 1 = 4. The answer is \\boxed{4}.", ("x = 3. Thus x + 1 = 4.", "The answer is \\boxed{4}.")),
    ("We get 3.5 as the mean, so \\boxed{3.5}", None),  # "3.5" is no sentence end: nothing before the answer
    ("Try 1, then 2.\n\n**Final Answer**\n\\[\\boxed{2}\\]",  # a heading before the answer line stays in r
     ("Try 1, then 2.\n\n**Final Answer**", "\\[\\boxed{2}\\]")),
    ("No boxed answer at all.", None),
])
def test_split_math_answer_text(text, expected):
    assert split_answer_text("math", text) == expected


def test_strip_with_cascod_splits_the_answer_text(cots, questions):
    table = build_records(cots, questions, SFTConfig(formats=["cascod"], trace="strip"))
    assert records_of(table, "cascod_rationale", "m1")[-1]["content"] == "Multiplication comes first, so 2 + 12 = 14."
    assert records_of(table, "cascod_answer", "m1")[-1]["content"] == "The answer is $\\boxed{14}$."


def test_record_ids_are_stable_and_unique(cots, questions):
    config = SFTConfig(formats=["cot", "cascod"])
    first = build_records(cots, questions, config).column("record_id").to_pylist()
    again = build_records(cots, questions, SFTConfig(formats=["cot", "cascod"], trace="strip"))
    assert first == again.column("record_id").to_pylist()
    assert len(set(first)) == len(first) == 6
    assert first[0] == "21724dca126b7b0b6488b3dfafae547f"  # pinned: a change breaks resumable and joined datasets


def test_duplicated_cot_or_missing_question_fails_loudly(cots, questions):
    doubled = pa.concat_tables([cots.slice(0, 1), cots.slice(0, 1)])
    with pytest.raises(ValueError, match="duplicated"):
        build_records(doubled, questions, SFTConfig())
    with pytest.raises(ValueError, match="no math question"):
        build_records(cots, questions.slice(1), SFTConfig())


def test_user_turn_is_the_grading_prompt(cots):
    starter = "def solve():\n    pass"
    questions = pa.Table.from_pylist([question("m1", "math", MATH_Q),
                                      question("c1", "code", CODE_Q, STDIN_TESTS, starter)], schema=SAMPLES)
    student = StudentConfig(model="student", system_prompt="You are careful.")
    table = build_records(cots, questions, SFTConfig(formats=["cot", "cascod"], system_prompt="You are careful."))
    for row in questions.to_pylist():
        graded = build_messages({**row, "tests_json": json.dumps(row["tests"]) if row["tests"] else None}, student)
        for kind in ("cot", "cascod_rationale"):
            assert records_of(table, kind, row["question_id"])[:2] == graded
    assert starter in records_of(table, "cot", "c1")[1]["content"]


def test_parquet_loads_with_datasets(cots, questions, tmp_path):
    from datasets import load_dataset

    table, report = build_sft(cots, questions, SFTConfig(formats=["cot", "cascod"]))
    path = Path(write_records(table, tmp_path / "sft", report))
    assert path == tmp_path / "sft" / "sft_records.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == ["sft_records.parquet", "sft_report.json"]
    ds = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 6 and set(ds.column_names) == set(SFT_RECORDS.names)
    for messages in ds["messages"]:
        assert all(set(m) == {"role", "content"} for m in messages)
        assert [m["role"] for m in messages] == ["user", "assistant"]
    assert ds.filter(lambda r: r["kind"] == "cascod_answer").num_rows == 2
    summary = json.loads((tmp_path / "sft" / "sft_report.json").read_text())
    assert summary["skipped"] == {"error": 1, "wrong_answer": 2} and summary["cots_used"] == 2
    assert summary["by_level"] == {"wrong_mid": {"cot": 2, "cascod_rationale": 2, "cascod_answer": 2}}
    assert any("skipped" in line for line in report.lines())


def test_report_without_cots_says_so(cots, questions, tmp_path):
    write_records(build_records(cots, questions, SFTConfig()), tmp_path)
    summary = json.loads((tmp_path / "sft_report.json").read_text())
    assert (summary["cots_in"], summary["skipped"], summary["by_kind"]) == (None, None, {"cot": 2})


# --- CasCoD on long (DeepSeek-R1 style) CoTs ---------------------------------------------------------------------------
R1_Q = "Tom has 3 boxes with 6 apples in each box. He gives away a third of the apples. How many apples are left?"
R1_REASONING = """Okay, let's see. Tom has 3 boxes, and each box holds 6 apples. So first I need the total number of \
apples. 3 times 6 is 18, so he starts with 18 apples.

Then he gives away a third of them. A third of 18 is 18 divided by 3, which is 6. So he gives away 6 apples.

Wait, let me make sure I read that right: "a third of the apples" means a third of all 18, not a third of one box. \
Yes, that's how I read it. So the apples left are 18 minus 6, which is 12.

Let me double-check another way. If he gives away one third, he keeps two thirds. Two thirds of 18 is 18 times 2 \
over 3, which is 36 over 3, which is 12. Same result, good.

So the answer is 12."""
R1_ANSWER = """To find how many apples Tom has left:

1. **Total apples:** 3 boxes × 6 apples = 18 apples.
2. **Apples given away:** one third of 18 = 18 ÷ 3 = 6 apples.
3. **Apples left:** 18 − 6 = 12 apples.

**Final Answer**
\\boxed{12}"""
# The same solution with the total left in words and the answer boxed at the end of the reasoning itself.
R1_REASONING_BOXED = """Okay, 3 boxes of 6 apples make 18 apples, and a third of those is 6.

What is left is the total minus the part he gives away, two thirds of the apples.

**Final Answer**
\\[
\\boxed{12}
\\]"""


def test_cascod_on_a_long_cot_trains_the_short_final_answer(questions):
    questions = pa.Table.from_pylist([{**question("r1", "math", R1_Q), "reference_answer": "12"}], schema=SAMPLES)
    cots = pa.Table.from_pylist([cot("r1", "math", R1_REASONING, R1_ANSWER),
                                 cot("r1", "math", R1_REASONING_BOXED, R1_ANSWER, index=1)], schema=TEACHER_COTS)
    table, report = build_sft(cots, questions, SFTConfig(formats=["cot", "cascod"]))
    rows = [r for r in table.to_pylist() if r["cot_id"] == table["cot_id"][0].as_py()]
    by_kind = {r["kind"]: r["messages"] for r in rows}
    answer = by_kind["cascod_answer"][-1]["content"]
    assert answer == "\\boxed{12}" and len(answer) < len(R1_ANSWER) / 10  # not the re-solution with its steps
    rationale = by_kind["cascod_rationale"][-1]["content"]
    assert rationale == R1_REASONING.removesuffix("\n\nSo the answer is 12.")
    assert rationale.endswith("Same result, good.") and "\\boxed" not in rationale
    assert rationale in by_kind["cascod_answer"][0]["content"]  # the answer step is conditioned on this r
    assert "So the answer is 12." in by_kind["cot"][-1]["content"] and R1_ANSWER in by_kind["cot"][-1]["content"]
    boxed_r = [r["messages"][-1]["content"] for r in table.to_pylist()
               if r["kind"] == "cascod_rationale" and r["cot_id"] != rows[0]["cot_id"]]
    assert boxed_r == [R1_REASONING_BOXED.split("\n\n**Final Answer**")[0]]
    assert boxed_r[0].endswith("two thirds of the apples.")
    # The first rationale still computes 12 in its last lines; the second never says it.
    assert (report.rationale_answer_cut, report.rationales_checked, report.rationale_states_answer) == (2, 2, 1)
    assert report.as_dict()["rationale_states_answer"] == 1
    assert ("  CasCoD math rationales still stating the reference answer in their last 3 lines: 1 of 2"
            in report.lines())


@pytest.mark.parametrize("text, values, expected", [
    (MATH_REASONING, ["14"], "First multiply: 3 * 4 = 12. Then add 2: 2 + 12 = 14."),
    ("We get 12.\n\n**Final Answer**\n\\[\n\\boxed{12}\n\\]", ["12"], "We get 12."),
    ("Halve it. Therefore, the final answer is \\( \\frac {1}{2} \\).", ["\\dfrac{1}{2}"], "Halve it."),
    ("So the answer is 12. Let me double-check: 3 * 4 = 12. Yes.", ["12"], None),  # not at the end: kept whole
    ("Then x = 5.", ["5"], None),  # a last computation is no answer statement
    ("Add them. The result is 120 minus 8.", ["12"], None),  # 12 is not in 120
    ("Add them. So the answer is 7.", [], "Add them."),  # no value known: an answer marker is enough
])
def test_strip_stated_answer(text, values, expected):
    assert strip_stated_answer(text, values) == (text if expected is None else expected)


@pytest.mark.parametrize("text, expected", [
    (R1_ANSWER, "\\boxed{12}"),
    ("The mean is $\\boxed{3.5}$. Hope this helps!", "The mean is $\\boxed{3.5}$."),
    ("Steps first.\nThe answer is 42.\n", "The answer is 42."),  # no box: the last answer marker's sentence
    ("Nothing final here.", None),
])
def test_final_answer_span(text, expected):
    span = final_answer_span(text)
    assert (text[span[0]:span[1]] if span else None) == expected


def test_final_split_drops_a_trailing_heading_from_r(questions):
    text = "Try 1, then 2.\n\n**Final Answer**\n\\[\\boxed{2}\\]"
    cots = pa.Table.from_pylist([cot("m1", "math", "", text)], schema=TEACHER_COTS)
    table = build_records(cots, questions, SFTConfig(formats=["cascod"]))
    assert records_of(table, "cascod_rationale", "m1")[-1]["content"] == "Try 1, then 2."
    assert records_of(table, "cascod_answer", "m1")[-1]["content"] == "\\[\\boxed{2}\\]"


def test_prompts_round_trip_through_parquet_and_report(cots, questions, tmp_path):
    import pyarrow.parquet as pq

    config = SFTConfig(formats=["cot", "cascod"], system_prompt="Be brief.", math_prompt="Solve: {question}",
                       rationale_prompt="{question}\nThoughts: {rationale}\nAnswer:")
    table, report = build_sft(cots, questions, config)
    path = write_records(table, tmp_path / "sft", report)
    expected = {"math_prompt": "Solve: {question}", "code_prompt": config.code_prompt, "system_prompt": "Be brief.",
                "rationale_prompt": "{question}\nThoughts: {rationale}\nAnswer:", "formats": ["cot", "cascod"],
                "cascod_answer": "final"}
    assert read_prompts(tmp_path / "sft") == read_prompts(path) == expected
    assert json.loads(pq.read_schema(path).metadata[b"adaptcot.sft_prompts"]) == expected
    assert pq.read_schema(path).metadata[b"adaptcot.table"] == b"sft_records"
    assert json.loads((tmp_path / "sft" / "sft_report.json").read_text())["prompts"] == expected
    write_records(table, tmp_path / "old")  # records alone, as written before prompts were recorded
    assert read_prompts(tmp_path / "old") is None
    with pytest.raises(FileNotFoundError, match="no SFT records"):
        read_prompts(tmp_path / "missing")

"""`adaptcot pool import`: sources shaped like the real datasets, every kind of bad row, errors, de-duplication."""

import base64
import csv
import json
import pickle
import shutil
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.common import schemas
from adaptcot.common.text import question_id
from adaptcot.job.cli import main as cli
from adaptcot.pool.importer import PoolImportConfig, import_pool, read_pool, read_rejects
from adaptcot.pool.presets import MappingError
from adaptcot.pool.sources import SourceError

# --- rows shaped like the real sources (fields as published) ------------------------------------------------------
MATH_ROW = {"problem": "If $x+2=5$, what is $x$?", "solution": "Subtract 2: $x=\\boxed{3}$.", "answer": "3",
            "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}
NUMINA_ROW = {"source": "olympiads", "problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.",
              "solution": "We get $\\frac{2}{4}+\\frac{1}{4}=\\boxed{\\frac{3}{4}}$.",
              "messages": [{"role": "user", "content": "..."}]}
GSM8K_ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                         "May. How many clips did Natalia sell altogether in April and May?",
             "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                       "altogether in April and May.\n#### 1,072"}
APPS_ROW = {"problem_id": 7, "question": "Read n and n integers; print their sum.",
            "solutions": json.dumps(["n=int(input());print(sum(map(int,input().split())))"]),
            "input_output": json.dumps({"inputs": ["3\n1 2 3\n", "1\n5\n"], "outputs": ["6\n", "5\n"]}),
            "difficulty": "introductory", "url": "https://example.org/7", "starter_code": ""}
TACO_CALL_ROW = {"question": "Count the ways to make change.", "starter_code": "def count_change(money, coins):\n\t",
                 "input_output": json.dumps({"fn_name": "count_change", "inputs": [[4, [1, 2]], [10, [5, 2, 3]]],
                                             "outputs": [[3], [4]]})}
HUMANEVAL_ROW = {"task_id": "HumanEval/0",
                 "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n",
                 "canonical_solution": "    return a + b\n",
                 "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n",
                 "entry_point": "add"}
MBPP_ROW = {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
            "code": "def similar_elements(a, b):\n  return tuple(set(a) & set(b))",
            "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                          "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))"],
            "test_setup_code": "", "challenge_test_list": []}


def write_jsonl(path: Path, rows: list) -> str:
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return str(path)


def run_import(tmp_path, rows, domain, preset=None, mapping=None, name="src.jsonl", **kw):
    src = write_jsonl(tmp_path / name, rows)
    out = tmp_path / "pool"
    report = import_pool(PoolImportConfig(sources=[src], domain=domain, out=str(out), preset=preset,
                                          mapping=mapping or {}, **kw))
    return report, read_pool(out).to_pylist(), read_rejects(out).to_pylist()


@pytest.mark.parametrize("preset,row,answer", [
    ("math", MATH_ROW, "3"),
    ("numina", NUMINA_ROW, "\\frac{3}{4}"),
    ("gsm8k", GSM8K_ROW, "1072"),
])
def test_math_presets_read_reference_answers(tmp_path, preset, row, answer):
    report, pool, rejects = run_import(tmp_path, [row], "math", preset)
    assert (report.imported, rejects) == (1, [])
    assert pool[0]["reference_answer"] == answer
    assert pool[0]["tests"] is None and pool[0]["domain"] == "math"


def test_gsm8k_keeps_the_worked_solution_without_the_answer_line(tmp_path):
    _, pool, _ = run_import(tmp_path, [GSM8K_ROW], "math", "gsm8k")
    assert pool[0]["reference_solution"].endswith("altogether in April and May.")


def test_apps_stdin_stdout_tests(tmp_path):
    _, pool, rejects = run_import(tmp_path, [APPS_ROW], "code", "apps")
    assert rejects == []
    tests = pool[0]["tests"]
    assert tests["kind"] == "stdin_stdout"
    assert tests["cases"] == [{"input": "3\n1 2 3\n", "output": "6\n"}, {"input": "1\n5\n", "output": "5\n"}]
    assert pool[0]["starter_code"] is None  # empty starter code is no starter code


def test_taco_call_based_tests_unwrap_expected_values(tmp_path):
    _, pool, _ = run_import(tmp_path, [TACO_CALL_ROW], "code", "apps")
    tests = pool[0]["tests"]
    assert (tests["kind"], tests["fn_name"]) == ("call", "count_change")
    assert [json.loads(c["input"]) for c in tests["cases"]] == [[4, [1, 2]], [10, [5, 2, 3]]]
    assert [json.loads(c["output"]) for c in tests["cases"]] == [3, 4]
    assert pool[0]["starter_code"].startswith("def count_change")


def test_humaneval_assert_tests_call_check_on_the_entry_point(tmp_path):
    _, pool, _ = run_import(tmp_path, [HUMANEVAL_ROW], "code", "humaneval")
    tests = pool[0]["tests"]
    assert (tests["kind"], tests["entry_point"]) == ("assert", "add")
    namespace: dict = {}
    exec(HUMANEVAL_ROW["prompt"] + HUMANEVAL_ROW["canonical_solution"] + tests["test_code"], namespace)
    with pytest.raises(AssertionError):  # the test code really runs check(add)
        exec("def add(a, b):\n    return a - b\n" + tests["test_code"], {})


def test_mbpp_assert_list_finds_the_function_under_test(tmp_path):
    _, pool, _ = run_import(tmp_path, [MBPP_ROW], "code", "mbpp")
    tests = pool[0]["tests"]
    assert (tests["kind"], tests["entry_point"]) == ("assert", "similar_elements")
    exec(MBPP_ROW["code"] + "\n" + tests["test_code"], {})


def test_custom_mapping_from_the_command_line(tmp_path, capsys):
    src = write_jsonl(tmp_path / "custom.jsonl", [{"q": "What is 6*7?", "final": "42", "note": "x"}])
    rc = cli(["pool", "import", src, "--domain", "math", "--out", str(tmp_path / "p"),
              "--map", "question=q", "--map", "answer=final"])
    assert rc == 0
    assert "imported 1" in capsys.readouterr().out
    assert read_pool(tmp_path / "p").to_pylist()[0]["reference_answer"] == "42"


def test_every_kind_of_bad_row_is_rejected_with_its_reason_and_counted(tmp_path, capsys):
    rows = [
        GSM8K_ROW,
        {"question": "   ", "answer": "#### 1"},                          # no text
        {"question": "What is 1+1?", "answer": "two, no marker"},        # no reference answer
        {"question": "What is 2+2?"},                                    # answer column absent in this row
        b'{"question": "caf\xe9 prices?", "answer": "#### 3"}\n',        # invalid UTF-8 (latin-1 byte)
        b'{"question": "broken json", "answer": \n',                    # not a record
        b'["a", "list"]\n',                                              # not an object
        {"question": "x" * 201, "answer": "#### 1"},                     # over-long
        {"question": "lone \udc80 surrogate", "answer": "#### 2"},       # escaped invalid code point
    ]
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "pool"
    rc = cli(["pool", "import", src, "--domain", "math", "--out", str(out), "--preset", "gsm8k",
              "--max-question-chars", "200"])
    printed = capsys.readouterr().out
    assert rc == 0
    rejects = read_rejects(out).to_pylist()
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == sorted(["missing_question", "missing_answer", "missing_answer", "invalid_utf8",
                              "malformed_row", "malformed_row", "too_long", "invalid_utf8"])
    assert read_pool(out).num_rows == 1
    assert "rejected 8" in printed and "invalid_utf8" in printed
    for line in ("2  invalid_utf8", "2  malformed_row", "2  missing_answer", "1  missing_question", "1  too_long"):
        assert line in printed
    by_row = {r["source_row"]: r for r in rejects}
    assert "caf\\xe9" in by_row[4]["raw"]  # the bad bytes are kept, escaped, for the user to inspect
    assert set(schemas.REJECT_REASONS) >= set(reasons)


def test_code_rows_without_parseable_tests_are_rejected(tmp_path):
    rows = [APPS_ROW,
            {**APPS_ROW, "question": "q2", "input_output": "{not json"},
            {**APPS_ROW, "question": "q3", "input_output": json.dumps({"inputs": ["1"], "outputs": []})},
            {**APPS_ROW, "question": "q4", "input_output": ""}]
    report, pool, rejects = run_import(tmp_path, rows, "code", "apps")
    assert len(pool) == 1
    assert [r["reason"] for r in rejects] == ["bad_tests"] * 3
    assert report.rejected == {"bad_tests": 3}


def test_duplicates_by_normalised_text_keep_the_first_and_ids_are_stable(tmp_path):
    rows = [GSM8K_ROW, {**GSM8K_ROW, "question": "  " + GSM8K_ROW["question"].upper().replace(" ", "  ") + "\r\n"},
            {"question": "Another question?", "answer": "#### 5"}]
    report, pool, _ = run_import(tmp_path, rows, "math", "gsm8k")
    assert (report.imported, report.duplicates) == (2, 1)
    first = next(r for r in pool if r["source_row"] == 0)
    assert first["question_id"] == question_id(GSM8K_ROW["question"], "math")
    assert question_id("What is 2+2?", "math") == "25a7cafd6ed528e2e18d521349167c0f"  # golden: ids never drift
    assert question_id("What is 2+2?", "code") != question_id("What is 2+2?", "math")


def test_reimport_adds_nothing_twice_and_new_rows_are_added(tmp_path):
    first = [GSM8K_ROW, {"question": "bad", "answer": "no"}]
    run_import(tmp_path, first, "math", "gsm8k")
    report, pool, rejects = run_import(tmp_path, first + [{"question": "New one?", "answer": "#### 9"}],
                                       "math", "gsm8k")
    assert (report.imported, report.already_in_pool) == (1, 1)
    assert len(pool) == 2 and len({r["question_id"] for r in pool}) == 2
    assert len(rejects) == 1  # the same bad row is not stored again
    manifest = json.loads((tmp_path / "pool" / "manifest.json").read_text())
    assert [i["imported"] for i in manifest["imports"]] == [1, 1]


# --- near duplicates ------------------------------------------------------------------------------------------------
WENG_ROW = {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                        "How much did she earn?", "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10"}
NEAR_ROW = {**GSM8K_ROW, "question": GSM8K_ROW["question"].replace("friends", "classmates")}  # one word changed


def test_a_near_duplicate_is_rejected_naming_the_question_kept(tmp_path):
    report, pool, rejects = run_import(tmp_path, [GSM8K_ROW, WENG_ROW, NEAR_ROW], "math", "gsm8k")
    first, near = question_id(GSM8K_ROW["question"], "math"), question_id(NEAR_ROW["question"], "math")
    assert near < first  # so the row kept is the later one: the smaller question id wins, not the first seen
    kept, dropped = near, first
    assert (report.imported, report.near_duplicates, report.duplicates) == (2, 1, 0)
    assert {r["question_id"] for r in pool} == {kept, question_id(WENG_ROW["question"], "math")}
    [reject] = rejects
    assert reject["reason"] == "near_duplicate" and reject["source_row"] == 0
    assert reject["detail"].startswith(f"near duplicate of {kept} (kept): estimated Jaccard 0.")
    assert json.loads(reject["raw"])["question_id"] == dropped  # nothing lost: the row is in the rejects table
    assert "near duplicates 1" in report.lines()[0] and "near_duplicate" in schemas.REJECT_REASONS


def test_a_rerun_adds_and_rejects_nothing_new_and_the_pool_keeps_its_question(tmp_path):
    run_import(tmp_path, [GSM8K_ROW, WENG_ROW, NEAR_ROW], "math", "gsm8k")
    report, pool, rejects = run_import(tmp_path, [GSM8K_ROW, WENG_ROW, NEAR_ROW], "math", "gsm8k")
    assert (report.imported, report.already_in_pool, report.near_duplicates) == (0, 2, 1)
    assert len(pool) == 2 and len(rejects) == 1
    # a near duplicate of a question the pool already holds is rejected, whichever id is smaller
    in_pool = question_id(WENG_ROW["question"], "math")
    close = {**WENG_ROW, "question": WENG_ROW["question"].replace("earn?", "make?")}
    assert question_id(close["question"], "math") < in_pool
    report, pool, rejects = run_import(tmp_path, [close], "math", "gsm8k", name="more.jsonl")
    assert (report.imported, report.near_duplicates, len(pool)) == (0, 1, 2)
    (new,) = [r for r in rejects if r["source"].endswith("more.jsonl")]  # reject files are in no set order
    assert new["reason"] == "near_duplicate" and new["detail"].startswith(f"near duplicate of {in_pool} (kept)")


def test_distinct_questions_are_kept_and_near_duplicates_can_be_switched_off(tmp_path):
    # short questions that differ in a number are one shingle each: different questions
    short = [{"question": "What is 3+4?", "answer": "#### 7"}, {"question": "What is 3+5?", "answer": "#### 8"}]
    report, _, rejects = run_import(tmp_path, [GSM8K_ROW, WENG_ROW, *short], "math", "gsm8k")
    assert (report.imported, report.near_duplicates, rejects) == (4, 0, [])
    (tmp_path / "off").mkdir()
    report, _, rejects = run_import(tmp_path / "off", [GSM8K_ROW, NEAR_ROW], "math", "gsm8k",
                                    near_duplicates={"enabled": False})
    assert (report.imported, report.near_duplicates, rejects) == (2, 0, [])


def test_parquet_and_csv_sources(tmp_path):
    pq.write_table(pa.Table.from_pylist([MATH_ROW]), tmp_path / "m.parquet")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["problem", "answer"])
        w.writeheader()
        w.writerow({"problem": "What is 3+4?", "answer": "7"})
    with open(tmp_path / "m.csv", "ab") as f:
        f.write(b'"Bad \xff text",1\n"too","many","fields"\n')
    out = tmp_path / "pool"
    report = import_pool(PoolImportConfig(sources=[str(tmp_path / "m.parquet"), str(tmp_path / "m.csv")],
                                          domain="math", out=str(out), preset="math"))
    assert report.imported == 2
    assert report.rejected == {"invalid_utf8": 1, "malformed_row": 1}
    assert {r["source"] for r in read_pool(out).to_pylist()} == {str(tmp_path / "m.parquet"), str(tmp_path / "m.csv")}


def test_parquet_with_invalid_utf8_rejects_only_that_row(tmp_path):
    questions = pa.array([b"Good question?", b"bad \xff one"], pa.binary()).cast(pa.string(), safe=False)
    table = pa.table({"problem": questions, "answer": ["1", "2"]})
    pq.write_table(table, tmp_path / "u.parquet")
    out = tmp_path / "pool"
    report = import_pool(PoolImportConfig(sources=[str(tmp_path / "u.parquet")], domain="math", out=str(out),
                                          preset="math"))
    assert (report.imported, dict(report.rejected)) == (1, {"invalid_utf8": 1})


def test_hugging_face_dataset_directories(tmp_path):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list([HUMANEVAL_ROW])}).save_to_disk(tmp_path / "saved")
    (tmp_path / "files").mkdir()
    write_jsonl(tmp_path / "files" / "train.jsonl", [GSM8K_ROW])
    out = tmp_path / "pool"
    code = import_pool(PoolImportConfig(sources=[str(tmp_path / "saved")], domain="code", out=str(out),
                                        preset="humaneval", hf_split="test"))
    math = import_pool(PoolImportConfig(sources=[str(tmp_path / "files")], domain="math", out=str(out),
                                        preset="gsm8k"))
    assert (code.imported, math.imported) == (1, 1)
    assert sorted(read_pool(out)["domain"].to_pylist()) == ["code", "math"]


def test_errors_name_the_missing_file_the_unknown_preset_and_the_bad_column(tmp_path, capsys):
    src = write_jsonl(tmp_path / "ok.jsonl", [GSM8K_ROW])
    out = str(tmp_path / "pool")
    with pytest.raises(SourceError, match="nope.jsonl"):
        import_pool(PoolImportConfig(sources=[str(tmp_path / "nope.jsonl")], domain="math", out=out, preset="gsm8k"))
    with pytest.raises(MappingError, match="'gsm9k'"):
        import_pool(PoolImportConfig(sources=[src], domain="math", out=out, preset="gsm9k"))
    with pytest.raises(MappingError, match="'problem'"):
        import_pool(PoolImportConfig(sources=[src], domain="math", out=out, preset="math"))
    with pytest.raises(MappingError, match="answr"):
        import_pool(PoolImportConfig(sources=[src], domain="math", out=out, mapping={"question": "question",
                                                                                      "answr": "answer"}))
    assert not Path(out).exists()  # nothing written before the error
    assert cli(["pool", "import", src, "--domain", "math", "--out", out, "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_pool_files_carry_the_schema_and_its_version(tmp_path):
    run_import(tmp_path, [GSM8K_ROW], "math", "gsm8k")
    path = next((tmp_path / "pool" / "pool").rglob("*.parquet"))
    assert schemas.schema_of(pq.read_schema(path)) == ("pool", schemas.SCHEMA_VERSION)


# --- multiple choice (GPQA) ---------------------------------------------------------------------------------------
GPQA_ROWS = [  # the columns of Idavidrein/gpqa (gpqa_diamond), a few of its many others included
    {"Pre-Revision Question": "...", "Record ID": "recTJlCq5f9lHDNzK",
     "Question": "Two quantum states with energies E1 and E2 have a lifetime of 10^-9 sec and 10^-8 sec, "
                 "respectively. We want to clearly distinguish these two energy levels. Which one of the following "
                 "options could be their energy difference so that they can be clearly resolved?\n",
     "Correct Answer": "10^-4 eV", "Incorrect Answer 1": "10^-11 eV", "Incorrect Answer 2": "10^-8 eV\n",
     "Incorrect Answer 3": "10^-9 eV", "High-level domain": "Physics", "Subdomain": "Physics (general)"},
    {"Pre-Revision Question": "...", "Record ID": "recV9dSEZTkJJaiTg",
     "Question": "How many of the stars listed below would be detectable using the ESPRESSO spectrograph?",
     "Correct Answer": "3", "Incorrect Answer 1": "4", "Incorrect Answer 2": "5", "Incorrect Answer 3": "2",
     "High-level domain": "Physics", "Subdomain": "Astrophysics"},
    {"Record ID": "recEmpty", "Question": "Which reagent converts an alkene into an epoxide?",
     "Correct Answer": "mCPBA", "Incorrect Answer 1": "NaBH4", "Incorrect Answer 2": "  ", "Incorrect Answer 3": "H2O"},
]


def test_gpqa_rows_become_lettered_questions_with_the_correct_letter_as_reference(tmp_path, capsys):
    from adaptcot.verify.math_answers import verify_math

    report, pool, rejects = run_import(tmp_path, GPQA_ROWS, "math", "gpqa")
    assert report.imported == 2
    assert [(r["reason"], r["detail"]) for r in rejects] == [
        ("missing_answer", "option column 'Incorrect Answer 2' is empty or absent")]
    by_row = {r["source_row"]: r for r in pool}
    for i, row in enumerate(GPQA_ROWS[:2]):
        stem, options = by_row[i]["question"].split("\n\n")
        assert stem == row["Question"].strip()
        lines = options.split("\n")
        assert [line[:3] for line in lines] == ["A) ", "B) ", "C) ", "D) "]
        texts = {line[0]: line[3:] for line in lines}
        assert sorted(texts.values()) == sorted(row[c].strip() for c in ("Correct Answer", "Incorrect Answer 1",
                                                                        "Incorrect Answer 2", "Incorrect Answer 3"))
        assert texts[by_row[i]["reference_answer"]] == row["Correct Answer"]
        letter = by_row[i]["reference_answer"]
        assert verify_math(f"So the answer is \\boxed{{{letter}}}.", letter).verdict == "passed"
    # The shuffle is fixed by the text: pinned letters, and the same ones from a second import with the mapping
    # given on the command line.
    assert [by_row[0]["reference_answer"], by_row[1]["reference_answer"]] == ["D", "D"]
    distractors = "distractors=Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3"
    assert cli(["pool", "import", str(tmp_path / "src.jsonl"), "--domain", "math", "--out", str(tmp_path / "again"),
                "--map", "question=Question", "--map", "answer=Correct Answer", "--map", distractors]) == 0
    again = {r["source_row"]: r for r in read_pool(tmp_path / "again").to_pylist()}
    assert [(again[i]["question"], again[i]["reference_answer"]) for i in (0, 1)] == [
        (by_row[i]["question"], by_row[i]["reference_answer"]) for i in (0, 1)]


def test_a_missing_distractor_column_stops_the_import(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "Incorrect Answer 3"} for row in GPQA_ROWS]
    with pytest.raises(MappingError, match="Incorrect Answer 3"):
        run_import(tmp_path, rows, "math", "gpqa")
    with pytest.raises(MappingError, match="distractors"):
        run_import(tmp_path, GPQA_ROWS, "math", "gpqa", mapping={"distractors": ","})


# --- LiveCodeBench --------------------------------------------------------------------------------------------------
def base64_zlib(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


def lcb_compressed(cases: list) -> str:
    """Private tests as code_generation_lite stores them: base64(zlib(pickle(JSON text)))."""
    return base64_zlib(pickle.dumps(json.dumps(cases)))


class RunsAShellCommand:  # what a hostile dataset could pickle in place of the tests
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


LCB_STDIN = {"question_title": "A+B", "platform": "atcoder", "question_id": "abc999_a", "contest_id": "abc999",
             "contest_date": "2024-09-07T00:00:00", "starter_code": "", "difficulty": "easy",
             "question_content": "You are given integers A and B. Print A+B.\n\nInput\n\nA B\n\nOutput\n\nPrint A+B.",
             "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
             "private_test_cases": lcb_compressed([{"input": "100 -5\n", "output": "95\n", "testtype": "stdin"},
                                                   {"input": "0 0\n", "output": "0\n", "testtype": "stdin"}]),
             "metadata": "{}"}
LCB_FUNCTIONAL = {
    "question_title": "sum-of-k-largest", "platform": "leetcode", "question_id": "3999", "contest_id": "weekly-999",
    "contest_date": "2024-09-08T00:00:00", "difficulty": "medium",
    "question_content": "You are given an integer array nums and an integer k. Return the sum of the k largest "
                        "elements of nums.\n\nExample 1:\n\nInput: nums = [1,5,3], k = 2\nOutput: 8",
    "starter_code": "class Solution:\n    def sumLargest(self, nums: List[int], k: int) -> int:\n        ",
    "public_test_cases": json.dumps([{"input": "[1, 5, 3]\n2", "output": "8", "testtype": "functional"}]),
    "private_test_cases": json.dumps([{"input": "[-1, -2, -3]\n1", "output": "-1", "testtype": "functional"},
                                      {"input": "[4, 4]\n2", "output": "8", "testtype": "functional"}]),
    "metadata": json.dumps({"func_name": "sumLargest"})}
# Right and wrong programs as fenced answers; each wrong one passes the public test and fails a private one.
LCB_ANSWERS = {
    "abc999_a": ("```python\na, b = map(int, input().split())\nprint(a + b)\n```",
                 "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```"),
    "3999": ("```python\nfrom typing import List\n\nclass Solution:\n"
             "    def sumLargest(self, nums: List[int], k: int) -> int:\n        return sum(sorted(nums)[-k:])\n```",
             "```python\nclass Solution:\n    def sumLargest(self, nums, k):\n"
             "        return sum(sorted(nums)[1:])\n```"),
}


def test_livecodebench_rows_import_with_private_tests_and_grade_right_and_wrong_programs(tmp_path):
    from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
    from adaptcot.verify.sandbox import SandboxConfig

    marker = tmp_path / "pwned"
    hostile = {**LCB_STDIN, "question_content": "Hostile row.", "private_test_cases": base64_zlib(
        pickle.dumps(RunsAShellCommand(marker)))}
    not_text = {**LCB_STDIN, "question_content": "Pickled list.", "private_test_cases": base64_zlib(
        pickle.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]))}
    report, pool, rejects = run_import(tmp_path, [LCB_STDIN, LCB_FUNCTIONAL, hostile, not_text], "code",
                                       "livecodebench")
    assert report.imported == 2 and not marker.exists()  # the hostile pickle never ran
    assert [r["reason"] for r in rejects] == ["bad_tests", "bad_tests"]
    assert "posix.system: refused" in rejects[0]["detail"] and "unpickles to a list" in rejects[1]["detail"]
    by_row = {r["source_row"]: r for r in pool}
    stdin, call = by_row[0], by_row[1]
    assert (stdin["category"], call["category"]) == ("easy", "medium")
    assert (stdin["tests"]["kind"], len(stdin["tests"]["cases"]), stdin["starter_code"]) == ("stdin_stdout", 3, None)
    assert (call["tests"]["kind"], call["tests"]["fn_name"]) == ("call", "sumLargest")
    assert [c["input"] for c in call["tests"]["cases"]] == ["[[1, 5, 3], 2]", "[[-1, -2, -3], 1]", "[[4, 4], 2]"]
    config = CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces", timeout_s=2.0, memory_mb=256), workers=1)
    with CodeVerifier(config) as verifier:
        for row, qid in ((stdin, "abc999_a"), (call, "3999")):
            right, wrong = (verifier.verify(answer, row["tests"]) for answer in LCB_ANSWERS[qid])
            assert (right.verdict, right.tests_passed, right.tests_total) == ("passed", 3, 3), right.detail
            assert (wrong.verdict, wrong.tests_passed) == ("wrong_answer", 1), wrong.detail


def test_livecodebench_function_name_falls_back_to_the_starter_code(tmp_path):
    row = {**LCB_FUNCTIONAL, "metadata": "{}", "private_test_cases": ""}
    _, pool, _ = run_import(tmp_path, [row], "code", "livecodebench")
    assert pool[0]["tests"]["fn_name"] == "sumLargest" and len(pool[0]["tests"]["cases"]) == 1


def test_hub_data_files_are_read_through_datasets_like_a_local_glob(tmp_path):
    from adaptcot.pool.importer import normalise_rows
    from adaptcot.pool.presets import PRESETS
    from adaptcot.pool.sources import Source, open_source

    assert open_source("hf://datasets/livecodebench/code_generation_lite/test*.jsonl").kind == "hf_files"
    with pytest.raises(SourceError, match="must end in"):
        open_source("hf://datasets/livecodebench/code_generation_lite/test.py")
    # The same reader (datasets' json builder over fsspec) with a local glob standing in for the hub.
    (tmp_path / "lcb").mkdir()
    write_jsonl(tmp_path / "lcb" / "test.jsonl", [LCB_STDIN])
    write_jsonl(tmp_path / "lcb" / "test2.jsonl", [LCB_FUNCTIONAL])
    write_jsonl(tmp_path / "lcb" / "other.jsonl", [{**LCB_STDIN, "question_content": "Not matched by the glob."}])
    source = Source(str(tmp_path / "lcb" / "test*.jsonl"), "hf_files")
    assert {"question_content", "private_test_cases", "difficulty"} <= source.column_names()
    pool, rejects = normalise_rows(source.rows(), PRESETS["livecodebench"], "code")
    assert rejects.num_rows == 0
    assert sorted(pool["category"].to_pylist()) == ["easy", "medium"]
    assert sorted(t["kind"] for t in pool["tests"].to_pylist()) == ["call", "stdin_stdout"]


def test_a_pool_written_before_the_category_column_still_reads(tmp_path):
    run_import(tmp_path, [GSM8K_ROW], "math", "gsm8k")
    path = next((tmp_path / "pool" / "pool").rglob("*.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["category"]), path)  # as schema version 2 wrote it
    report, pool, _ = run_import(tmp_path, [GSM8K_ROW, {"question": "New one?", "answer": "#### 9"}], "math", "gsm8k")
    assert (report.imported, report.already_in_pool) == (1, 1)
    assert [r["category"] for r in pool] == [None, None]


def test_a_pool_of_the_older_layout_is_refused_then_migrated_and_added_to(tmp_path):
    from adaptcot.pool.layout import PoolLayoutError, migrate_pool

    run_import(tmp_path, [GSM8K_ROW], "math", "gsm8k")
    flat = tmp_path / "pool" / "pool" / "part-old.parquet"  # the layout before buckets: files directly in pool/
    pq.write_table(read_pool(tmp_path / "pool").cast(schemas.POOL), flat)
    for path in (tmp_path / "pool" / "pool").glob("bucket=*"):
        shutil.rmtree(path)
    (tmp_path / "pool" / "pool_manifest.parquet").unlink()
    with pytest.raises(PoolLayoutError, match="adaptcot pool migrate"):
        run_import(tmp_path, [{**GSM8K_ROW, "question": "A new question?"}], "math", "gsm8k", name="more.jsonl")
    assert migrate_pool(str(tmp_path / "pool")) == 1 and not flat.exists()
    report, pool, _ = run_import(tmp_path, [{**GSM8K_ROW, "question": "A new question?"}], "math", "gsm8k",
                                 name="more.jsonl")
    assert report.imported == 1 and len(pool) == 2

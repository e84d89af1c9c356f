"""`adaptcot verify`: mixed math and code rows in, verdict columns out, bad rows to rejects, in input order."""

import json

import pyarrow.parquet as pq
import pytest

from adaptcot.job.cli import main

ADD_CALL = {"kind": "call", "fn_name": "add", "cases": [{"input": "[1, 2]", "output": "3"}]}
DOUBLE_IO = {"kind": "stdin_stdout", "cases": [{"input": "2\n", "output": "4\n"}, {"input": "5", "output": "10"}]}
ROWS = [
    {"id": "m1", "domain": "math", "response": "So the total is \\boxed{\\frac{3}{4}}.", "reference_answer": "0.75"},
    {"id": "c1", "response": "```python\ndef add(a, b):\n    return a + b\n```", "tests": ADD_CALL},
    {"id": "c2", "response": "```python\nprint(int(input()) * 3)\n```", "tests": json.dumps(DOUBLE_IO)},
    {"id": "m2", "response": "I think it is \\boxed{5}", "answer": "6"},
    {"id": "bad1", "response": "```python\nprint(1)\n```", "tests": {"kind": "special_judge"}},
    {"id": "bad2", "domain": "math", "response": "\\boxed{1}"},
    {"id": "bad3", "domain": "chemistry", "response": "H2O", "reference_answer": "water"},
    {"id": "bad4", "reference_answer": "1"},
    {"id": "c3", "response": "```python\nimport os\nos._exit(0)\n```", "tests": ADD_CALL},
]


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n")
    return path


def verify(rows_file, output, capsys):
    code = main(["verify", "--input", str(rows_file), "--output", str(output), "--isolation", "namespaces",
                 "--timeout", "2", "--workers", "2"])
    return code, capsys.readouterr()


def test_verify_writes_verdicts_in_order_and_rejects_bad_rows(rows_file, tmp_path, capsys):
    out = tmp_path / "verdicts.jsonl"
    code, printed = verify(rows_file, out, capsys)
    assert code == 0, printed.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["m1", "c1", "c2", "m2", "c3"]
    assert [r["verdict"] for r in rows] == ["passed", "passed", "wrong_answer", "wrong_answer", "wrong_answer"]
    assert [r["correct"] for r in rows] == [True, True, False, False, False]
    assert rows[2]["tests_passed"] == 0 and rows[2]["tests_total"] == 2 and "expected '4'" in rows[2]["verify_detail"]
    assert rows[0]["tests_total"] is None  # math rows have no test counts
    assert rows[1]["tests"] == ADD_CALL  # input fields are kept as they were
    rejects = [json.loads(line) for line in (tmp_path / "verdicts.rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["bad_tests", "malformed_row", "missing_answer",
                                                    "missing_response", "unknown_domain"]
    assert "rejected:" in printed.out and "verified 5 rows" in printed.out


def test_parquet_output_keeps_every_column(rows_file, tmp_path, capsys):
    out = tmp_path / "verdicts.parquet"
    code, printed = verify(rows_file, out, capsys)
    assert code == 0, printed.err
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["m1", "c1", "c2", "m2", "c3"]
    assert {"tests", "reference_answer", "answer", "verdict", "correct", "tests_passed"} <= set(table.column_names)
    assert json.loads(table.column("tests")[1].as_py()) == ADD_CALL  # objects and JSON text mixed: JSON text


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    assert main(["verify", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    (tmp_path / "in.jsonl").write_text("{}\n")
    assert main(["verify", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.csv")]) == 2
    assert ".jsonl or .parquet" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.csv").exists()


def test_a_prose_answer_is_read_only_from_a_row_that_says_it_finished(tmp_path, capsys):
    prose = "There are 4 choices for the first seat and 3 for the second.\nSo there are 12 ways in total."
    rows = [{"id": "stop", "response": prose, "reference_answer": "12", "finish_reason": "stop"},
            {"id": "cut", "response": prose, "reference_answer": "12", "finish_reason": "length"},
            {"id": "unknown", "response": prose, "reference_answer": "12"},
            {"id": "boxed", "response": "So there are \\boxed{12} ways.", "reference_answer": "12"}]
    path = tmp_path / "prose.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "verdicts.jsonl"
    code, printed = verify(path, out, capsys)
    assert code == 0, printed.err
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["verdict"] for r in verdicts] == ["passed", "no_answer", "no_answer", "passed"]
    assert [r["answer_rule"] for r in verdicts] == ["last_expression", None, None, "boxed"]
    assert ("math answers found by rule: boxed 1, last_expression 1 (extraction math_verify; 3 rows without "
            "finish_reason 'stop' read without the last expression)") in printed.out
    from adaptcot.verify.files import verify_file

    report = verify_file(str(path), str(tmp_path / "strict.jsonl"), math_extraction="strict")
    strict = [json.loads(line) for line in (tmp_path / "strict.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in strict] == ["no_answer", "no_answer", "no_answer", "passed"]
    assert report.rules == {"boxed": 1} and report.math_extraction == "strict"

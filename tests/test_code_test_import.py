"""Code tests that cannot fail (or cannot pass) are refused at import; unittest- and pytest-style tests are made to run.

Each refused row goes through the real `import_pool` and is checked in the rejects table; each converted style is
imported the same way, then run in the real sandbox against a right and a wrong program (issue 18, item 5).
"""

import json

import pytest

from adaptcot.pool.importer import PoolImportConfig, import_pool, read_pool, read_rejects
from adaptcot.verify.code_answers import rewrite_asserts
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
from adaptcot.verify.sandbox import SandboxConfig


def import_rows(tmp_path, rows: list[dict], preset: str) -> tuple[list[dict], list[dict]]:
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "pool"
    import_pool(PoolImportConfig(sources=[str(src)], domain="code", out=str(out), preset=preset))
    return read_pool(out).to_pylist(), read_rejects(out).to_pylist()


def native(tests: dict, question: str = "Write the function.") -> dict:
    """A row for the `adaptcot` preset: the pool's own tests struct as JSON text."""
    return {"question": question, "tests": json.dumps(tests)}


def assert_row(test_code: str, entry_point: str = "add") -> dict:
    return native({"kind": "assert", "test_code": test_code, "entry_point": entry_point})


def call_row(cases: list[dict]) -> dict:
    return native({"kind": "call", "fn_name": "add", "cases": cases})


# --- refused at import ------------------------------------------------------------------------------------------------
REFUSED = {  # name: (preset, row, what the reject's detail says)
    "humaneval_test_that_does_not_parse": (
        "humaneval", {"task_id": "HumanEval/x", "prompt": "def add(a, b):\n", "entry_point": "add",
                      "test": "def check(candidate):\n    assert candidate(1, 2) == 3 +\n"},
        "does not parse: line 2"),
    "mbpp_assert_that_does_not_parse": (
        "mbpp", {"task_id": 9, "text": "Add two numbers.", "test_list": ["assert add(1, 2) == 3", "assert add(1,"],
                 "test_setup_code": ""},
        "does not parse"),
    "asserts_only_in_a_function_nothing_calls": (
        "humaneval", {"task_id": "HumanEval/y", "prompt": "def add(a, b):\n", "entry_point": "add",
                      "test": "def verify(candidate):\n    assert candidate(1, 2) == 3\n"},
        "no assert can run"),
    "unittest_method_with_no_conversion": (
        "adaptcot", assert_row("import unittest\n\nclass T(unittest.TestCase):\n    def test_warns(self):\n"
                               "        with self.assertWarns(DeprecationWarning):\n            add(1, 2)\n"
                               "        self.assertEqual(add(1, 2), 3)\n"),
        "self.assertWarns"),
    "unittest_method_used_as_a_statement_with_no_conversion": (
        "adaptcot", assert_row("import unittest\n\nclass T(unittest.TestCase):\n    def test_logs(self):\n"
                               "        self.assertRegex(str(add(1, 2)), '3')\n"),
        "self.assertRegex"),
    "pytest_function_that_needs_a_fixture": (
        "adaptcot", assert_row("def test_add(tmp_path):\n    assert add(1, 2) == 3\n"),
        "test_add() takes arguments"),
    "test_code_importing_a_module_the_sandbox_lacks": (
        "adaptcot", assert_row("import numpy as np\n\nassert add(np.int64(1), 2) == 3\n"),
        "imports numpy"),
    "call_case_whose_input_is_not_json": (
        "adaptcot", call_row([{"input": "[1, 2]", "output": "3"}, {"input": "(1, 2)", "output": "3"}]),
        "call case 2: input is not valid JSON"),
    "call_case_whose_output_is_not_json": (
        "adaptcot", call_row([{"input": "[1, 2]", "output": "three"}]),
        "call case 1: output is not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_tests_that_cannot_fail_or_cannot_pass_are_refused_with_a_reason(tmp_path, name):
    preset, row, detail = REFUSED[name]
    pool, rejects = import_rows(tmp_path, [row], preset)
    assert pool == []
    assert [r["reason"] for r in rejects] == ["bad_tests"]
    assert detail in rejects[0]["detail"], rejects[0]["detail"]


def test_call_cases_given_as_json_data_are_stored_as_json_text(tmp_path):
    pool, rejects = import_rows(tmp_path, [call_row([{"input": ["a", True], "output": {"text": "a!"}},
                                                     {"input": "[\"b\", false]", "output": "\"b\""}])], "adaptcot")
    assert rejects == []
    assert pool[0]["tests"]["cases"] == [{"input": '["a", true]', "output": '{"text": "a!"}'},
                                         {"input": '["b", false]', "output": '"b"'}]


# --- converted at import, then run in the sandbox ---------------------------------------------------------------------
ADD = "def add(a, b):\n    return a + b\n"
UNITTEST_HEADER = "import unittest\n\n\nclass TestAdd(unittest.TestCase):\n"
MAIN = "\n\nif __name__ == '__main__':\n    unittest.main()\n"


def unittest_code(*test_lines: str, more_methods: str = "") -> str:
    body = "".join(f"        {line}\n" for line in test_lines)
    return UNITTEST_HEADER + "    def test_add(self):\n" + body + more_methods + MAIN


CONVERTED = {  # name: (test code, right program, wrong program); each wrong one passed every test before
    "pytest_functions_are_called": (
        "from solution import add\n\n\ndef test_small():\n    assert add(1, 2) == 3\n\n\n"
        "def test_negative():\n    assert add(-1, -2) == -3\n",
        ADD, "def add(a, b):\n    return abs(a) + abs(b)\n"),
    "the_main_guard_runs": (
        "def run_tests(f):\n    assert f(2, 2) == 4\n\n\nif __name__ == '__main__':\n    run_tests(add)\n",
        ADD, "def add(a, b):\n    return a * b + 1\n"),
    "assertEqual_and_assertNotEqual": (
        unittest_code("self.assertEqual(add(1, 2), 3)", "self.assertNotEqual(add(1, 1), 3, msg='1+1')"),
        ADD, "def add(a, b):\n    return 3\n"),
    "assertTrue_and_assertFalse": (
        unittest_code("self.assertTrue(add(1, 2) == 3)", "self.assertFalse(add(1, 1) == 3)"),
        ADD, "def add(a, b):\n    return 3\n"),
    "assertIn_and_assertNotIn": (
        unittest_code("self.assertIn(add(1, 2), [3, 4])", "self.assertNotIn(add(2, 2), [3, 5])"),
        ADD, "def add(a, b):\n    return 3\n"),
    "assertIs_IsNot_IsNone_IsNotNone": (
        unittest_code("self.assertIs(add(1, 1) == 2, True)", "self.assertIsNot(add(0, 0), None)",
                      "self.assertIsNone(add(None, None))", "self.assertIsNotNone(add(1, 1))"),
        "def add(a, b):\n    return None if a is None else a + b\n",
        "def add(a, b):\n    return None\n"),
    "assertAlmostEqual_with_default_places_places_and_delta": (
        unittest_code("self.assertAlmostEqual(add(0.1, 0.2), 0.3)", "self.assertAlmostEqual(add(1, 0.004), 1, 2)",
                      "self.assertAlmostEqual(add(1, 1), 2.5, delta=0.5)"),
        ADD, "def add(a, b):\n    return round(a + b, 1) + 0.01\n"),
    "assertRaises_as_a_context_manager_and_with_a_callable": (
        unittest_code("with self.assertRaises(ValueError) as raised:", "    add(-1, 2)",
                      "self.assertIn('negative', str(raised.exception))", "self.assertRaises(ValueError, add, 2, -1)",
                      "self.assertEqual(add(1, 2), 3)"),
        "def add(a, b):\n    if a < 0 or b < 0:\n        raise ValueError('negative input')\n    return a + b\n",
        ADD),
    "assertListEqual_DictEqual_TupleEqual_SetEqual_CountEqual": (
        unittest_code("self.assertListEqual(add([1], [2]), [1, 2])", "self.assertTupleEqual(add((1,), (2,)), (1, 2))",
                      "self.assertDictEqual(add({'a': 1}, {'b': 2}), {'a': 1, 'b': 2})",
                      "self.assertSetEqual(add({1}, {2}), {1, 2})",
                      "self.assertCountEqual(add([[1], [2]], [[1]]), [[1], [1], [2]])"),
        "def add(a, b):\n    if isinstance(a, (set, dict)):\n        return a | b\n    return a + b\n",
        "def add(a, b):\n    if isinstance(a, (set, dict)):\n        return a | b\n    return b + a\n"),
    "assertGreater_Less_and_their_Equal_forms": (
        unittest_code("self.assertGreater(add(1, 2), 2)", "self.assertGreaterEqual(add(1, 2), 3)",
                      "self.assertLess(add(1, 2), 4)", "self.assertLessEqual(add(1, 2), 3)"),
        ADD, "def add(a, b):\n    return a + b + 1\n"),
    "setUp_tearDown_subTest_and_an_inherited_test": (
        "import unittest\n\n\nclass Base(unittest.TestCase):\n    def setUp(self):\n"
        "        self.cases = [(1, 2, 3), (5, 5, 10)]\n\n    def test_cases(self):\n"
        "        for a, b, want in self.cases:\n            with self.subTest(a=a, b=b):\n"
        "                self.assertEqual(add(a, b), want)\n\n\n"
        "class TestMore(Base):\n    def tearDown(self):\n        self.check_not_negative(add(0, 0))\n\n"
        "    def check_not_negative(self, value):\n        self.assertGreaterEqual(value, 0)\n\n"
        "    def test_zero(self):\n        self.assertEqual(add(0, 0), 0)\n" + MAIN,
        ADD, "def add(a, b):\n    return 3 if a < 3 else 0\n"),
    "TestCase_and_main_imported_from_unittest": (
        "from unittest import TestCase, main\n\n\nclass T(TestCase):\n    def test_add(self):\n"
        "        self.assertEqual(add(2, 2), 4)\n\n\nif __name__ == '__main__':\n    main()\n",
        ADD, "def add(a, b):\n    return a * b + 1\n"),
    "asserts_in_a_loop_must_report_at_least_once": (
        "def check(candidate):\n    for got, want in zip(candidate(3), [1, 2, 3]):\n        assert got == want\n",
        "def add(n):\n    return list(range(1, n + 1))\n", "def add(n):\n    return []\n"),
}


@pytest.fixture(scope="module")
def verifier():
    config = CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces", timeout_s=2.0, memory_mb=256), workers=1)
    with CodeVerifier(config) as v:
        yield v


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_converted_tests_pass_a_right_program_and_fail_a_wrong_one(tmp_path, verifier, name):
    test_code, right, wrong = CONVERTED[name]
    pool, rejects = import_rows(tmp_path, [assert_row(test_code)], "adaptcot")
    assert rejects == []
    tests = pool[0]["tests"]
    passed = verifier.run_tests(right, tests)
    assert passed.verdict == "passed", (passed.detail, tests["test_code"])
    failed = verifier.run_tests(wrong, tests)
    assert failed.verdict == "wrong_answer", (failed.detail, tests["test_code"])


def test_an_assert_that_fails_in_a_converted_unittest_is_a_wrong_answer_at_its_site(tmp_path, verifier):
    pool, _ = import_rows(tmp_path, [assert_row(unittest_code("self.assertEqual(add(2, 3), 5)"))], "adaptcot")
    verdict = verifier.run_tests("def add(a, b):\n    return a - b\n", pool[0]["tests"])
    assert (verdict.verdict, verdict.detail) == ("wrong_answer", "assert #1: expected 5, got -1")
    assert "unittest.main" not in pool[0]["tests"]["test_code"]  # it would exit before any test ran


# --- which asserts must report ----------------------------------------------------------------------------------------
def test_asserts_in_loops_and_in_called_functions_must_report_those_in_branches_need_not():
    code = ("def helper(x):\n    assert add(x, 0) == x\n\n"                  # 0: called straight-line below
            "def unused():\n    assert add(1, 1) == 2\n\n"                   # 1: never called
            "def check(candidate):\n"
            "    assert candidate(1, 2) == 3\n"                              # 2: straight-line
            "    for x in [1, 2]:\n        assert candidate(x, x) == 2 * x\n"  # 3: loop
            "    n = 0\n    while n < 2:\n        assert candidate(n, 0) == n\n        n += 1\n"  # 4: loop
            "    if candidate(0, 0):\n        assert False\n"                # 5: branch
            "    try:\n        assert candidate(1, 1) == 2\n"                # 6: try
            "    except TypeError:\n        pass\n"
            "    with open('/dev/null'):\n        assert candidate(2, 2) == 4\n"  # 7: with
            "    helper(3)\n\n"
            "check(add)\n")
    assert rewrite_asserts(code, "add").required == {0, 2, 3, 4}


def test_methods_that_a_converted_unittest_class_calls_count_as_straight_line(tmp_path):
    more = ("\n    def check_small(self, value):\n        self.assertLess(value, 10)\n\n"
            "    def unused(self):\n        self.assertTrue(False)\n")
    code = unittest_code("self.assertEqual(add(1, 2), 3)", "if add(0, 0):", "    self.fail('zero')",
                         "self.check_small(add(1, 1))", more_methods=more)
    pool, _ = import_rows(tmp_path, [assert_row(code)], "adaptcot")
    plan = rewrite_asserts(pool[0]["tests"]["test_code"], "add")
    assert plan.required == {0, 2}  # not the branch's `fail` (1) nor the method nothing calls (3)
    assert plan.expected == {0: 3}

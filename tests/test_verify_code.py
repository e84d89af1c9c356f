"""Code verification: extraction from responses, the three test kinds, comparison rules, the table and Ray wrappers."""

import json

import pyarrow as pa
import pytest

from adaptcot.verify.code_answers import extract_code, outputs_match, rewrite_asserts, values_equal
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyActor, CodeVerifyConfig, verify_code_table
from adaptcot.verify.sandbox import SandboxConfig

CONFIG = CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces", timeout_s=2.0, memory_mb=256), workers=2)

STDIN = {"kind": "stdin_stdout", "cases": [{"input": "3\n1 2 3\n", "output": "6\n"},
                                           {"input": "2\n-5 5\n", "output": "0\n"}]}
CALL = {"kind": "call", "fn_name": "two_sum", "cases": [{"input": "[[2, 7, 11, 15], 9]", "output": "[0, 1]"},
                                                         {"input": "[[3, 2, 4], 6]", "output": "[1, 2]"}]}
HUMANEVAL = {"kind": "assert", "entry_point": "is_palindrome", "test_code": (
    "METADATA = {}\n\n"
    "def check(candidate):\n"
    "    assert candidate('') == True\n"
    "    assert candidate('aba') == True\n"
    "    assert candidate('ab') == False\n"
    "    for word in ['x', 'xyx']:\n"
    "        assert candidate(word)\n"
    "\ncheck(is_palindrome)\n")}
MBPP = {"kind": "assert", "entry_point": "min_cost", "test_code": (
    "assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8\n"
    "assert min_cost([[2, 3, 4], [5, 9, 3], [2, 6, 4]], 2, 2) == 12\n")}

SOLUTIONS = {  # kind: (tests, right program, wrong program)
    "stdin_stdout": (STDIN, "input()\nprint(sum(map(int, input().split())))\n",
                     "input()\nprint(max(map(int, input().split())))\n"),
    "call": (CALL, "def two_sum(nums, target):\n    seen = {}\n    for i, x in enumerate(nums):\n"
                   "        if target - x in seen:\n            return [seen[target - x], i]\n        seen[x] = i\n",
             "def two_sum(nums, target):\n    return [0, 1]\n"),
    "leetcode_class": (CALL, "class Solution:\n    def two_sum(self, nums, target):\n"
                             "        return next([i, j] for j in range(len(nums)) for i in range(j)\n"
                             "                    if nums[i] + nums[j] == target)\n",
                       "class Solution:\n    def two_sum(self, nums, target):\n        return (0, 1)\n"),
    # LeetCode starter code annotates with List[int] and imports nothing: the judge pre-imports typing.
    "leetcode_typing": (CALL, "class Solution:\n    def two_sum(self, nums: List[int], target: int) -> List[int]:\n"
                              "        seen = defaultdict(int)\n        for i, x in enumerate(nums):\n"
                              "            if target - x in seen:\n                return [seen[target - x], i]\n"
                              "            seen[x] = i\n",
                        "class Solution:\n    def two_sum(self, nums: List[int], target: int) -> List[int]:\n"
                        "        return [0, 1]\n"),
    "humaneval": (HUMANEVAL, "def is_palindrome(text):\n    return text == text[::-1]\n",
                  "def is_palindrome(text):\n    return len(text) < 2\n"),
    "mbpp": (MBPP, "def min_cost(cost, m, n):\n"
                   "    R, C = len(cost), len(cost[0])\n"
                   "    tc = [[0] * C for _ in range(R)]\n"
                   "    for i in range(R):\n"
                   "        for j in range(C):\n"
                   "            best = min([tc[a][b] for a, b in ((i-1, j-1), (i-1, j), (i, j-1)) if a >= 0 and b >= 0],"
                   " default=0)\n"
                   "            tc[i][j] = best + cost[i][j]\n"
                   "    return tc[m][n]\n",
             "def min_cost(cost, m, n):\n    return 8\n"),
}


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(CONFIG) as v:
        yield v


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_right_and_wrong_solutions_for_each_test_kind(verifier, name):
    tests, right, wrong = SOLUTIONS[name]
    passed = verifier.run_tests(right, tests)
    assert (passed.verdict, passed.correct) == ("passed", True), passed.detail
    assert passed.tests_passed == passed.tests_total > 0
    failed = verifier.run_tests(wrong, tests)
    assert (failed.verdict, failed.correct) == ("wrong_answer", False)
    assert failed.tests_passed < failed.tests_total and "expected" in failed.detail


def test_errors_are_told_apart(verifier):
    cases = {"def two_sum(nums, target)\n    return [0, 1]\n": "compile_error",
             "def two_sum(nums, target):\n    return nums[99]\n": "runtime_error",
             "def two_sum(n, t):\n    return two_sum(n, t)\n": "runtime_error"}
    for program, expected in cases.items():
        verdict = verifier.run_tests(program, CALL)
        assert verdict.verdict == expected, (program, verdict)
        assert verdict.correct is False
    verdict = verifier.run_tests("def two_sum(nums, target):\n    return nums[99]\n", CALL)
    assert "IndexError" in verdict.detail and "case 1/2" in verdict.detail  # first failing case, stderr tail


def test_stdin_program_with_a_nonzero_exit_is_a_runtime_error(verifier):
    verdict = verifier.run_tests("input()\nprint(6)\nraise SystemExit(3)\n", STDIN)
    assert verdict.verdict == "runtime_error" and "exit code 3" in verdict.detail


def test_responses_are_verified_from_their_last_python_block(verifier):
    right, wrong = SOLUTIONS["stdin_stdout"][1:]
    response = f"Idea:\n```python\n{wrong}```\nBetter:\n```python\n{right}```\nDone."
    assert verifier.verify(response, STDIN).verdict == "passed"
    assert verifier.verify("I cannot solve this.", STDIN).verdict == "no_answer"
    assert verifier.verify(f"<think>```python\n{right}```", STDIN).verdict == "no_answer"  # cut-off reasoning


def test_extraction_choices():
    text = "<think>\n```python\nthinking = 1\n```\n</think>\n```py\na = 1\n```\n```bash\nls\n```\n```\nb = 22\n```\n"
    assert extract_code(text) == "b = 22\n"
    assert extract_code(text, "first") == "a = 1\n"
    assert extract_code(text, "longest") == "b = 22\n"
    assert extract_code(text, "all") == "a = 1\n\n\nb = 22\n"
    assert extract_code("```python\nx = 1\n") is None  # never closed: the answer was cut off
    assert extract_code("print(1)") is None
    assert extract_code("print(1)", whole_response_fallback=True) == "print(1)"
    assert extract_code("Use print(1).", whole_response_fallback=True) is None


def test_stdout_comparison_is_whitespace_tolerant_and_optionally_float_tolerant():
    assert outputs_match("1 2\n3  \n\n", "1 2\n3")[0]
    assert outputs_match("1\n2", "1 2")[0]
    assert not outputs_match("1 2", "1 2 3")[0]
    assert not outputs_match("0.3333", "0.333333")[0]
    assert outputs_match("0.333333333", "0.333333", float_tolerance=1e-6)[0]
    same, where = outputs_match("1 5 3", "1 2 3")
    assert not same and "token 2" in where


def test_returned_values_are_compared_by_value_and_type():
    assert values_equal((0, 1), [0, 1], json_expected=True)
    assert not values_equal((0, 1), [0, 1])  # assert f() == [0, 1] fails in Python for a tuple too
    assert not values_equal(True, 1) and not values_equal(1, True)
    assert not values_equal("3", 3)
    assert values_equal(3, 3.0)
    assert values_equal([{"a": 0.1 + 0.2}], [{"a": 0.3}], float_tolerance=1e-9)
    assert not values_equal([{"a": 0.1 + 0.2}], [{"a": 0.3}])


def test_literal_expected_values_never_enter_the_sandbox():
    plan = rewrite_asserts(HUMANEVAL["test_code"], "is_palindrome")
    assert "True" not in plan.code.split("def check", 1)[1].split("for word")[0]
    assert plan.expected == {0: True, 1: True, 2: False}
    assert plan.required == {0, 1, 2, 3}  # the loop's assert too: it must report at least once
    assert "__adaptcot_result__(candidate(word))" in plan.code


def test_verify_code_table_keeps_rows_and_order(verifier):
    right, wrong = SOLUTIONS["call"][1:]
    table = pa.table({"question_id": ["q1", "q2", "q3"],
                      "response": [f"```python\n{right}```", f"```python\n{wrong}```", "no code"],
                      "tests": [CALL, CALL, CALL]})
    out = verify_code_table(table, verifier)
    assert out.column("question_id").to_pylist() == ["q1", "q2", "q3"]
    assert out.column("verdict").to_pylist() == ["passed", "wrong_answer", "no_answer"]
    assert out.column("tests_total").to_pylist() == [2, 2, 0]


@pytest.mark.slow
def test_ray_actors_with_fractional_cpus_give_the_same_verdicts(ray_session, verifier):
    import ray

    right, wrong = SOLUTIONS["stdin_stdout"][1:]
    rows = [{"i": i, "response": f"```python\n{(right, wrong)[i % 2]}```", "tests": json.dumps(STDIN)}
            for i in range(24)]
    ds = ray.data.from_items(rows).map(lambda r: dict(r, tests=json.loads(r["tests"])))
    config = CONFIG.model_copy(update={"workers": 1})
    out = ds.map_batches(CodeVerifyActor, fn_constructor_kwargs={"config": config}, batch_format="pyarrow",
                         batch_size=4, concurrency=2, num_cpus=config.num_cpus).take_all()
    assert sorted(r["i"] for r in out) == list(range(24))
    assert all(r["verdict"] == ("passed" if r["i"] % 2 == 0 else "wrong_answer") for r in out)


def test_grading_verifies_math_and_code_attempts_of_one_batch_in_order():
    from adaptcot.verify.attempts import AttemptVerifier, VerifyConfig

    right, wrong = SOLUTIONS["stdin_stdout"][1:]
    rows = [("math", "The answer is \\boxed{12}.", "12", None, None),
            ("code", f"```python\n{right}```", None, STDIN, None),
            ("math", "\\boxed{13}", "12", None, None),
            ("code", f"```python\n{wrong}```", None, STDIN, None),
            ("code", None, None, STDIN, "prompt too long")]
    batch = pa.table({"question_id": [f"q{i}" for i in range(len(rows))],
                      "domain": [r[0] for r in rows], "response": [r[1] for r in rows],
                      "reference_answer": [r[2] for r in rows],
                      "tests_json": [json.dumps(r[3]) if r[3] else None for r in rows],
                      "error": [r[4] for r in rows]})
    stage = AttemptVerifier(VerifyConfig(workers=1, timeout_s=5.0, code=CONFIG))
    out = stage(batch)
    assert out.column("question_id").to_pylist() == ["q0", "q1", "q2", "q3", "q4"]
    assert out.column("verdict").to_pylist() == ["passed", "passed", "wrong_answer", "wrong_answer", "error"]
    assert out.column("correct").to_pylist() == [True, True, False, False, None]
    stage.close()

"""Math answer verification: real output shapes, time limits in worker processes, Arrow tables, Ray Data."""

import time

import pyarrow as pa
import pytest

from adaptcot.common import schemas
from adaptcot.verify.math_answers import (VERDICTS, MathVerifier, MathVerifyActor, Verdict, is_choice, verify_math,
                                          verify_table)

# --- responses shaped like real model outputs ----------------------------------------------------------------------
R1_STYLE = (  # DeepSeek-R1 / QwQ: long reasoning (with a rejected boxed guess) in <think>, then a short answer
    "<think>\nOkay, so I need to find how many clips Natalia sold in April and May. She sold 48 in April.\n"
    "In May she sold half as many, so 48 / 2 = 24. Wait, let me make sure: half of 48 is 24, yes.\n"
    "Total is 48 + 24 = 72. Hmm, maybe I should double-check: \\boxed{70}? No, 48 + 24 = 72.\n</think>\n\n"
    "Natalia sold 48 clips in April and $\\frac{48}{2} = 24$ clips in May.\n\n"
    "**Final Answer**\n\\[\n\\boxed{72}\n\\]"
)
QWEN_STYLE = ("To compute $\\frac{1}{2} + \\frac{1}{4}$, write both over 4:\n"
              "\\[\n\\frac{2}{4} + \\frac{1}{4} = \\frac{3}{4}.\n\\]\nThe final answer is $\\boxed{\\dfrac{3}{4}}$.")
GSM8K_STYLE = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
               "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
SELF_CORRECTED = ("So the answer is \\boxed{3}.\n\nWait, I made an arithmetic error in step two: 5 - 3 is 2, not 3. "
                  "Redoing the subtraction gives the corrected result:\n\\boxed{2}")
THINK_THEN_ANSWER = "<think>\nLet me try \\boxed{3}... no, that fails the check.\n</think>\nThe answer is \\boxed{2}."
TRUNCATED_THINK = "<think>\nOkay, 48 in April, half as many in May, so 48 / 2 = 24, and 48 + 24 = 72. Let me double"
TRUNCATED_PLAIN = ("To find the total, first compute 48 / 2 = 24 clips in May. Then we add the April clips:\n"
                   "48 + 24 = 72, and now we need to check whether")

CASES = [  # (reference, response, verdict)
    # long reasoning then \boxed{}: only the text after </think> counts (the \boxed{70} inside is a discarded guess)
    ("72", R1_STYLE, "passed"),
    ("70", R1_STYLE, "wrong_answer"),
    ("\\frac{3}{4}", QWEN_STYLE, "passed"),
    ("0.75", QWEN_STYLE, "passed"),  # \dfrac vs a decimal
    ("72", GSM8K_STYLE, "passed"),
    ("1072", "She earns 1,072 dollars in total.\n#### 1,072", "passed"),
    ("72", "The answer is 72", "passed"),
    ("\\frac{1}{2}", "The answer is $\\frac{1}{2}$.", "passed"),
    ("\\frac{3}{4}", "Final answer: 3/4", "passed"),
    ("42", "**Answer:** 42", "passed"),
    ("\\frac12", "The probability is therefore $\\boxed{0.5}$.", "passed"),
    ("0.5", "So $p = \\boxed{\\frac12}$.", "passed"),
    ("\\frac{1}{3}", "\\boxed{0.3333333}", "passed"),  # decimals are compared rounded to 6 places
    ("\\frac{1}{3}", "\\boxed{0.333}", "wrong_answer"),
    # Percentages: Math-Verify accepts both the fraction and the bare number for a percent (50% == 0.5 == 50).
    # Lenient when a question wants "50%" and gets "50", but never wrong the other way; we keep its rule.
    ("50\\%", "The answer is \\boxed{0.5}", "passed"),
    ("50\\%", "The answer is \\boxed{50}", "passed"),
    ("0.5", "The answer is \\boxed{50\\%}", "passed"),
    # units and currency around numbers
    ("5", "The side length is $\\boxed{5 \\text{ cm}}$.", "passed"),
    ("5", "So she pays \\boxed{\\$5}.", "passed"),
    ("5", "The answer is \\$5.", "passed"),
    ("18", "Janet makes $\\boxed{18 \\text{ dollars}}$ every day.", "passed"),
    # several answers, sets, tuples, intervals
    ("1, 2", "The roots are $\\boxed{2, 1}$.", "passed"),
    ("1, 2", "Hence $\\boxed{x = 1 \\text{ or } x = 2}$.", "passed"),
    ("x = 1 \\text{ or } x = 2", "x = 1 or x = 2", "passed"),
    ("1, 2", "The roots are $\\boxed{1, 3}$.", "wrong_answer"),
    ("(1, 2)", "The point is $\\boxed{(1,2)}$.", "passed"),
    ("(1, 2)", "The point is $\\boxed{(2,1)}$.", "wrong_answer"),  # an ordered pair, not a set
    ("[1, 3)", "The solution set is $\\boxed{[1, 3)}$.", "passed"),
    ("[1, 3)", "The solution set is $\\boxed{[1, 3]}$.", "wrong_answer"),
    ("(-\\infty, 2]", "So $\\boxed{x \\le 2}$.", "passed"),  # an interval answered as an inequality
    ("2\\sqrt{3}", "$\\boxed{\\sqrt{12}}$", "passed"),
    # wrong answers that look close
    ("72", "\\boxed{71.99}", "wrong_answer"),
    ("1000000", "\\boxed{1000001}", "wrong_answer"),
    ("-3", "The answer is \\boxed{3}.", "wrong_answer"),
    ("\\frac{3}{4}", "The answer is \\boxed{\\frac{4}{3}}.", "wrong_answer"),
    # the last boxed answer wins
    ("2", SELF_CORRECTED, "passed"),
    ("3", SELF_CORRECTED, "wrong_answer"),
    ("2", THINK_THEN_ANSWER, "passed"),
    ("3", THINK_THEN_ANSWER, "wrong_answer"),
    # Math-Verify merges boxes a few characters apart joined by ","/"and"/"or" into one set of answers (meant for
    # "\boxed{1} and \boxed{2}"), so a hedge between two answers is graded as the set {3, 2}: wrong against either.
    ("2", "\\boxed{3}, or rather \\boxed{2}", "wrong_answer"),
    # no answer: reasoning cut off, empty, nothing after </think>, a bare number in prose
    ("72", TRUNCATED_THINK, "no_answer"),
    ("72", TRUNCATED_PLAIN, "no_answer"),
    ("72", "", "no_answer"),
    ("72", "   \n", "no_answer"),
    ("72", "<think>\n48 + 24 = 72\n</think>\n", "no_answer"),
    ("3", "So she has 3 apples left.", "no_answer"),  # no marker: we do not guess the last number in prose
    # a response that is nothing but the answer
    ("72", "72", "passed"),
    ("\\frac{3}{4}", "$\\frac{3}{4}$", "passed"),
    ("\\text{Monday}", "The meeting is on $\\boxed{\\text{Monday}}$.", "passed"),
    # Known limit: degrees are not converted (Math-Verify parses with convert_degrees=False), so 60° != pi/3.
    ("\\frac{\\pi}{3}", "\\boxed{60^\\circ}", "wrong_answer"),
]
HANG = ("The answer is \\boxed{9^{9^{9^{9}}}}.", "3")  # sympy tries to evaluate the power tower exactly: never ends


# Multiple choice (GPQA): the reference is the letter of the correct option.
GPQA_R1_STYLE = (
    "<think>\nThe lifetimes give energy widths hbar/tau: about 6.6e-7 eV and 6.6e-8 eV. To resolve the levels the\n"
    "difference must exceed the larger width, so 10^-8 eV (A) is too small... 10^-4 eV works.\n</think>\n\n"
    "The energy difference must exceed $\\hbar/\\tau \\approx 6.6\\times10^{-7}$ eV, so only $10^{-4}$ eV can be "
    "resolved.\n\n$\\boxed{C}$")
MC_CASES = [  # (reference letter, response, verdict)
    ("C", GPQA_R1_STYLE, "passed"),  # the (A) inside the reasoning is not the answer
    ("A", GPQA_R1_STYLE, "wrong_answer"),
    ("B", "Only (B) conserves charge. Therefore the answer is $\\boxed{\\text{(B)}}$.", "passed"),
    ("B", "\\boxed{(B)}", "passed"),
    ("D", "\\boxed{D) 2 stars}", "passed"),
    ("C", "The product is the trans isomer, which is option C. The answer is (C).", "passed"),
    ("D", "Both NaBH4 and LiAlH4 reduce the ketone, but only one keeps the ester.\n\n**Answer:** D", "passed"),
    ("A", "Answer: A", "passed"),
    ("A", "(A)", "passed"),  # nothing but the letter
    ("A", "Answer: (B) 3.2 eV", "wrong_answer"),
    ("C", "After the Diels-Alder step the ring has two stereocenters, so the answer is \\boxed{B}.", "wrong_answer"),
    ("B", "<think>\nOption A is out because the spin is 1/2. Between B and C, hmm, let me compute the", "no_answer"),
    ("C", "The reaction is clearly exothermic, so the equilibrium shifts toward the reactants on heating.",
     "no_answer"),
    ("C", "The energy difference is \\boxed{10^{-4} \\text{ eV}}.", "no_answer"),  # the option's text, not its letter
]


def test_multiple_choice_verdicts_say_what_was_read():
    assert verify_math("Answer: (B) 3.2 eV", "A").detail == "expected 'A', got 'B'"
    assert "not an option letter" in verify_math("\\boxed{10^{-4}}", "C").detail
    assert (is_choice("C"), is_choice(" J\n"), is_choice("AB"), is_choice("K"), is_choice("x")) == (
        True, True, False, False, False)


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(workers=2, timeout_s=10.0) as v:
        yield v


@pytest.mark.parametrize("reference,response,expected", CASES + MC_CASES)
def test_real_output_shapes(reference, response, expected):
    v = verify_math(response, reference)
    assert v.verdict == expected, v
    assert v.correct is (expected == "passed")


def test_verdict_says_what_was_read_and_why():
    v = verify_math(SELF_CORRECTED, "3")
    assert (v.extracted, v.detail) == ("2", "expected '3', got '2'")
    assert verify_math(TRUNCATED_THINK, "72").detail == "reasoning cut off: <think> never closed"


def test_verdict_names_are_fixed():
    assert VERDICTS == ("passed", "wrong_answer", "no_answer", "timeout", "error")
    with pytest.raises(ValueError, match="unknown verdict"):
        Verdict("right", True)


@pytest.mark.parametrize("reference", ["", None, "   "])
def test_unusable_reference_is_the_verifiers_fault(reference):
    v = verify_math("\\boxed{3}", reference)
    assert (v.verdict, v.correct) == ("error", None)  # never counted against the model


def test_worker_pool_grades_like_the_function(verifier):
    verdicts = verifier.verify_many([(response, reference) for reference, response, _ in CASES + MC_CASES])
    assert [v.verdict for v in verdicts] == [expected for _, _, expected in CASES + MC_CASES]


def test_hanging_pair_times_out_and_the_pool_recovers():
    with MathVerifier(workers=1, timeout_s=1.0) as v:
        v.verify_many([("\\boxed{1}", "1")])  # let the worker start outside the timed part
        start = time.monotonic()
        hung, after = v.verify_many([HANG, ("\\boxed{3}", "3")])
        elapsed = time.monotonic() - start
    assert (hung.verdict, hung.correct) == ("timeout", None)
    assert after.verdict == "passed"  # on a fresh worker
    assert elapsed < 10.0


def test_an_exception_in_the_worker_is_an_error_not_a_crash(verifier):
    bad, good = verifier.verify_many([(42, "3"), ("\\boxed{3}", "3")])  # a response that is not text
    assert (bad.verdict, bad.correct) == ("error", None)
    assert "AttributeError" in bad.detail  # the detail names what went wrong
    assert good.verdict == "passed"


# --- Arrow tables --------------------------------------------------------------------------------------------------
def _attempts() -> pa.Table:
    return pa.table({
        "question_id": ["q0", "q1", "q2", "q3", "q4"],
        "response": [R1_STYLE, GSM8K_STYLE, None, TRUNCATED_THINK, "\\boxed{5}"],
        "reference_answer": ["72", "71", "72", "72", None],
    })


def test_verify_table_adds_verdict_columns_row_for_row(verifier):
    table = _attempts()
    out = verify_table(table, verifier)
    assert out.column("question_id").to_pylist() == table.column("question_id").to_pylist()
    assert out.column("verdict").to_pylist() == ["passed", "wrong_answer", "no_answer", "no_answer", "error"]
    assert out.column("correct").to_pylist() == [True, False, False, False, None]
    assert out.schema.field("correct").type == pa.bool_()
    assert "reasoning cut off" in out.column("verify_detail")[3].as_py()


def test_verify_table_fills_the_attempts_tables_own_columns(verifier):
    # The attempts table already has (empty) verdict / correct columns: they are filled, not duplicated.
    attempt = {"question_id": "q0", "domain": "math", "student": "s", "sample_index": 0, "response": "\\boxed{4}"}
    table = pa.Table.from_pylist([attempt], schema=schemas.ATTEMPTS).append_column("reference_answer", pa.array(["4"]))
    out = verify_table(table, verifier)
    assert out.column_names == schemas.ATTEMPTS.names + ["reference_answer"]
    assert (out.column("verdict")[0].as_py(), out.column("correct")[0].as_py()) == ("passed", True)


def test_verify_table_names_a_missing_column(verifier):
    with pytest.raises(schemas.SchemaError, match="reference_answer"):
        verify_table(_attempts().drop_columns(["reference_answer"]), verifier)


# --- Ray Data ------------------------------------------------------------------------------------------------------
def test_ray_data_actor_grades_like_verify_table(ray_session, verifier):
    import ray

    table = _attempts()
    expected = verify_table(table, verifier).sort_by("question_id")
    hang = pa.table({"question_id": ["q5"], "response": [HANG[0]], "reference_answer": [HANG[1]]})
    refs = (ray.data.from_arrow(pa.concat_tables([table, hang]))
            .map_batches(MathVerifyActor, fn_constructor_kwargs={"workers": 1, "timeout_s": 1.0},
                         batch_format="pyarrow", concurrency=1, num_cpus=0.5)
            .to_arrow_refs())
    out = pa.concat_tables(ray.get(refs)).sort_by("question_id")
    assert out.column("question_id").to_pylist() == ["q0", "q1", "q2", "q3", "q4", "q5"]
    for name in ("verdict", "correct", "verify_detail"):
        assert out.column(name).to_pylist()[:5] == expected.column(name).to_pylist()
    # the time limit works inside a Ray actor too: the worker is killed, the verdict says so
    assert (out.column("verdict")[5].as_py(), out.column("correct")[5].as_py()) == ("timeout", None)

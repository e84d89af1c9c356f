"""Math answer verification: real output shapes, time limits in worker processes, Arrow tables, Ray Data."""

import time

import pyarrow as pa
import pytest

from adaptcot.common import schemas
from adaptcot.verify.math_answers import (ANSWER_RULES, VERDICTS, MathVerifier, MathVerifyActor, Verdict, is_choice,
                                          is_finished, verify_math, verify_table)

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
    # no marker in prose: with an unknown finish (the default of verify_math), the last number is not read
    ("3", "So she has 3 apples left.", "no_answer"),
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


# --- Answers stated only in prose: the last-expression rule ----------------------------------------------------------
# Written in the style of GPT-4 and Qwen answers to competition problems: no \boxed{}, no answer marker, the result
# given in the last sentence or as the last display formula.
PROSE = [  # (reference, response): the final answer stated only in prose or as the last formula
    ("1", ("We can write $f(x) = x^2 - 2x + 2 = (x-1)^2 + 1$.\nSince $(x-1)^2 \\ge 0$ for all real $x$, we have "
           "$f(x) \\ge 1$, with equality when $x = 1$.\nTherefore, the minimum value is $1$.")),
    ("12", ("There are 4 choices for the first seat and 3 choices for the second seat.\nBy the multiplication "
            "principle, $4 \\times 3 = 12$.\nSo there are 12 ways in total.")),
    ("\\frac{3}{4}", "Multiplying both sides by 4 gives $4x + 2 = 5$, so $4x = 3$.\n\nThus $x = \\frac{3}{4}$."),
    ("\\frac{\\sqrt{3}}{2}", ("In a 30-60-90 triangle the sides are $1$, $\\sqrt{3}$ and $2$, and the side opposite "
                              "the $60^\\circ$ angle is $\\sqrt{3}$. Hence\n\\[\n\\sin 60^\\circ = "
                              "\\frac{\\sqrt{3}}{2}.\n\\]")),
    ("24", "The perimeter of the rectangle is $2(l + w) = 2(8 + 4) = 24$.\n\nHence, the perimeter is 24 units."),
    ("5", "By the Pythagorean theorem, $c^2 = 3^2 + 4^2 = 25$, so $c = 5$.\nThe length of the hypotenuse is $5$."),
    ("-2", ("Substituting $y = 3$ into the first equation gives $x + 2(3) = 4$, so $x = -2$.\n\n"
            "The value of $x$ is $-2$.")),
    ("\\frac{1}{6}", ("There are 36 equally likely outcomes, and 6 of them have a sum of 7: (1,6), (2,5), (3,4), "
                      "(4,3), (5,2), (6,1).\nThe probability is $\\frac{6}{36} = \\frac{1}{6}$.")),
    ("2\\sqrt{5}", ("The distance between $(1, 2)$ and $(5, 4)$ is\n$$\\sqrt{(5-1)^2 + (4-2)^2} = \\sqrt{16 + 4} = "
                    "\\sqrt{20} = 2\\sqrt{5}.$$")),
    ("(-\\infty, -2) \\cup (3, \\infty)", ("Factoring, $x^2 - x - 6 = (x - 3)(x + 2) > 0$. The product is positive "
                                           "when both factors have the same sign, that is when $x < -2$ or $x > 3$."
                                           "\n\nIn interval notation, the solution set is $(-\\infty, -2) \\cup "
                                           "(3, \\infty)$.")),
    ("15", ("Let $c$ be the number of cows and $h$ the number of chickens. Then $c + h = 30$ and $4c + 2h = 90$.\n"
            "Subtracting twice the first equation from the second gives $2c = 30$, so $c = 15$.\n"
            "The farmer has 15 cows.")),
    ("60", "Speed is distance over time: $\\frac{180}{3} = 60$.\nSo the train travels at 60 km per hour."),
    ("6", "The sum of the digits of 123 is $1 + 2 + 3 = 6$."),
    ("\\frac{9}{2}", ("The triangle with vertices $(0,0)$, $(3,0)$ and $(0,3)$ has legs of length 3, so its area "
                      "is\n$$\\frac{1}{2} \\cdot 3 \\cdot 3 = \\frac{9}{2}.$$")),
    ("100", "Each of the 10 rows has 10 seats, so the auditorium seats $10 \\cdot 10 = 100$ people."),
    ("\\pi", "The circle has radius $r = 1$, so its area is $\\pi r^2 = \\pi$."),
    ("8", "Let $n$ be the number. Then $3n - 5 = 19$, so $3n = 24$ and $n = 8$.\n\nTherefore the number is 8."),
    ("2", "The slope of the line through $(1, 3)$ and $(3, 7)$ is\n$$m = \\frac{7 - 3}{3 - 1} = \\frac{4}{2} = 2.$$"),
    ("210", ("We choose 4 of the 10 people, and the order does not matter:\n$$\\binom{10}{4} = "
             "\\frac{10 \\cdot 9 \\cdot 8 \\cdot 7}{4 \\cdot 3 \\cdot 2 \\cdot 1} = 210.$$\n"
             "So the committee can be formed in 210 ways.")),
    ("1.5", "Four apples cost \\$6, so one apple costs $6 \\div 4 = 1.5$ dollars."),
    ("-\\frac{1}{2}", ("By Vieta's formulas, the sum of the roots of $2x^2 + x - 3 = 0$ is "
                       "$-\\frac{b}{a} = -\\frac{1}{2}$.")),
    ("9", ("### Step 1: Set up the equation\nLet $x$ be the width. Then the length is $x + 3$ and $x(x + 3) = 108$."
           "\n\n### Step 2: Solve\n$x^2 + 3x - 108 = 0$ factors as $(x + 12)(x - 9) = 0$, so $x = 9$ (a width is "
           "positive).\n\n### Conclusion\nThe width of the rectangle is **9**.")),
    ("1, 3", "Factoring gives $(x - 1)(x - 3) = 0$, so the solutions are $x = 1$ and $x = 3$."),
    ("72", ("<think>\nApril is 48, May is half of that, 24. Total 48 + 24 = 72.\n</think>\n\nNatalia sold 48 clips in "
            "April and 24 clips in May, so she sold 72 clips altogether.")),
    ("3", "Since $2^3 = 8$, we conclude that $\\log_2 8 = 3$."),
    ("0", "Plugging in $x = 2$ gives $2^3 - 3 \\cdot 2^2 + 2 \\cdot 2 = 8 - 12 + 4 = 0$.\nSo $p(2) = 0$."),
    ("35", ("The two trains close the gap at $40 + 30 = 70$ miles per hour, so they meet after "
            "$\\frac{70}{70} = 1$ hour.\nIn that hour the bird flies $35$ miles.")),
    ("\\frac{5}{12}", ("Adding the fractions over the common denominator 12:\n\\[\\frac{1}{4} + \\frac{1}{6} = "
                       "\\frac{3}{12} + \\frac{2}{12} = \\frac{5}{12}\\]")),
]
NOT_CREDITED = [  # (reference, response, finish_reason, verdict): never passed, whatever the extraction
    # cut off at the token limit with the right number as the last one
    ("72", TRUNCATED_PLAIN, "length", "no_answer"),
    ("12", "There are 4 choices for the first seat and 3 for the second, so there are 12", "length", "no_answer"),
    # the finish reason is unknown (a row without one): treated as not finished
    ("12", PROSE[1][1], None, "no_answer"),
    # reasoning never closed, even though the server said it stopped
    ("72", TRUNCATED_THINK, "stop", "no_answer"),
    ("72", "<think>\nApril 48, May 24, so 72 in all.", "stop", "no_answer"),
    # a finished answer whose last expression is wrong
    ("1", "Completing the square, $f(x) = (x - 1)^2 + 2$.\nTherefore, the minimum value is $2$.", "stop",
     "wrong_answer"),
    ("12", "There are 4 choices for the first seat and 4 for the second.\nSo there are 16 ways in total.", "stop",
     "wrong_answer"),
    # Known limit: the last number is read even when the result came before it.
    ("7", "So the remainder is 7 when divided by 9.", "stop", "wrong_answer"),
]


@pytest.mark.parametrize("reference,response", PROSE)
def test_a_finished_prose_answer_is_credited_by_default_and_says_so(reference, response):
    v = verify_math(response, reference, "math_verify", finished=True)
    assert (v.verdict, v.rule) == ("passed", "last_expression"), v


@pytest.mark.parametrize("reference,response", PROSE)
def test_strict_extraction_reads_no_answer_from_prose(reference, response):
    v = verify_math(response, reference, "strict", finished=True)
    assert (v.verdict, v.rule) == ("no_answer", None), v


@pytest.mark.parametrize("reference,response,finish_reason,expected", NOT_CREDITED)
def test_unfinished_or_wrong_prose_answers_are_never_credited(reference, response, finish_reason, expected):
    for extraction in ("math_verify", "strict"):
        v = verify_math(response, reference, extraction, finished=is_finished(finish_reason))
        assert v.verdict == (expected if extraction == "math_verify" else "no_answer"), (extraction, v)
        assert v.correct is False


def test_the_answer_rule_names_what_found_the_answer():
    finished = {"extraction": "math_verify", "finished": True}
    assert verify_math(R1_STYLE, "72", **finished).rule == "boxed"
    assert verify_math(GSM8K_STYLE, "72", **finished).rule == "marker"
    assert verify_math("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}", **finished).rule == "marker"
    assert verify_math("$\\frac{3}{4}$", "0.75", **finished).rule == "bare_line"
    assert verify_math(PROSE[0][1], "1", **finished).rule == "last_expression"
    assert verify_math("\\boxed{71}", "72", **finished).rule == "boxed"  # a wrong answer says how it was read
    # multiple choice: the same rules, and a letter in prose is never guessed
    assert [verify_math(r, "C", **finished).rule for r in ("\\boxed{C}", "The answer is (C).", "(C)")] == [
        "boxed", "marker", "bare_line"]
    assert verify_math("Option C fits the spectrum best.", "C", **finished).verdict == "no_answer"
    # the strict rules read what they always read, whatever the finish
    assert verify_math(R1_STYLE, "72", "strict").rule == "boxed"
    assert ANSWER_RULES == ("boxed", "marker", "bare_line", "last_expression")


def test_no_answer_says_why_the_last_expression_was_not_read():
    assert "finish_reason 'stop'" in verify_math(PROSE[1][1], "12").detail  # finish unknown
    assert "finish_reason" not in verify_math(PROSE[1][1], "12", "strict").detail
    with pytest.raises(ValueError, match="extraction"):
        verify_math("\\boxed{1}", "1", "lenient")
    with pytest.raises(ValueError, match="extraction"):
        MathVerifier(extraction="lenient")


def test_worker_pool_reads_prose_only_from_finished_responses(verifier):
    pairs = [(response, reference) for reference, response in PROSE[:4]]
    assert [v.verdict for v in verifier.verify_many(pairs, [True] * 4)] == ["passed"] * 4
    assert [v.verdict for v in verifier.verify_many(pairs)] == ["no_answer"] * 4  # finish unknown
    with MathVerifier(workers=1, timeout_s=10.0, extraction="strict") as strict:
        assert [v.verdict for v in strict.verify_many(pairs, [True] * 4)] == ["no_answer"] * 4
    with pytest.raises(ValueError, match="finished flags"):
        verifier.verify_many(pairs, [True])


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
    assert out.column("answer_rule").to_pylist() == ["boxed", "marker", None, None, None]


def test_verify_table_fills_the_attempts_tables_own_columns(verifier):
    # The attempts table already has (empty) verdict / correct columns: they are filled, not duplicated.
    attempt = {"question_id": "q0", "domain": "math", "student": "s", "sample_index": 0, "response": "\\boxed{4}"}
    table = pa.Table.from_pylist([attempt], schema=schemas.ATTEMPTS).append_column("reference_answer", pa.array(["4"]))
    out = verify_table(table, verifier)
    assert out.column_names == schemas.ATTEMPTS.names + ["reference_answer"]
    assert (out.column("verdict")[0].as_py(), out.column("correct")[0].as_py()) == ("passed", True)


def test_verify_table_reads_prose_only_where_finish_reason_says_the_answer_finished(verifier):
    prose = PROSE[1][1]  # "... So there are 12 ways in total."
    attempt = {"domain": "math", "student": "s", "sample_index": 0}
    rows = [dict(attempt, question_id="stop", response=prose, finish_reason="stop"),
            dict(attempt, question_id="cut", response=prose, finish_reason="length"),
            dict(attempt, question_id="unknown", response=prose, finish_reason=None),
            dict(attempt, question_id="boxed", response="\\boxed{12}", finish_reason="length")]
    table = pa.Table.from_pylist(rows, schema=schemas.ATTEMPTS).append_column("reference_answer",
                                                                             pa.array(["12"] * 4))
    out = verify_table(table, verifier)
    assert out.column_names == schemas.ATTEMPTS.names + ["reference_answer"]  # answer_rule filled in place
    assert out.column("verdict").to_pylist() == ["passed", "no_answer", "no_answer", "passed"]
    assert out.column("answer_rule").to_pylist() == ["last_expression", None, None, "boxed"]
    # without a finish_reason column no row counts as finished: the strict rules, never a guess
    plain = verify_table(table.drop_columns(["finish_reason"]), verifier)
    assert plain.column("verdict").to_pylist() == ["no_answer", "no_answer", "no_answer", "passed"]


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
    for name in ("verdict", "correct", "verify_detail", "answer_rule"):
        assert out.column(name).to_pylist()[:5] == expected.column(name).to_pylist()
    # the time limit works inside a Ray actor too: the worker is killed, the verdict says so
    assert (out.column("verdict")[5].as_py(), out.column("correct")[5].as_py()) == ("timeout", None)

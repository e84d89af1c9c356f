"""Is a student's answer to a math question equivalent to the reference answer? Time-limited, in worker processes.

`verify_math(response, reference)` grades one response with Hugging Face Math-Verify (`parse` + `verify`): LaTeX
and plain answers, fractions vs decimals, units and currency, percentages, sets, intervals, equations. It runs in
the calling process with no time limit. `MathVerifier` runs it in a `pebble` process pool, one timeout per pair: a
pair that runs too long comes back as `timeout` and its worker is killed and replaced (workers start from a
forkserver, so a script using it needs the usual `if __name__ == "__main__":` guard). `verify_table` grades an
Arrow table (`response`, `reference_answer`, and `finish_reason` if present -> `verdict`, `correct`,
`verify_detail`, `answer_rule`; without `finish_reason` no row counts as finished); `MathVerifyActor` is the
Ray Data wrapper (`ds.map_batches(MathVerifyActor, fn_constructor_kwargs={...}, batch_format="pyarrow", ...)`).

Which answer is read from a response (the rule that found it is `Verdict.rule`, the attempts' `answer_rule`):
- the text after the last `</think>`, or gpt-oss's last harmony `final` channel (`common/reasoning.py`); a `<think>`
  that is never closed, or harmony with no final channel, means the reasoning was cut off: no answer;
- `boxed`: the last `\\boxed{}` (Math-Verify merges boxes a few characters apart joined by "," / "and" / "or"
  into one set of answers); else `marker`: an answer marker ("final answer is", "answer:", "the answer is",
  "#### 72");
- else `bare_line`: only if the whole response is one short line ("72", "$\\frac{3}{4}$"), that line;
- else `last_expression`, with `extraction="math_verify"` (the default) and only for a response that finished
  (`finished=True`: its finish reason is in `FINISHED`, "stop"): Math-Verify's own extraction, `parse` with its
  default LaTeX and expression configs, which takes the last LaTeX formula or expression that parses ("so the
  minimum value is $1$.", "there are 12 ways in total."; a full stop just inside a formula's closing delimiter,
  "= \\frac{9}{2}.$$", is dropped first, as Math-Verify misreads it). This is Math-Verify's default, and what the
  evaluations built on it do (lighteval's math metrics, open-r1's evaluation tasks). `extraction="strict"` stops
  before it (adaptcot's only rule before the setting existed; open-r1's GRPO accuracy reward also needs a box or an
  answer marker).
A bare last number of a response that did not finish (cut off at the token limit, or whose finish reason is
unknown) is never taken: it would credit reasoning that stopped mid-way at the right value. The fallback also reads
the last number of a finished answer that ends in prose after its result ("the remainder is 7 when divided by
9" reads 9); `strict` is for when that matters more than answers stated only in prose.

Multiple choice: a reference answer that is one uppercase letter A-J (GPQA, imported with `distractors`) is an
option letter. The response's choice is the letter of its last `\\boxed{}` ("C", "(C)", "\\text{C}", "C) 42 eV"; a
box holding anything else is no answer), else of its last answer marker ("the answer is (C)", "Answer: C",
"**Answer:** C", read by Math-Verify's string extraction), else a response that is nothing but the letter (rules
`boxed`, `marker`, `bare_line`; a letter in prose is never guessed, whatever the extraction); verdicts passed,
wrong_answer or no_answer.

Not covered: no LLM judge yet (free-text and proof answers are compared as strings, if at all); a choice given
only as the option's text, not its letter, is no answer; degrees are not converted to radians; a response cut off
without think tags but with an answer marker in its reasoning is graded on that marker (filter on
`finish_reason == "length"` upstream if that matters). Math-Verify's own `signal.alarm` timeouts are never used
(they break in Ray workers and threads: Math-Verify issues #50/#55); time limits come from killing processes.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow as pa

from adaptcot.common.reasoning import split_reply
from adaptcot.common.schemas import require_columns
from adaptcot.pool.presets import CHOICE_LETTERS, last_boxed

VERDICTS = ("passed", "wrong_answer", "no_answer", "timeout", "error")
ANSWER_RULES = ("boxed", "marker", "bare_line", "last_expression")  # which rule found the answer (module docstring)
Extraction = Literal["math_verify", "strict"]
EXTRACTIONS: tuple[str, ...] = get_args(Extraction)
FINISHED = ("stop",)  # the finish reason of a response that ended by itself (OpenAI-compatible servers, vLLM)
INPUT_COLUMNS = ("response", "reference_answer")
OUTPUT_FIELDS = (pa.field("verdict", pa.string()), pa.field("correct", pa.bool_()),
                 pa.field("verify_detail", pa.string()), pa.field("answer_rule", pa.string()))
_BARE_ANSWER_MAX_CHARS = 40  # a response this short, on one line, and not prose, is taken to be the answer itself
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")  # \text{ cm}, \frac, ...: not prose
_PROSE = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")  # two words in a row: a sentence, not a formula
_GSM8K_MARK = re.compile(r"^[ \t]*####[ \t]*", re.MULTILINE)
_MATH_DELIMITERS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")
# Math-Verify's string extraction needs a space before the letter, so "(C)" and "C)" are strings of their own.
_MARKER_STRINGS = (*CHOICE_LETTERS, *(f"({c})" for c in CHOICE_LETTERS), *(f"{c})" for c in CHOICE_LETTERS))
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_BOXED_CHOICE = re.compile(r"\(?([A-J])(?:\)|[.:\s]|$)", re.IGNORECASE)  # "C", "(C)", "C) 42 eV", "c."
_BARE_CHOICE = re.compile(r"\(?([A-J])\)?\.?")
# A sentence's full stop just inside a closing delimiter ("= \frac{9}{2}.$$"): Math-Verify misreads such a formula
# (as 3 here), so the last-expression fallback drops it first.
_STOP_IN_FORMULA = re.compile(r"\.(?=\s*(?:\$|\\\]|\\\)))")


@dataclass(frozen=True)
class Verdict:
    """`correct` is None when nothing was decided about the model (timeout, error): never count it as wrong."""

    verdict: str
    correct: bool | None
    detail: str = ""
    extracted: str | None = None  # the answer as read from the response, when one was found
    rule: str | None = None  # which of ANSWER_RULES found it

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; expected one of {VERDICTS}")
        if self.rule is not None and self.rule not in ANSWER_RULES:
            raise ValueError(f"unknown answer rule {self.rule!r}; expected one of {ANSWER_RULES}")


def is_finished(finish_reason: str | None) -> bool:
    """Did the response end by itself? Cut off (`length`), failed or unknown (None) is not finished."""
    return finish_reason in FINISHED


# --- One pair, in this process -------------------------------------------------------------------------------------
def verify_math(response: str | None, reference: str | None, extraction: Extraction = "math_verify",
                finished: bool = False) -> Verdict:
    """Grade one response against one reference answer (no time limit: use `MathVerifier` for untrusted input).

    finished: the response ended by itself (`is_finished(finish_reason)`); only then may `extraction="math_verify"`
    fall back to the last expression (module docstring)."""
    from math_verify import verify

    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; expected one of {EXTRACTIONS}")
    if is_choice(reference):
        return _verify_choice(response, reference.strip())
    gold = _parse_bare(reference) if reference else []
    if not gold:
        return Verdict("error", None, f"reference answer could not be parsed: {reference!r}")
    answer, why_none = _answer_text(response)
    if answer is None:
        return Verdict("no_answer", False, why_none)
    fallback = extraction == "math_verify" and finished
    pred, rule = _parse_answer(answer, fallback)
    if not pred:
        return Verdict("no_answer", False, _why_no_answer(extraction, fallback))
    extracted = _as_text(pred)
    # Sets and intervals may be answered as relations ("x \le 2" for (-\infty, 2]); Math-Verify only allows this
    # one way round by default.
    if verify(gold, pred, allow_set_relation_comp=True, timeout_seconds=None):
        return Verdict("passed", True, "", extracted, rule)
    return Verdict("wrong_answer", False, f"expected {_as_text(gold)!r}, got {extracted!r}", extracted, rule)


def _why_no_answer(extraction: Extraction, fallback: bool) -> str:
    if fallback:
        return "no boxed answer, answer marker or expression in the response"
    if extraction == "math_verify":  # what a user reading a no_answer on a prose answer needs to know
        return ("no boxed answer or answer marker in the response (the last expression is read only from a "
                "response that finished: finish_reason 'stop')")
    return "no boxed answer or answer marker in the response"


def is_choice(reference: str | None) -> bool:
    """Is this reference answer a multiple-choice letter?"""
    return reference is not None and len(reference.strip()) == 1 and reference.strip() in CHOICE_LETTERS


def _verify_choice(response: str | None, reference: str) -> Verdict:
    answer, why_none = _answer_text(response)
    letter, why_none, rule = _choose(answer) if answer is not None else (None, why_none, None)
    if letter is None:
        return Verdict("no_answer", False, why_none)
    if letter == reference:
        return Verdict("passed", True, "", letter, rule)
    return Verdict("wrong_answer", False, f"expected {reference!r}, got {letter!r}", letter, rule)


def read_choice(answer: str) -> tuple[str | None, str]:
    """The option letter an answer (the text after the reasoning) chooses, or (None, why there is none)."""
    letter, why_none, _ = _choose(answer)
    return letter, why_none


def _choose(answer: str) -> tuple[str | None, str, str | None]:
    """(letter, why there is none, the rule that found it)."""
    from math_verify import StringExtractionConfig, parse

    boxed = last_boxed(answer)
    if boxed is not None:
        match = _BOXED_CHOICE.match(_TEXT_WRAPPER.sub(r"\1", boxed).strip())
        if match:
            return match.group(1).upper(), "", "boxed"
        return None, f"the boxed answer {boxed!r} is not an option letter", None
    config = StringExtractionConfig(strings=_MARKER_STRINGS, try_extract_without_anchor=False, lowercase=False)
    found = parse(answer, [config], extraction_mode="first_match", parsing_timeout=None)
    if found:
        return found[0].strip("()"), "", "marker"
    bare = _BARE_CHOICE.fullmatch(answer.strip())  # the whole answer is the letter: "C", "(C)", "C."
    return (bare.group(1), "", "bare_line") if bare else (None, "no boxed letter or answer marker in the response",
                                                           None)


def _answer_text(response: str | None) -> tuple[str | None, str]:
    """The part of the response that holds the final answer, or (None, why there is none)."""
    if response is None or not response.strip():
        return None, "empty response"
    reply = split_reply(response)
    harmony = reply.format == "harmony"
    if reply.cut_off:
        return None, "reasoning cut off: " + ("no final channel" if harmony else "<think> never closed")
    # An escaped dollar is currency ("\$5"); left in, it hides the number from Math-Verify's patterns.
    response = reply.answer.replace("\\$", "").strip()
    if not response:
        return None, "nothing in the final channel" if harmony else "nothing after </think>"
    return response, ""


def _parse_answer(answer: str, fallback: bool) -> tuple[list, str | None]:
    """(Math-Verify's parse of a response, the rule that found it): boxed first, then answer markers, then a bare
    one-line answer, then, with `fallback`, the last expression; ([], None) when none does."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    # GSM8K's "#### 72" is an answer marker Math-Verify does not know; restate it as one it does.
    answer = _GSM8K_MARK.sub("Final answer: ", answer)
    marked = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
              ExprExtractionConfig(try_extract_without_anchor=False)]
    # first_match: the last boxed / marked answer is the answer, even when it does not parse; an earlier one that
    # does parse must not stand in for it.
    pred = parse(answer, marked, extraction_mode="first_match", parsing_timeout=None)
    if pred:  # a box is matched before any marker (priority 0), so a response with one was read from it
        return pred, "boxed" if "\\boxed{" in answer else "marker"
    if _is_bare_answer(answer):
        pred = _parse_bare(answer)
        if pred:
            return pred, "bare_line"
    if fallback:  # Math-Verify's defaults: the last LaTeX formula or expression that parses
        pred = parse(_STOP_IN_FORMULA.sub("", answer), [LatexExtractionConfig(), ExprExtractionConfig()],
                     parsing_timeout=None)
        if pred:
            return pred, "last_expression"
    return [], None


def _is_bare_answer(text: str) -> bool:
    """One short line that reads as a formula, not a sentence: "72", "x = 1 or x = 2", "5 \\text{ cm}"."""
    # Wrapped in $...$, prose parses as a product of one-letter symbols; it is no answer, so it is never wrapped.
    formula = _LATEX_COMMAND.sub(" ", text)
    return "\n" not in text and len(text) <= _BARE_ANSWER_MAX_CHARS and not _PROSE.search(formula)


def _parse_bare(text: str) -> list:
    """Parse an answer written without context: a reference ("3", "\\frac{3}{4}", "(1, 2)") or a one-line reply."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = text.replace("\\$", "").strip()
    if not text:
        return []
    # Math-Verify reads LaTeX only inside math delimiters, so bare LaTeX is wrapped; its docs do the same for gold.
    latex = text if any(d in text for d in _MATH_DELIMITERS) else f"${text}$"
    parsed = parse(latex, [LatexExtractionConfig()], extraction_mode="first_match", parsing_timeout=None)
    # Plain expressions (and "$5" read as currency, not as an unclosed formula) are the fallback.
    return parsed or parse(text, [ExprExtractionConfig()], parsing_timeout=None)


def _as_text(parsed: list) -> str:
    # parse() appends the matched text after the parsed value; str() of a huge sympy value can take very long.
    strings = [p for p in parsed if isinstance(p, str)]
    return strings[-1] if strings else type(parsed[0]).__name__


# --- Many pairs, in worker processes with a time limit -------------------------------------------------------------
class MathVerifier:
    """A pool of `workers` processes grading pairs; each pair gets `timeout_s` seconds or its worker is killed.

    extraction: which answers are read (module docstring), for every pair this verifier grades."""

    def __init__(self, workers: int = 1, timeout_s: float = 5.0, extraction: Extraction = "math_verify"):
        import pebble

        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"MathVerifier needs workers >= 1 and timeout_s > 0, got {workers}, {timeout_s}")
        if extraction not in EXTRACTIONS:
            raise ValueError(f"unknown extraction {extraction!r}; expected one of {EXTRACTIONS}")
        self.timeout_s, self.extraction = timeout_s, extraction
        self._pool = pebble.ProcessPool(max_workers=workers, initializer=_init_worker, context=_mp_context())

    def verify_many(self, pairs: list[tuple[str | None, str | None]],
                    finished: Sequence[bool] | None = None) -> list[Verdict]:
        """One verdict per (response, reference) pair, in order: a bad or hanging pair gets a verdict, never raises.

        finished: per pair, did the response end by itself (`is_finished`); None: none did (unknown)."""
        finished = [False] * len(pairs) if finished is None else list(finished)
        if len(finished) != len(pairs):
            raise ValueError(f"verify_many: {len(pairs)} pairs but {len(finished)} finished flags")
        futures = [self._pool.schedule(verify_math, args=(*pair, self.extraction, done), timeout=self.timeout_s)
                   for pair, done in zip(pairs, finished)]
        return [self._collect(f) for f in futures]

    def _collect(self, future: concurrent.futures.Future) -> Verdict:
        from pebble import ProcessExpired

        try:
            return future.result()
        except concurrent.futures.TimeoutError:  # pebble has killed the worker and started another
            return Verdict("timeout", None, f"verification took longer than {self.timeout_s:g} s")
        except ProcessExpired as e:
            return Verdict("error", None, f"verifier worker died (exit code {e.exitcode})")
        except concurrent.futures.process.BrokenProcessPool as e:  # no pair can be graded: stop the job, loudly
            raise RuntimeError("math verifier workers could not start; a script that uses MathVerifier needs an "
                               "`if __name__ == '__main__':` guard, as with any multiprocessing pool") from e
        except Exception as e:  # a bug or a malformed pair: the verifier's fault, not the model's
            return Verdict("error", None, f"{type(e).__name__}: {e}")

    def close(self) -> None:
        self._pool.stop()  # verify_many waits for its results, so nothing is left to finish
        self._pool.join()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mp_context():
    # Workers fork from a forkserver that has imported this module (so sympy and Math-Verify) and the caller's main
    # script once, so a worker replacing a killed one starts in a fraction of a second; under "spawn" each worker
    # imports them anew (about 1 s more per worker inside a Ray actor, whose main script imports Ray). Plain "fork"
    # is faster still but copies the caller, which in a Ray actor runs gRPC and pebble threads that may hold locks.
    # The preload list is process-wide: it takes effect when the first forkserver of this process starts.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _init_worker() -> None:
    # Math-Verify warns that its own timeout is off; here the pool is the timeout.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verify_math("\\boxed{1}", "1")  # compile Math-Verify's regexes before the first timed pair
    verify_math("So it is 1.", "1", "math_verify", finished=True)  # and those of its default extraction


# --- Arrow tables and Ray Data ------------------------------------------------------------------------------------
def verify_table(table: pa.Table, verifier: MathVerifier) -> pa.Table:
    """`table` with `verdict`, `correct`, `verify_detail`, `answer_rule` set from `response` vs `reference_answer`,
    row for row. A row is finished if its `finish_reason` says so; without that column, none is (module docstring)."""
    require_columns(table, INPUT_COLUMNS, "verify_math")
    pairs = list(zip(table.column("response").to_pylist(), table.column("reference_answer").to_pylist()))
    reasons = (table.column("finish_reason").to_pylist() if "finish_reason" in table.column_names
               else [None] * table.num_rows)
    verdicts = verifier.verify_many(pairs, [is_finished(r) for r in reasons])
    if len(verdicts) != table.num_rows:  # every row comes out exactly once
        raise RuntimeError(f"verify_math: {table.num_rows} rows in, {len(verdicts)} verdicts out")
    values = ([v.verdict for v in verdicts], [v.correct for v in verdicts], [v.detail for v in verdicts],
              [v.rule for v in verdicts])
    for field, column in zip(OUTPUT_FIELDS, values):
        # The attempts table already has (empty) verdict / correct columns: replace them, never add a duplicate.
        index = table.schema.get_field_index(field.name)
        array = pa.array(column, field.type)
        table = table.set_column(index, field, array) if index >= 0 else table.append_column(field, array)
    return table


class MathVerifyActor:
    """Ray Data stage: one `MathVerifier` per actor, `verify_table` per batch (`batch_format="pyarrow"`)."""

    def __init__(self, workers: int = 1, timeout_s: float = 5.0, extraction: Extraction = "math_verify"):
        self._verifier = MathVerifier(workers=workers, timeout_s=timeout_s, extraction=extraction)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return verify_table(batch, self._verifier)

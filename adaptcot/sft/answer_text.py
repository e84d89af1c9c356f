"""CasCoD's text surgery on a teacher's answer (pure, no config): where the final answer sits in an answer text, the
answer statements at the end of a reasoning, and whether a rationale still states the reference answer.
`sft/records.py` builds CasCoD pairs from these; docs/sft_data.md has examples.
"""

from __future__ import annotations

import re

from adaptcot.pool.presets import last_boxed
from adaptcot.verify.code_answers import extract_code
from adaptcot.verify.math_answers import is_choice

_SENTENCE_END = re.compile(r"\n|[.!?](?=\s)")  # where the sentence holding the final \boxed{} may start after
_SENTENCE_STOP = re.compile(r"\n|[.!?](?=\s|$)")  # where the sentence holding the final answer ends
_ANSWER_MARKER = re.compile(r"(?i)\bfinal answer\b|\bthe answer is\b|\banswer\s*:|####")
_ANSWER_WORD = re.compile(r"(?i)\b(?:answers?|result|solution)\b|####")
_HEADINGS = ("final answer", "answer", "the final answer")
_OPEN_DISPLAY = re.compile(r"(?:\\\[|\$\$|\\\()\s*$")  # "\[" or "$$" left dangling once the boxed line is cut
_ALNUM = re.compile(r"[0-9A-Za-z]")
_MATH_NOISE = re.compile(r"\$|\\left|\\right|\\[,;!]")
TAIL_LINES = 3  # the last non-empty lines of a rationale searched for the reference answer


def final_answer_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the sentence or line of a math answer text that holds its last \\boxed{} (else its last answer
    marker: "The answer is 42."), or None if it has neither."""
    box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if box >= 0:
        anchor, after = box, _closing_brace(text, box)
    else:
        markers = list(_ANSWER_MARKER.finditer(text))
        if not markers:
            return None
        anchor, after = markers[-1].start(), markers[-1].end()
    start = max((m.end() for m in _SENTENCE_END.finditer(text, 0, anchor)), default=0)
    stop = _SENTENCE_STOP.search(text, after)
    end = len(text) if stop is None else stop.start() if stop.group() == "\n" else stop.end()
    return start, end


def _closing_brace(text: str, box: int) -> int:
    """The index just after the box's balanced closing brace (the end of the text if it never closes)."""
    brace, depth = text.find("{", box), 0
    if brace < 0:
        return len(text)
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def strip_stated_answer(reasoning: str, values: list[str]) -> str:
    """The reasoning without the answer statements at its end ("So the answer is 12.", "**Final Answer**",
    "\\boxed{12}"), cut sentence by sentence from the end; nothing before the last kept sentence changes.

    A statement is a sentence or line holding a box, or an answer word with one of `values` (the final answer;
    with no values known, an answer marker such as "the answer is"), or a bare "Final Answer" heading."""
    text = reasoning.rstrip()
    while text:
        start = _last_sentence_start(text)
        sentence = text[start:]
        if not (_is_answer_statement(sentence, values) or _is_heading(sentence)):
            break
        text = _OPEN_DISPLAY.sub("", text[:start].rstrip()).rstrip()
    return text


def _last_sentence_start(text: str) -> int:
    """Where the last sentence or line starts; one with no letter or digit ("\\]", "$$") joins the one before."""
    starts = [0] + [m.end() for m in _SENTENCE_END.finditer(text)]
    return next((s for s in reversed(starts) if _ALNUM.search(text, s)), 0)


def _is_answer_statement(sentence: str, values: list[str]) -> bool:
    if "\\boxed" in sentence or "\\fbox" in sentence:
        return True
    if not values:
        return bool(_ANSWER_MARKER.search(sentence))
    return bool(_ANSWER_WORD.search(sentence)) and any(mentions(sentence, v) for v in values)


def _is_heading(sentence: str) -> bool:
    return " ".join(re.sub(r"[^a-z]+", " ", sentence.lower()).split()) in _HEADINGS


def answer_values(final: str, reference: str | None) -> list[str]:
    """The final answer's forms a statement of it may show: the final's box content and the reference answer."""
    values = [last_boxed(final), reference]
    return [v for v in dict.fromkeys(values) if v and v.strip() and not is_choice(v)]


def mentions(text: str, value: str) -> bool:
    """Does `text` hold `value` as a whole (12 in "is 12." but not in "120" or "3.12"), compared with spaces, $ and
    \\left/\\right ignored and \\dfrac read as \\frac?"""
    value = _MATH_NOISE.sub("", value.replace("\\dfrac", "\\frac")).strip().rstrip(".")
    value = "".join(value.split())
    if not value or len(value) > 200:
        return False
    body = r"\s*".join(re.escape(c) for c in value)
    text = _MATH_NOISE.sub("", text.replace("\\dfrac", "\\frac"))
    return re.search(r"(?<![0-9A-Za-z.])" + body + r"(?![0-9A-Za-z]|\.\d)", text) is not None


def states_answer(rationale: str, reference: str) -> bool:
    """Does the rationale's last TAIL_LINES non-empty lines hold the reference answer (`mentions`)?"""
    lines = [line for line in rationale.splitlines() if line.strip()]
    return mentions("\n".join(lines[-TAIL_LINES:]), reference)


def split_answer_text(domain: str, text: str) -> tuple[str, str] | None:
    """A reply without separate reasoning -> (what precedes the final answer, the final answer), or None."""
    if domain == "code":
        program = extract_code(text)
        if not program:
            return None
        start = text.rfind("```", 0, text.rfind(program))  # the opening fence of the last python block
        before, final = text[:start].rstrip(), python_block(program)
    else:
        box = text.rfind("\\boxed")
        if box < 0:
            return None
        start = max((m.end() for m in _SENTENCE_END.finditer(text, 0, box)), default=0)
        before, final = text[:start].rstrip(), text[start:].strip()
    return (before, final) if before else None


def python_block(program: str) -> str:
    body = program.strip("\n")
    return f"```python\n{body}\n```"

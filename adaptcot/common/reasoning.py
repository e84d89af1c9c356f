"""Where a model's reasoning ends and its answer begins, read from its text: `<think>` tags or gpt-oss's harmony.

`split_reply(text) -> Reply(reasoning, answer, cut_off, format)`, used wherever a reply is read (teacher CoTs, math
and code verification, the judge of the CoT filter, evaluation's answer keys, PRM steps):

- `think` (DeepSeek-R1, Qwen3, QwQ, and adaptcot's own SFT records): the answer is the text after the LAST
  `</think>`, the reasoning what comes before it (its `<think>` removed). A `</think>` without a `<think>` is normal
  (chat templates that put `<think>` in the prompt). A `<think>` never closed means the reply was cut off while
  reasoning: no answer.
- `harmony` (gpt-oss), recognised by a `<|channel|>` marker:
  `<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...<|return|>`.
  The `analysis` and `commentary` messages (and any other non-final one) are the reasoning, joined by a blank line
  in order; the last `final` message is the answer. No `final` message means cut off. Tolerated: no leading
  `<|start|>assistant` (vLLM's output starts after the prompt's), a message ended by `<|end|>`, `<|return|>`,
  `<|call|>` or by nothing (cut off mid-message), a recipient (` to=functions.x`) or `<|constrain|>json` in a header.
- `plain`: neither; the whole text is the answer.

Not covered: harmony whose markers were dropped at detokenization ("analysisWe need...assistantfinal42") is read as
plain text; `grade/answering.py` keeps the markers for gpt-oss models (`StudentConfig.reasoning_format`).

Why not the `openai-harmony` package: its parser (0.0.8: `parse_messages_from_completion_tokens`,
`StreamableParser`) reads token ids, not text, through an encoding that downloads its o200k vocabulary at run time
unless TIKTOKEN_ENCODINGS_BASE points at a local copy. Stored replies are text, and tests run offline; the
format's text rules are few enough to read here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HARMONY_CHANNEL = "<|channel|>"
_HARMONY_MESSAGE = "<|message|>"
# A message starts at <|start|> and ends at <|end|>, <|return|> (the last one) or <|call|> (a tool call).
_HARMONY_BOUNDARY = re.compile(r"<\|(?:start|end|return|call)\|>")
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")

Format = Literal["think", "harmony", "plain"]


@dataclass(frozen=True)
class Reply:
    reasoning: str | None  # None: the reply has no reasoning part
    answer: str  # "" when cut off
    cut_off: bool  # the reasoning never ended: no answer was given
    format: Format


def split_reply(text: str | None) -> Reply:
    """The reasoning and the answer of a reply (see module docstring)."""
    text = text or ""
    if HARMONY_CHANNEL in text:
        return _split_harmony(text)
    if THINK_CLOSE in text:
        before, after = text.rsplit(THINK_CLOSE, 1)
        return Reply(before.replace(THINK_OPEN, "", 1).strip(), after, False, "think")
    if THINK_OPEN in text:
        return Reply(text.split(THINK_OPEN, 1)[1].strip(), "", True, "think")
    return Reply(None, text, False, "plain")


def harmony_messages(text: str) -> list[tuple[str | None, str]]:
    """(channel, content) of each harmony message, in order; a message cut off before its `<|message|>` is left out."""
    messages = []
    for segment in _HARMONY_BOUNDARY.split(text):
        header, found, content = segment.partition(_HARMONY_MESSAGE)
        if found:
            channel = _CHANNEL_NAME.search(header)
            messages.append((channel.group(1) if channel else None, content))
    return messages


def _split_harmony(text: str) -> Reply:
    messages = harmony_messages(text)
    finals = [content for channel, content in messages if channel == "final"]
    thoughts = [content.strip() for channel, content in messages if channel != "final" and content.strip()]
    reasoning = "\n\n".join(thoughts) if thoughts else None
    if not finals:
        return Reply(reasoning, "", True, "harmony")
    return Reply(reasoning, finals[-1].strip(), False, "harmony")

"""Question text normalisation and the stable question id.

Two forms of a question's text:
- the stored text (`normalise_text`): Unicode NFC, `\\n` line ends, no trailing blanks; formatting is kept,
  since prompts and code problems depend on it;
- the identity key (`identity_key`): NFKC, case-folded, every whitespace run collapsed to one space. Two questions
  that differ only in case, spacing or Unicode compatibility forms are the same question; the key decides
  de-duplication at import and decontamination against benchmarks at sampling.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_TRAILING_BLANKS = re.compile(r"[ \t\f\v]+\n")


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x00", "")
    return _TRAILING_BLANKS.sub("\n", text).strip()


def identity_key(text: str) -> str:
    # str.split() splits on exactly the characters `\s` matches (str.isspace), several times faster than re.sub.
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def question_id(text: str, domain: str) -> str:
    """128-bit hex id of (domain, identity key): stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{domain}\n{identity_key(text)}".encode("utf-8"))
    return digest.hexdigest()[:32]

"""Question text normalisation and the stable question id.

Two forms of a question's text:
- the stored text (`normalise_text`): Unicode NFC, `\\n` line ends, no trailing blanks; formatting is kept,
  since prompts and code problems depend on it;
- the identity key (`identity_key`): NFKC, case-folded, every whitespace run collapsed to one space. Two questions
  that differ only in case, spacing or Unicode compatibility forms are the same question; the key decides
  de-duplication at import and decontamination against benchmarks at sampling.

Near matches are found on the identity key's words (its whitespace-separated tokens, punctuation kept, as open-r1's
decontamination splits them): `word_ngram_hashes` hashes every run of n consecutive words to a 64-bit int, stable
across processes and machines (each word by blake2b, an n-gram by a polynomial over its words' hashes mod 2^64,
then a splitmix64 finaliser). Benchmark n-gram overlap (`sample/exclusions.py`) and MinHash shingles
(`pool/importer.py`) both use it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# --- word n-grams ---------------------------------------------------------------------------------------------------
_NGRAM_BASE = np.uint64(0x100000001B3)  # odd: the rolling polynomial is a bijection in each word's hash


@dataclass(frozen=True)
class WordNgrams:
    """Hashed word n-grams of many texts, in text order then word order: n-gram i is `hashes[i]`, of text
    `owner[i]`, starting at that text's word `start[i]`."""
    hashes: np.ndarray  # uint64
    owner: np.ndarray   # int64
    start: np.ndarray   # int64


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _word_hashes(words: pa.Array) -> np.ndarray:
    # Each distinct word is hashed once (a batch's vocabulary is much smaller than its word count).
    encoded = pc.dictionary_encode(words)
    vocabulary = encoded.dictionary.to_pylist()
    table = np.fromiter((int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
                         for w in vocabulary), np.uint64, len(vocabulary))
    return table[encoded.indices.to_numpy(zero_copy_only=False)]


def _polynomial(columns: list[np.ndarray]) -> np.ndarray:
    acc = np.zeros(len(columns[0]), np.uint64)
    for column in columns:
        acc = acc * _NGRAM_BASE + column  # uint64 arrays wrap around: arithmetic mod 2^64
    return acc


def word_ngram_hashes(texts: Sequence[str], n: int, shorter: Literal["skip", "whole"] = "skip") -> WordNgrams:
    """The word n-grams of each text's identity key, hashed (see the module docstring). A text of fewer than n
    words has none (`shorter="skip"`: decontamination matches it by identity only) or one, of all its words
    (`"whole"`: a MinHash shingle set is never empty)."""
    if n < 1:
        raise ValueError(f"word n-grams need n >= 1, not {n}")
    split = pc.split_pattern(pa.array([identity_key(str(t)) for t in texts], pa.large_string()), " ")
    words = pc.list_flatten(split)
    word_owner = np.repeat(np.arange(len(texts), dtype=np.int64),
                           pc.list_value_length(split).to_numpy(zero_copy_only=False))
    nonempty = pc.not_equal(words, "").to_numpy(zero_copy_only=False)  # an empty text splits into one ""
    words, word_owner = words.filter(pa.array(nonempty)), word_owner[nonempty]
    lengths = np.bincount(word_owner, minlength=len(texts))
    first_word = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    hashed = _word_hashes(words) if len(words) else np.zeros(0, np.uint64)
    starts = np.arange(max(len(hashed) - n + 1, 0), dtype=np.int64)
    starts = starts[word_owner[starts] == word_owner[starts + n - 1]]  # windows inside one text
    hashes = _polynomial([hashed[starts + j] for j in range(n)])
    owner, start = word_owner[starts], starts - first_word[word_owner[starts]]
    if shorter == "whole":
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        whole = [_polynomial(np.split(hashed[first_word[i]:first_word[i] + lengths[i]], lengths[i]))[0]
                 for i in short]
        order = np.argsort(np.concatenate([owner, short]), kind="stable")
        hashes = np.concatenate([hashes, np.array(whole, np.uint64)])[order]
        owner = np.concatenate([owner, short])[order]
        start = np.concatenate([start, np.zeros(len(short), np.int64)])[order]
    return WordNgrams(_mix64(hashes), owner, start)

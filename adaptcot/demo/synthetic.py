"""Seeded generators of raw question sources, shaped like real ones, for runs with no dataset at hand.

- math: multi-step arithmetic word problems in GSM8K's shape (`question`, `answer` ending in `#### N`); the number
  of steps sets the difficulty.
- code: small function tasks in APPS/TACO's shape (`question`, `input_output` JSON with `fn_name`).

Used by the local default job and by benchmarks. Not a benchmark of reasoning: the questions are templated.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

_NAMES = ["Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
_THINGS = ["apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards"]


def math_problem(rng: random.Random, steps: int) -> dict:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    value = rng.randint(2, 20)
    sentences = [f"{name} has {value} {thing}."]
    work = []
    for _ in range(steps):
        op = rng.choice(["buy", "give", "double"] if value < 200 else ["give"])
        if op == "buy":
            k = rng.randint(1, 15)
            sentences.append(f"Then {name} gets {k} more.")
            work.append(f"{value} + {k} = {value + k}")
            value += k
        elif op == "give" and value > 1:
            k = rng.randint(1, value - 1)
            sentences.append(f"Then {name} gives away {k}.")
            work.append(f"{value} - {k} = {value - k}")
            value -= k
        else:
            sentences.append(f"Then the number of {thing} doubles.")
            work.append(f"{value} * 2 = {value * 2}")
            value *= 2
    question = " ".join(sentences) + f" How many {thing} does {name} have now?"
    return {"question": question, "answer": "\n".join(work) + f"\n#### {value}", "steps": steps}


_CODE_TASKS = [
    ("add_k", "Write a function `add_k(xs, k)` that returns the list `xs` with `k` added to every element.",
     lambda rng: [[rng.randint(-9, 9) for _ in range(rng.randint(0, 5))], rng.randint(-5, 5)],
     lambda xs, k: [x + k for x in xs]),
    ("count_even", "Write a function `count_even(xs)` that returns how many elements of `xs` are even.",
     lambda rng: [[rng.randint(-20, 20) for _ in range(rng.randint(0, 8))]],
     lambda xs: sum(1 for x in xs if x % 2 == 0)),
    ("reverse_words", "Write a function `reverse_words(s)` that returns `s` with the order of its words reversed.",
     lambda rng: [" ".join(rng.choice(_NAMES).lower() for _ in range(rng.randint(1, 5)))],
     lambda s: " ".join(reversed(s.split()))),
    ("max_gap", "Write a function `max_gap(xs)` that returns the largest difference between consecutive "
     "elements of `xs` (0 if it has fewer than two).",
     lambda rng: [[rng.randint(0, 50) for _ in range(rng.randint(0, 6))]],
     lambda xs: max((b - a for a, b in zip(xs, xs[1:])), default=0)),
]


def code_problem(rng: random.Random, variant: int) -> dict:
    fn_name, text, make_args, solve = _CODE_TASKS[variant % len(_CODE_TASKS)]
    cases = [make_args(rng) for _ in range(4)]
    io = {"fn_name": fn_name, "inputs": cases, "outputs": [[solve(*args)] for args in cases]}
    # The variant number keeps questions distinct, as real pools have many problems per task family.
    question = f"{text}\n\n(Problem {variant}.)"
    return {"question": question, "input_output": json.dumps(io), "starter_code": f"def {fn_name}(...):"}


def math_rows(n: int, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for _ in range(n):
        yield math_problem(rng, steps=rng.randint(1, 6))


def code_rows(n: int, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for i in range(n):
        yield code_problem(rng, i)


def write_jsonl(rows: Iterator[dict], path: str | Path) -> str:
    """Rows as JSON lines at `path` (a local path or URI), published whole."""
    from adaptcot.common import storage

    storage.write_text(str(path), "".join(json.dumps(row) + "\n" for row in rows))
    return str(path)

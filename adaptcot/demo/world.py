"""A laptop-scale task world with a real difficulty ladder: multi-step arithmetic word problems, from a seed.

A problem starts a count and changes it `steps` times (gets k more, gives away k, doubles); the answer is the final
count. Every count stays at most `MAX_COUNT`, so each step is easy arithmetic and difficulty comes from the number of
steps. A solution restates each sentence and writes its equation, one step per line, then boxes the answer; each line
is right or wrong on its own, so a response can be checked step by step (`label_steps`), which trains the local PRM.

Splits (`SPLITS`), each a seeded draw of distinct problems:
- `pool`: the raw question pool, 1-6 steps, most of them short (real pools hold more easy questions than hard ones);
- `eval`: held-out questions on the same ladder, every length equally often (like a benchmark);
- `ood`: 1-3 steps about people and things that appear nowhere in training (`OOD_NAMES`, `OOD_THINGS`);
- `calibration`: like `eval`, a split of its own that P_eval is measured on (so no reported benchmark tunes it);
- `train`: what `world_models` trains the student (short problems only) and the teacher (all lengths) on.

`split_rows` gives rows in GSM8K's shape (`question`, `answer` ending "#### N", `steps`). The questions are templated:
this is a world in which the method's effects can be seen, not a benchmark of reasoning.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from pydantic import Field

from adaptcot.common.settings import Strict

NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Hana", "Ivan", "Jun", "Kofi", "Lena")
THINGS = ("apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards")
OOD_NAMES = ("Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas")
OOD_THINGS = ("buttons", "stones", "keys", "cups", "tickets", "beads")
MAX_COUNT = 20


@dataclass(frozen=True)
class Split:
    step_weights: tuple[float, ...]  # relative frequency of 1, 2, ... steps
    names: tuple[str, ...] = NAMES
    things: tuple[str, ...] = THINGS
    seed_offset: int = 0             # splits of one seed are different draws


SPLITS = {
    "pool": Split((6, 5, 4, 3, 2, 1), seed_offset=0),
    "eval": Split((1, 1, 1, 1, 1, 1), seed_offset=1000),
    "ood": Split((1, 1, 1), OOD_NAMES, OOD_THINGS, seed_offset=2000),
    "train": Split((1, 1, 1, 1, 1, 1), seed_offset=3000),
    "calibration": Split((1, 1, 1, 1, 1, 1), seed_offset=4000),
}


@dataclass(frozen=True)
class Step:
    op: str          # "+", "-" or "*"
    arg: int         # k, or 2 for a doubling
    before: int
    after: int
    sentence: str

    @property
    def equation(self) -> str:
        return f"{self.before} {self.op} {self.arg} = {self.after}"


@dataclass(frozen=True)
class Problem:
    name: str
    thing: str
    start: int
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].after if self.steps else self.start

    @property
    def question(self) -> str:
        opening = f"{self.name} has {self.start} {self.thing}."
        return " ".join([opening, *(s.sentence for s in self.steps), f"How many {self.thing} does {self.name} "
                         "have now?"])


def problem(rng: random.Random, steps: int, names: tuple[str, ...] = NAMES,
            things: tuple[str, ...] = THINGS) -> Problem:
    name, thing = rng.choice(names), rng.choice(things)
    start = value = rng.randint(1, 10)
    made = []
    for _ in range(steps):
        ops = [op for op, ok in (("+", value + 1 <= MAX_COUNT), ("-", value > 1), ("*", 2 * value <= MAX_COUNT))
               if ok]
        op = rng.choice(ops)
        if op == "+":
            k = rng.randint(1, min(5, MAX_COUNT - value))
            made.append(Step("+", k, value, value + k, f"{name} gets {k} more."))
        elif op == "-":
            k = rng.randint(1, min(5, value - 1))
            made.append(Step("-", k, value, value - k, f"{name} gives away {k}."))
        else:
            made.append(Step("*", 2, value, value * 2, f"The {thing} double."))
        value = made[-1].after
    return Problem(name, thing, start, tuple(made))


def answer_line(value: int) -> str:
    return f"The answer is \\boxed{{{value}}}."


def solution(p: Problem) -> str:
    """The world's one solution format (student and teacher alike): each sentence and its equation on a line, then
    the boxed answer. The teacher is stronger, not differently styled: a change of format costs a tiny student more
    than the teacher's CoTs could teach it."""
    return "\n".join([*(f"{s.sentence} {s.equation}." for s in p.steps), answer_line(p.answer)])


def gsm8k_row(p: Problem) -> dict:
    return {"question": p.question, "answer": "\n".join(s.equation for s in p.steps) + f"\n#### {p.answer}",
            "steps": len(p.steps)}


def problems(split: str, n: int, seed: int, exclude: set[str] = frozenset()) -> list[Problem]:
    """`n` distinct problems of a split, none of whose question text is in `exclude`."""
    spec = SPLITS[split]
    rng = random.Random(seed * 10_007 + spec.seed_offset)
    lengths = range(1, len(spec.step_weights) + 1)
    seen, out = set(exclude), []
    for _ in range(100 * n + 1000):  # a bounded search: tiny ladders cannot hold unlimited distinct questions
        if len(out) == n:
            break
        p = problem(rng, rng.choices(lengths, spec.step_weights)[0], spec.names, spec.things)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    if len(out) < n:
        raise ValueError(f"world split {split!r}: only {len(out)} distinct questions for n={n}")
    return out


def split_rows(split: str, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    return [gsm8k_row(p) for p in problems(split, n, seed, exclude)]


def problem_from_question(question: str) -> Problem | None:
    """Parse a question this module wrote back into its problem (None for any other text)."""
    m = re.fullmatch(r"(\w+) has (\d+) (\w+)\. (.*)How many \3 does \1 have now\?", question)
    if not m:
        return None
    name, start, thing, body = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    value, made = start, []
    for sentence in re.findall(r"[^.]+\.", body):
        sentence = sentence.strip()
        if gets := re.fullmatch(rf"{name} gets (\d+) more\.", sentence):
            k = int(gets.group(1))
            made.append(Step("+", k, value, value + k, sentence))
        elif gives := re.fullmatch(rf"{name} gives away (\d+)\.", sentence):
            k = int(gives.group(1))
            made.append(Step("-", k, value, value - k, sentence))
        elif sentence == f"The {thing} double.":
            made.append(Step("*", 2, value, value * 2, sentence))
        else:
            return None
        value = made[-1].after
    return Problem(name, thing, start, tuple(made))


_EQUATION = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)")
_BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def label_steps(p: Problem, response: str) -> list[bool]:
    """One label per non-empty line of a response: True while every line so far is right.

    Line i (i < number of steps) is right when its equation is the problem's step i, computed correctly; the line
    after the steps is right when it boxes the answer. Extra lines, and every line after a wrong one, are wrong.
    """
    lines = [line for line in response.split("\n") if line.strip()]
    labels, ok = [], True
    for i, line in enumerate(lines):
        if i < len(p.steps):
            m = _EQUATION.search(line)
            s = p.steps[i]
            ok = ok and bool(m) and (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))) == \
                (s.before, s.op, s.arg, s.after)
        elif i == len(p.steps):
            m = _BOXED.search(line)
            ok = ok and bool(m) and int(m.group(1)) == p.answer
        else:
            ok = False
        labels.append(ok)
    return labels


class WorldModelsConfig(Strict):
    """Training budgets (optimizer steps of `batch_size` examples) and the students' slice of the ladder."""

    # Trained on every length, briefly: reliable on short problems, slipping at some step of long ones, so its wrong
    # answers go wrong at different points (a student trained on short problems only fails long ones at step 1).
    student_max_steps: int = Field(default=6, ge=1, le=6)
    student_steps: int = Field(default=1500, ge=1)
    peer_steps: int = Field(default=1000, ge=1)  # a second student, trained two thirds as long (the transfer arm)
    teacher_steps: int = Field(default=1800, ge=1)
    prm_steps: int = Field(default=400, ge=1)
    prm_traces: int = Field(default=1200, ge=10)  # student answers sampled and labelled for PRM training
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=6e-3, gt=0)
    threads: int = Field(default=2, ge=1)

"""Evaluation metrics over a per-sample table: pass@k, accuracy with its standard error, majority vote, tokens.

Input: one row per (question, sample) with `question_id`, `correct` (bool), `num_tokens`, `finish_reason`, and
optionally `answer_key` (the normalised final answer, for majority voting) and `level` (the question's difficulty
level for the evaluated student, when the question is in the bank). `summarize(table)` returns the metrics of
the whole table; `summarize_by(table, "level")` one dict per value.

- pass@k: the unbiased estimator of Chen et al. 2021 (Codex), 1 - C(n-c, k) / C(n, k) per question, averaged over
  questions, for every k <= n (n: the smallest number of samples of any question).
- accuracy: the mean of per-question accuracies (= mean over samples when every question has n samples), with its
  standard error over questions (samples of one question are not independent draws of the benchmark).
- maj@n: the share of questions whose most frequent `answer_key` (ties: the answer seen first) is correct;
  responses without an answer do not vote. Only where `answer_key` is present and, with a `domain` column, for
  tables that hold math questions.
- tokens: mean, median and p90 over responses, mean over correct responses; truncation rate: finish_reason
  "length".
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adaptcot.common.schemas import require_columns

SAMPLE_COLUMNS = ("question_id", "correct", "num_tokens", "finish_reason")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): the Codex paper's numerically stable form of 1 - C(n-c, k) / C(n, k).
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _per_question(table: pa.Table) -> dict[str, dict]:
    rows = table.select([c for c in ("question_id", "correct", "answer_key") if c in table.column_names]).to_pylist()
    questions: dict[str, dict] = defaultdict(lambda: {"n": 0, "c": 0, "votes": Counter(), "correct_of": {}})
    for row in rows:
        q = questions[row["question_id"]]
        q["n"] += 1
        q["c"] += bool(row["correct"])
        key = row.get("answer_key")
        if key is not None and key != "":
            q["votes"][key] += 1
            q["correct_of"].setdefault(key, bool(row["correct"]))
    return questions


def majority_correct(votes: Counter, correct_of: dict) -> bool:
    """Is the most voted answer correct? Ties go to the answer seen first (Counter keeps insertion order)."""
    if not votes:
        return False
    best = max(votes.values())
    winner = next(key for key, count in votes.items() if count == best)
    return correct_of[winner]


def summarize(table: pa.Table) -> dict:
    """The metrics of one benchmark (or one level of it); see the module docstring."""
    require_columns(table, SAMPLE_COLUMNS, "eval metrics")
    if table.num_rows == 0:
        return {"questions": 0, "samples": 0}
    questions = _per_question(table)
    n_min = min(q["n"] for q in questions.values())
    per_q_acc = np.array([q["c"] / q["n"] for q in questions.values()])
    tokens = np.array(table["num_tokens"].to_pylist(), dtype=float)
    correct = np.array([bool(c) for c in table["correct"].to_pylist()])
    finish = table["finish_reason"].to_pylist()
    out = {
        "questions": len(questions),
        "samples": table.num_rows,
        "samples_per_question": n_min,
        "accuracy": float(per_q_acc.mean()),
        "accuracy_se": float(per_q_acc.std(ddof=1) / math.sqrt(len(per_q_acc))) if len(per_q_acc) > 1 else None,
        "pass_at_k": {str(k): float(np.mean([pass_at_k(q["n"], q["c"], k) for q in questions.values()]))
                      for k in range(1, n_min + 1)},
        "tokens_mean": float(tokens.mean()),
        "tokens_median": float(np.median(tokens)),
        "tokens_p90": float(np.percentile(tokens, 90)),
        "tokens_per_correct": float(tokens[correct].mean()) if correct.any() else None,
        "truncation_rate": sum(f == "length" for f in finish) / len(finish),
    }
    # Code answers have no answer key: a majority vote over them would read as 0, not as "not applicable".
    voting = "domain" not in table.column_names or pc.any(pc.equal(table["domain"], "math")).as_py()
    if "answer_key" in table.column_names and voting:
        out["majority_vote"] = float(np.mean([majority_correct(q["votes"], q["correct_of"])
                                              for q in questions.values()]))
    return out


def summarize_by(table: pa.Table, column: str) -> dict[str, dict]:
    """`summarize` per value of `column` (e.g. level); rows with a null value are grouped under "unknown"."""
    values = ["unknown" if v is None else str(v) for v in table[column].to_pylist()]
    out = {}
    for value in sorted(set(values)):
        mask = pa.array([v == value for v in values])
        out[value] = summarize(table.filter(mask))
    return out

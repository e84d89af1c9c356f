"""Process-reward scoring of wrong answers: split a response into steps, score each step, aggregate.

- `split_steps` and `aggregate` (pure): the step rule and the aggregation rule of `GraderConfig`.
- `prm_conversation` (pure): the PRM input as Qwen2.5-Math-PRM expects it: system, the question as the user turn,
  and the assistant turn with every step followed by the step separator (`<extra_0>`).
- `PRMScorer` (Ray Data stage): loads `vllm.LLM(runner="pooling")` with `PoolerConfig(step_tag_id=...)` once per
  actor and scores, per batch, the rows whose `correct` is false. The engine is given token ids (`prm_prompt`):
  fitting an answer into the PRM's context tokenizes its input anyway, and vLLM would tokenize the text again.
  `ray.data.llm` has no pooling processor that returns per-step scores, hence a `map_batches` actor around
  `vllm.LLM` (in-process engine core: no second process to start).
- `check_prm` fails before Ray starts on a PRM whose tokenizer lacks the step separator as a single token.

A response with more than `max_steps` steps, or too long for the PRM's context, is scored on its first steps (the
first wrong step, which decides how far an answer got, is usually early); `steps_scored` and `steps_total` record
how many. Nothing is left unscored for its length. Not covered: PRMs with another output head (a single reward logit).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pyarrow as pa
from pydantic import Field

from adaptcot.common.reasoning import split_reply
from adaptcot.common.settings import ActorPoolSize, Strict

PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
_THINK = re.compile(r"</?think>")


class PRMConfig(Strict):
    model: str
    name: str | None = None
    step_token: str = "<extra_0>"
    max_model_len: int = Field(default=8192, ge=16)
    max_steps: int = Field(default=64, ge=1)  # the first steps are kept: the first wrong step is usually early
    dtype: str = "auto"
    enforce_eager: bool = False
    batch_size: int = Field(default=32, ge=1)
    concurrency: ActorPoolSize = 1  # PRM actors, or [min, max] to autoscale
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    extra: dict[str, Any] = {}  # any other vLLM engine argument (e.g. max_num_seqs, gpu_memory_utilization)

    def scoring_key(self) -> dict:
        return {"model": self.model, "step_token": self.step_token, "max_steps": self.max_steps,
                "max_model_len": self.max_model_len}


def split_steps(response: str, rule: str) -> list[str]:
    reply = split_reply(response)
    if reply.format == "harmony":  # the channels' texts, without their markers: reasoning, then the answer
        text = "\n\n".join(part for part in (reply.reasoning, reply.answer) if part)
    else:
        text = _THINK.sub("", response or "")
    if rule == "double_newline":
        parts = re.split(r"\n\s*\n", text)
    elif rule == "newline":
        parts = text.split("\n")
    else:
        parts = re.split(rule[len("regex:"):], text)
    return [p.strip() for p in parts if p and p.strip()]


def aggregate(scores: list[float], rule: str, total_steps: int | None = None, step_threshold: float = 0.5
              ) -> float | None:
    """One score in [0, 1] for a wrong answer's step scores (each read as P(step correct | the steps before are)).

    - progress: the expected share of the answer's steps that come before its first wrong step,
      (1/L) * sum_i prod_{j<=i} s_j. It measures how far the answer got, and unlike `min` it separates an answer
      that went wrong at its first step from one that went wrong at its last.
    - first_error: the same share with each step read as right or wrong at `step_threshold`.
    - min / last / product / mean: as the names say (Qwen2.5-Math-PRM reports min and last).
    `total_steps` (>= len(scores)): the answer's steps when only the first ones were scored; the unscored ones count
    as not reached, so the share is a lower bound."""
    if not scores:
        return None
    if rule in ("progress", "first_error"):
        total = max(total_steps or len(scores), len(scores))
        reached, still_right = 0.0, 1.0
        for s in scores:
            still_right *= s if rule == "progress" else float(s >= step_threshold)
            reached += still_right
        return reached / total
    if rule == "min":
        return min(scores)
    if rule == "last":
        return scores[-1]
    if rule == "mean":
        return sum(scores) / len(scores)
    product = 1.0
    for s in scores:
        product *= s
    return product


def prm_conversation(question: str, steps: list[str], step_token: str) -> list[dict]:
    return [{"role": "system", "content": PRM_SYSTEM}, {"role": "user", "content": question},
            {"role": "assistant", "content": step_token.join(steps) + step_token}]


def check_prm(cfg: PRMConfig, tokenizer=None) -> int:
    """The step separator's token id; raises ValueError naming the problem if the PRM cannot be used."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=True)
    ids = tokenizer.encode(cfg.step_token, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != cfg.step_token:
        raise ValueError(f"PRM {cfg.model}: step token {cfg.step_token!r} is not a single token of its tokenizer "
                         f"(it encodes to {ids}); set prm.step_token to the PRM's step separator")
    return ids[0]


SCORE_FIELDS = (pa.field("step_scores", pa.list_(pa.float32())), pa.field("prm_score", pa.float32()),
                pa.field("prm_error", pa.string()), pa.field("steps_scored", pa.int32()),
                pa.field("steps_total", pa.int32()))


def fitting_prefix(steps: list[str], max_steps: int, fits) -> int:
    """How many first steps to score: at most `max_steps`, and as many as `fits(k)` allows (at least one: a first step
    that does not fit alone is cut by the caller)."""
    lo, hi = 1, min(len(steps), max_steps)
    if fits(hi):
        return hi
    while lo < hi:  # fits(lo) is assumed, fits(hi) is false: bisect on the number of steps
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def prm_input(tokenizer, question: str, response: str, cfg: PRMConfig, step_rule: str) -> tuple[str | None, int, int]:
    """(PRM input text, steps scored, steps in the response): the response's first steps that fit `cfg.max_steps`
    and the PRM's context (`cfg.max_model_len` tokens); None when the response has no steps."""
    text, _, scored, total = prm_prompt(tokenizer, question, response, cfg, step_rule)
    return text, scored, total


def prm_prompt(tokenizer, question: str, response: str, cfg: PRMConfig, step_rule: str
               ) -> tuple[str | None, list[int] | None, int, int]:
    """`prm_input` with the input's token ids as the engine would read the text (special tokens added as vLLM adds
    them): the fitting check tokenizes the input anyway, and the engine is given these ids instead of the text."""
    encoded: dict[str, list[int]] = {}

    def render(q: str, kept: list[str]) -> str:
        return tokenizer.apply_chat_template(prm_conversation(q, kept, cfg.step_token), tokenize=False,
                                             add_generation_prompt=False)

    def ids(text: str) -> list[int]:
        if text not in encoded:
            encoded.clear()  # only the last text is asked for again (the one kept)
            encoded[text] = tokenizer(text)["input_ids"]
        return encoded[text]

    def cut(text: str, max_tokens: int) -> str:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        return text if len(tokens) <= max_tokens else tokenizer.decode(tokens[:max(1, max_tokens)])

    steps = split_steps(response, step_rule)
    if not steps:
        return None, None, 0, 0
    limit = cfg.max_model_len
    if len(ids(render(question, steps[:1]))) > limit:
        # Even one step does not fit: keep the question's start and cut the first step to the room left.
        question = cut(question, limit // 2)
        room = limit - len(ids(render(question, [""]))) - 1
        text = render(question, [cut(steps[0], room)])
        while len(ids(text)) > limit and room > 1:  # a cut step can tokenize longer inside the template
            room = max(1, room - (len(ids(text)) - limit))
            text = render(question, [cut(steps[0], room)])
        return text, ids(text), 1, len(steps)
    keep = fitting_prefix(steps, cfg.max_steps, lambda k: len(ids(render(question, steps[:k]))) <= limit)
    text = render(question, steps[:keep])
    return text, ids(text), keep, len(steps)


class PRMScorer:
    """Ray Data stage: adds `step_scores`, `prm_score` (aggregated), `prm_error`, `steps_scored`, `steps_total` to
    rows whose `correct` is false."""

    def __init__(self, cfg: PRMConfig, aggregation: str, step_rule: str, step_threshold: float = 0.5):
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(cfg.num_cpus))))
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.config import PoolerConfig

        self.cfg, self.aggregation, self.step_rule, self.step_threshold = cfg, aggregation, step_rule, step_threshold
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=True)
        self.step_id = check_prm(cfg, self.tokenizer)
        self.llm = LLM(model=cfg.model, runner="pooling", pooler_config=PoolerConfig(step_tag_id=self.step_id),
                       max_model_len=cfg.max_model_len, dtype=cfg.dtype, enforce_eager=cfg.enforce_eager,
                       trust_remote_code=True, **cfg.extra)

    def prompt(self, question: str, response: str) -> tuple[list[int] | None, int, int]:
        """The PRM input's token ids (the engine does not tokenize again), steps scored, steps in the response."""
        _, ids, scored, total = prm_prompt(self.tokenizer, question, response, self.cfg, self.step_rule)
        return ids, scored, total

    def score(self, questions: list[str], responses: list[str]
              ) -> list[tuple[list[float] | None, str | None, int, int]]:
        """Per answer: (step scores, error, steps scored, steps in the response)."""
        prompts = [self.prompt(q, r) for q, r in zip(questions, responses)]
        results = [(None, "no steps in the response", 0, 0) if p is None else (None, None, k, n)
                   for p, k, n in prompts]
        todo = [i for i, (p, _, _) in enumerate(prompts) if p is not None]
        if not todo:  # vLLM refuses an empty request list
            return results
        outputs = self.llm.encode([{"prompt_token_ids": prompts[i][0]} for i in todo], pooling_task="token_classify",
                                  use_tqdm=False)
        for i, out in zip(todo, outputs):
            scores = out.outputs.data[:, 1].float().tolist()
            _, _, scored, total = results[i]
            if len(scores) != scored:  # the step token inside a step's own text, or lost by the template
                results[i] = (None, f"PRM returned {len(scores)} step scores for {scored} steps", scored, total)
            else:
                results[i] = (scores, None, scored, total)
        return results

    def __call__(self, batch: pa.Table) -> pa.Table:
        correct = batch["correct"].to_pylist()
        wrong = [i for i, c in enumerate(correct) if c is False]
        step_scores: list = [None] * batch.num_rows
        errors: list = [None] * batch.num_rows
        scored_steps: list = [None] * batch.num_rows
        total_steps: list = [None] * batch.num_rows
        questions, responses = batch["question"].to_pylist(), batch["response"].to_pylist()
        scored = self.score([questions[i] for i in wrong], [responses[i] or "" for i in wrong])
        for i, (scores, error, k, n) in zip(wrong, scored):
            step_scores[i], errors[i], scored_steps[i], total_steps[i] = scores, error, k, n
        aggregated = [aggregate(s, self.aggregation, n, self.step_threshold) if s else None
                      for s, n in zip(step_scores, total_steps)]
        for field, values in zip(SCORE_FIELDS, (step_scores, aggregated, errors, scored_steps, total_steps)):
            batch = batch.append_column(field, pa.array(values, field.type))
        return batch

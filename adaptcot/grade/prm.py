"""Process-reward scoring of wrong answers: split a response into steps, score each step, aggregate.

- `split_steps` and `aggregate` (pure): the step rule and the aggregation rule of `GraderConfig`.
- `prm_conversation` (pure): the PRM input as Qwen2.5-Math-PRM expects it: system, the question as the user turn,
  and the assistant turn with every step followed by the step separator (`<extra_0>`).
- `PRMScorer` (Ray Data stage): loads `vllm.LLM(runner="pooling")` with `PoolerConfig(step_tag_id=...)` once per
  actor and scores, per batch, the rows whose `correct` is false. `ray.data.llm` has no pooling processor that
  returns per-step scores, hence a `map_batches` actor around `vllm.LLM`.
- `check_prm` fails before Ray starts on a PRM whose tokenizer lacks the step separator as a single token.

Not covered: PRMs with another output head (e.g. a single reward logit), and responses longer than the PRM's
context beyond keeping their last steps (`max_steps`).
"""

from __future__ import annotations

import os
import re

import pyarrow as pa
from pydantic import Field

from adaptcot.common.settings import ActorPoolSize, Strict

PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
_THINK = re.compile(r"</?think>")


class PRMConfig(Strict):
    model: str
    name: str | None = None
    step_token: str = "<extra_0>"
    max_model_len: int = Field(default=8192, ge=16)
    max_steps: int = Field(default=64, ge=1)  # the last steps are kept; the first wrong step is rarely the last
    dtype: str = "auto"
    enforce_eager: bool = False
    batch_size: int = Field(default=32, ge=1)
    concurrency: ActorPoolSize = 1  # PRM actors, or [min, max] to autoscale
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)

    def scoring_key(self) -> dict:
        return {"model": self.model, "step_token": self.step_token, "max_steps": self.max_steps,
                "max_model_len": self.max_model_len}


def split_steps(response: str, rule: str) -> list[str]:
    text = _THINK.sub("", response or "")
    if rule == "double_newline":
        parts = re.split(r"\n\s*\n", text)
    elif rule == "newline":
        parts = text.split("\n")
    else:
        parts = re.split(rule[len("regex:"):], text)
    return [p.strip() for p in parts if p and p.strip()]


def aggregate(scores: list[float], rule: str) -> float | None:
    if not scores:
        return None
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


def check_prm(cfg: PRMConfig) -> int:
    """The step separator's token id; raises ValueError naming the problem if the PRM cannot be used."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=True)
    ids = tokenizer.encode(cfg.step_token, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != cfg.step_token:
        raise ValueError(f"PRM {cfg.model}: step token {cfg.step_token!r} is not a single token of its tokenizer "
                         f"(it encodes to {ids}); set prm.step_token to the PRM's step separator")
    return ids[0]


SCORE_FIELDS = (pa.field("step_scores", pa.list_(pa.float32())), pa.field("prm_score", pa.float32()),
                pa.field("prm_error", pa.string()))


class PRMScorer:
    """Ray Data stage: adds `step_scores`, `prm_score` (aggregated), `prm_error` to rows whose `correct` is false."""

    def __init__(self, cfg: PRMConfig, aggregation: str, step_rule: str):
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(cfg.num_cpus))))
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.config import PoolerConfig

        self.cfg, self.aggregation, self.step_rule = cfg, aggregation, step_rule
        self.step_id = check_prm(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=True)
        self.llm = LLM(model=cfg.model, runner="pooling", pooler_config=PoolerConfig(step_tag_id=self.step_id),
                       max_model_len=cfg.max_model_len, dtype=cfg.dtype, enforce_eager=cfg.enforce_eager,
                       trust_remote_code=True)

    def _prompt(self, question: str, response: str) -> str | None:
        steps = split_steps(response, self.step_rule)[-self.cfg.max_steps:]
        if not steps:
            return None
        conversation = prm_conversation(question, steps, self.cfg.step_token)
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)

    def score(self, questions: list[str], responses: list[str]) -> list[tuple[list[float] | None, str | None]]:
        prompts = [self._prompt(q, r) for q, r in zip(questions, responses)]
        results: list[tuple[list[float] | None, str | None]] = [(None, "no steps in the response")] * len(prompts)
        todo = []
        for i, p in enumerate(prompts):
            n_tokens = len(self.tokenizer.encode(p, add_special_tokens=False)) if p else 0
            if p and n_tokens > self.cfg.max_model_len:
                results[i] = (None, f"PRM input of {n_tokens} tokens exceeds max_model_len {self.cfg.max_model_len}")
            elif p:
                todo.append(i)
        outputs = self.llm.encode([prompts[i] for i in todo], pooling_task="token_classify", use_tqdm=False)
        for i, out in zip(todo, outputs):
            results[i] = (out.outputs.data[:, 1].float().tolist(), None)
        return results

    def __call__(self, batch: pa.Table) -> pa.Table:
        correct = batch["correct"].to_pylist()
        wrong = [i for i, c in enumerate(correct) if c is False]
        step_scores: list = [None] * batch.num_rows
        errors: list = [None] * batch.num_rows
        questions, responses = batch["question"].to_pylist(), batch["response"].to_pylist()
        scored = self.score([questions[i] for i in wrong], [responses[i] or "" for i in wrong])
        for i, (scores, error) in zip(wrong, scored):
            step_scores[i], errors[i] = scores, error
        aggregated = [aggregate(s, self.aggregation) if s else None for s in step_scores]
        for field, values in zip(SCORE_FIELDS, (step_scores, aggregated, errors)):
            batch = batch.append_column(field, pa.array(values, field.type))
        return batch

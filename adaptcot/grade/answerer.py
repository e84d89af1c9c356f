"""The answering stage a `StudentConfig` asks for: vLLM in the actor's process (`engine.in_process`,
`in_process.py`) or ray.data.llm's processor (`answering.answer_processor`). Both map a dataset of expanded pool
rows to rows with the carried fields, `response`, `num_tokens`, `finish_reason` and `__inference_error__`."""

from __future__ import annotations

from typing import Callable

from adaptcot.grade.answering import StudentConfig, answer_processor
from adaptcot.grade.in_process import in_process_answerer


def answerer(cfg: StudentConfig, row_sampling: Callable[[dict], dict] | None = None):
    """dataset -> answered dataset. `row_sampling(row)`: sampling parameters of that row over the config's."""
    if cfg.engine.in_process:
        return in_process_answerer(cfg, row_sampling)
    return answer_processor(cfg, row_sampling)

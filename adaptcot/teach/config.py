"""The teacher's config: which model (an API or an in-cluster vLLM model), its prompts and sampling, prices, cap and
mode (online or batch). Documented in docs/teacher.md."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from adaptcot.common.settings import Strict
from adaptcot.grade.answering import CODE_PROMPT, MATH_PROMPT, SamplingConfig, StudentConfig
from adaptcot.teach.client import EndpointConfig
from adaptcot.teach.cost import Prices, PricesConfig, resolve_prices


class BatchConfig(Strict):
    completion_window: str = "24h"  # the only window OpenAI offers
    poll_interval_s: float = Field(default=30.0, gt=0)
    max_requests_per_batch: int = Field(default=50_000, ge=1)  # OpenAI's limit per batch file
    max_file_mb: float = Field(default=100.0, gt=0)  # OpenAI takes up to 200 MB a file (100 MB in older docs)
    request_url: str = "/v1/chat/completions"  # each line's `url` and the batch's `endpoint`


class TeacherConfig(Strict):
    _prices: Prices | None = PrivateAttr(default=None)
    name: str
    samples: int = Field(default=1, ge=1)  # k CoTs per question
    sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=0.95, max_tokens=16384)
    math_prompt: str = MATH_PROMPT
    code_prompt: str = CODE_PROMPT
    system_prompt: str | None = None
    prices: PricesConfig = PricesConfig()  # default: litellm's cost map for the endpoint's model (`teach/cost.py`)
    max_usd: float | None = Field(default=None, gt=0)  # spending cap on this output, across runs (`teach/cost.py`)
    expected_output_tokens: int | None = Field(default=None, ge=1)  # for estimates before anything is measured
    endpoint: EndpointConfig | None = None
    # online: one streamed request per CoT, stored as it arrives (any OpenAI-compatible API; the default, since
    # DeepSeek has no batch API). batch: the OpenAI Batch API at the provider's batch price (`teach/batch.py`).
    mode: Literal["online", "batch"] = "online"
    batch: BatchConfig = BatchConfig()
    vllm: StudentConfig | None = None  # in-cluster: model, engine, resources (its sampling and prompts are ignored)

    @model_validator(mode="after")
    def _one_backend(self):
        if (self.endpoint is None) == (self.vllm is None):
            raise ValueError("set exactly one of teacher.endpoint (an API) or teacher.vllm (an in-cluster model)")
        if self.mode == "batch" and self.endpoint is None:
            raise ValueError("teacher.mode: batch needs teacher.endpoint (a provider's Batch API), not teacher.vllm")
        if self.max_usd is not None and (self.mode == "batch" or self.endpoint is None):
            raise ValueError("teacher.max_usd: a cap applies to online requests to an endpoint (batch mode pays per "
                             "batch, an in-cluster teacher per GPU hour); check `adaptcot teach --dry-run` instead")
        if self.endpoint is not None:
            self.resolved_prices()  # a price the config cannot settle fails here, before any request
        if self.max_usd is not None and not self.resolved_prices().known:
            raise ValueError(f"teacher.max_usd needs prices: {self.resolved_prices().source}")
        if self.endpoint is not None and self.sampling.vllm_extra():
            raise ValueError(f"teacher.sampling.{next(iter(self.sampling.vllm_extra()))}: vLLM sampling fields reach "
                             "an in-cluster teacher (teacher.vllm) only; an API takes its own in endpoint.extra_body")
        return self

    def resolved_prices(self) -> Prices:
        if self._prices is None:
            self._prices = resolve_prices(self.prices, self.endpoint.model if self.endpoint else None)
        return self._prices

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        return self.resolved_prices().cost(prompt_tokens, completion_tokens, batch=self.mode == "batch")

    def sampling_key(self) -> str:
        """What changes the CoTs a request returns: the model, its prompts and its sampling parameters."""
        model = self.endpoint.model if self.endpoint else self.vllm.model
        spec = {"model": model, "sampling": self.sampling.model_dump(), "math_prompt": self.math_prompt,
                "code_prompt": self.code_prompt, "system_prompt": self.system_prompt,
                "extra_body": self.endpoint.extra_body if self.endpoint else None}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def prompt_config(self) -> StudentConfig:
        """The teacher's prompts in the form `build_messages` takes."""
        return StudentConfig(model=self.name, math_prompt=self.math_prompt, code_prompt=self.code_prompt,
                             system_prompt=self.system_prompt)

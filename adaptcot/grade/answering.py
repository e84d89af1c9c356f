"""Student answering: pool questions -> n sampled responses each, through `ray.data.llm`'s vLLM engine processor.

- `expand_samples` (pure): one row per (question, sample index). `ray.data.llm` keeps only the first of n samples
  of a request, so n samples are n rows, each asking for one.
- `build_messages` (pure): the chat prompt of a question.
- `answer_processor` (Ray): the vLLM engine processor built from `StudentConfig`: preprocess (the chat prompt, see
  `chat_prompt`), the engine, postprocess; batch size, concurrency, tensor/pipeline parallelism and resources from
  config, so the same job runs on CPU nodes and GPU nodes. ray.data.llm's chat-template, tokenize and detokenize
  stages are off (adaptcot's choice): each is an actor pool of its own, which costs start-up (every actor imports
  torch, transformers and vLLM) and CPU for work the engine does anyway: vLLM tokenizes a text prompt and detokenizes
  its output itself (`SamplingParams.detokenize`, on by default). The chat template is applied in the preprocess
  tasks, with a tokenizer loaded once per worker process.
- `lora_adapter`: a student given as a peft LoRA adapter directory (`train.lora.export: adapter` writes one) is
  served as its base model (named in the adapter's `adapter_config.json`) with `enable_lora`, every request naming
  the adapter in ray.data.llm's `model` column; an adapter on `s3://` / `gs://` is fetched by ray.data.llm
  (`dynamic_lora_loading_path`). Adapters named by hub id are not looked for.
- `to_attempt_row` (pure): a processor output row -> an attempt row. A request the engine refused (e.g. a prompt
  longer than the model's context) comes back as an error row with its message; the job goes on.
- `writes_harmony` / `sampling_params` (pure): gpt-oss models write harmony channels (`common/reasoning.py`), whose
  markers are special tokens. For them (`reasoning_format: harmony`, or `auto` and "gpt-oss" in the model's path or
  name: a name match, no config or tokenizer is read) vLLM detokenizes with `skip_special_tokens: false`, so the
  response keeps `<|channel|>analysis<|message|>...` and its reasoning and answer can be told apart.
- `SamplingConfig` takes, besides n / temperature / top_p / max_tokens, the vLLM `SamplingParams` fields of
  `VLLM_SAMPLING` (e.g. `ignore_eos`, `top_k`, `min_p`, `stop`), passed to every request; any other key fails naming
  it. Set only, they leave the grader ids and teacher sampling keys of configs without them as they were.

`finish_reason` is inferred: `ray.data.llm` returns the token count but not vLLM's finish reason: a response that used
all of `max_tokens` was cut off (`length`), any other ended at EOS or a configured stop string (`stop`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from adaptcot.common import storage
from adaptcot.common.schemas import tests_from_json
from adaptcot.common.settings import ActorPoolSize, Strict, pool_max

MATH_PROMPT = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_PROMPT = ("{question}\n\n{io_format}Write a complete Python 3 solution. Reason step by step, then give the final "
               "program in one ```python code block.")
# How the program is run, told per question from its tests (the {io_format} of a code prompt).
IO_FORMATS = {"stdin_stdout": "Read the input from standard input and print the answer to standard output.\n",
              "call": "Implement the function `{fn_name}`.\n",
              "assert": "Implement the function `{entry_point}`.\n"}
CARRIED = ("question_id", "domain", "question", "reference_answer", "tests_json", "starter_code", "sample_index")


# vLLM SamplingParams fields a config may set (value types checked when the config is read), passed as they are.
# Not logit_bias: its integer keys do not fit the Arrow rows the parameters travel in.
VLLM_SAMPLING: dict[str, Any] = {
    "ignore_eos": bool, "min_tokens": int, "top_k": int, "min_p": float, "presence_penalty": float,
    "frequency_penalty": float, "repetition_penalty": float, "stop": str | list[str], "stop_token_ids": list[int],
    "include_stop_str_in_output": bool, "bad_words": list[str], "allowed_token_ids": list[int]}
# SamplingParams fields the pipeline sets itself, with where to say it instead.
MANAGED_SAMPLING = {
    "seed": "the engine is seeded (engine.seed): per-request seeds crash chunked prefill on vLLM-CPU",
    "skip_special_tokens": "set by reasoning_format (harmony models keep their special tokens)",
    "spaces_between_special_tokens": "set by reasoning_format (harmony models keep their special tokens)",
    "detokenize": "the response text is what is stored", "output_kind": "one final output per request is kept",
    "logprobs": "log-probabilities are not stored", "prompt_logprobs": "log-probabilities are not stored"}


class SamplingConfig(Strict):
    """n samples per question, each one request; other keys: vLLM SamplingParams fields of `VLLM_SAMPLING`."""
    model_config = ConfigDict(extra="allow", frozen=True)  # checked against VLLM_SAMPLING below

    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.6, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=2048, ge=1)

    @model_validator(mode="after")
    def _vllm_fields(self):
        for key, value in (self.model_extra or {}).items():
            if key in MANAGED_SAMPLING:
                raise ValueError(f"sampling.{key} cannot be set: {MANAGED_SAMPLING[key]}")
            if key not in VLLM_SAMPLING:
                raise ValueError(f"sampling.{key} is not a sampling setting: set n, temperature, top_p, max_tokens or "
                                 f"a vLLM SamplingParams field of {', '.join(VLLM_SAMPLING)}")
            kind = VLLM_SAMPLING[key]
            try:
                self.model_extra[key] = TypeAdapter(kind).validate_python(value)
            except ValidationError as e:
                raise ValueError(f"sampling.{key}: {value!r} is not a {getattr(kind, '__name__', kind)} "
                                 f"({e.errors()[0]['msg']})") from None
        return self

    def vllm_extra(self) -> dict[str, Any]:
        """The vLLM SamplingParams fields set beyond n, temperature, top_p and max_tokens."""
        return dict(self.model_extra or {})


class EngineConfig(Strict):
    max_model_len: int = Field(default=8192, ge=16)
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    seed: int = 0  # the engine is seeded, not each request (per-request seeds crash chunked prefill on vLLM-CPU)
    # vLLM in the Ray actor's own process instead of ray.data.llm's (which spawns a second engine process): much
    # faster start-up, one engine per process only (grade/in_process.py).
    in_process: bool = False
    extra: dict[str, Any] = {}  # any other vLLM engine argument

    @model_validator(mode="after")
    def _one_process(self):
        if self.in_process and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ValueError("engine.in_process runs one engine in one process: set tensor_parallel_size and "
                             "pipeline_parallel_size to 1, or in_process: false")
        return self


class ResourcesConfig(Strict):
    use_gpu: bool = False
    cpus_per_engine: float = Field(default=1.0, gt=0)  # CPU-only engines: the engine actor's CPU bundle
    cpus_per_light_stage: float = Field(default=0.25, gt=0)  # chat template, tokenize, pre/postprocess
    concurrency: ActorPoolSize = 1  # engine replicas, or [min, max] to autoscale
    batch_size: int = Field(default=64, ge=1)
    # Batches one engine works on at once (ray.data.llm's default 8). The pool grows when about 1.75x this many are
    # queued per engine: with small batches on slow CPU engines, fewer let it grow sooner. batch_size x this is the
    # most rows an engine has at once: keep it above the engine's max_num_seqs (checked when it is set in
    # engine.extra), with room for the batches held open by their longest answer.
    max_concurrent_batches: int = Field(default=8, ge=1)


class StudentConfig(Strict):
    model: str  # a local directory or a Hugging Face hub id
    name: str | None = None  # how the bank names this student (default: the hub id, or the directory's name)
    math_prompt: str = MATH_PROMPT
    code_prompt: str = CODE_PROMPT
    system_prompt: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    resources: ResourcesConfig = ResourcesConfig()
    # How the model marks its reasoning; harmony keeps special tokens in the text (see writes_harmony). Replies are
    # parsed by their text whatever this says; "think" only stops a gpt-oss-named model from keeping them.
    reasoning_format: Literal["auto", "think", "harmony"] = "auto"

    @model_validator(mode="after")
    def _engines_kept_busy(self):
        """ray.data.llm hands an engine at most batch_size x max_concurrent_batches rows at once (a batch comes back
        when its last row is done): fewer than the engine's max_num_seqs and it never runs full."""
        res, seqs = self.resources, self.engine.extra.get("max_num_seqs")
        if seqs and res.batch_size * res.max_concurrent_batches < seqs:
            raise ValueError(f"resources.batch_size x max_concurrent_batches = {res.batch_size} x "
                             f"{res.max_concurrent_batches} rows in flight per engine, fewer than its max_num_seqs "
                             f"{seqs} (engine.extra): set max_concurrent_batches >= {-(-seqs // res.batch_size)}, "
                             "more where answer lengths vary (docs/grading.md)")
        return self

    @property
    def display_name(self) -> str:
        return self.name or (Path(self.model).name if Path(self.model).exists() else self.model)

    def answering_key(self) -> dict:
        """The settings that change what the student answers (part of the grader id)."""
        key = {"model": self.model, "math_prompt": self.math_prompt, "code_prompt": self.code_prompt,
               "system_prompt": self.system_prompt, "sampling": self.sampling.model_dump(),
               "max_model_len": self.engine.max_model_len}
        # Only where it changes the stored text, so grader ids of other models stay as they were.
        return {**key, "reasoning_format": "harmony"} if writes_harmony(self) else key


_GPT_OSS = re.compile(r"gpt[-_]?oss", re.IGNORECASE)


def writes_harmony(cfg: StudentConfig) -> bool:
    """Does the model write gpt-oss's harmony format? `auto`: "gpt-oss" (or gpt_oss) in its path or name."""
    if cfg.reasoning_format != "auto":
        return cfg.reasoning_format == "harmony"
    return any(_GPT_OSS.search(text) for text in (cfg.model, cfg.name or ""))


def sampling_params(cfg: StudentConfig) -> dict:
    """The vLLM sampling parameters of one request (one sample: n rows ask for n samples)."""
    params = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
              "max_tokens": cfg.sampling.max_tokens, **cfg.sampling.vllm_extra()}
    if writes_harmony(cfg):  # keep <|channel|>, <|message|>, <|end|>...: they separate reasoning from answer
        params.update(skip_special_tokens=False, spaces_between_special_tokens=False)
    return params


def expand_samples(batch: pa.Table, n: int) -> pa.Table:
    """Each row n times, with `sample_index` 0..n-1 (rows of one question stay together)."""
    expanded = batch.take(pa.array(np.repeat(np.arange(batch.num_rows), n)))
    return expanded.append_column("sample_index", pa.array(np.tile(np.arange(n, dtype=np.int32), batch.num_rows)))


def build_messages(row: dict, cfg: StudentConfig) -> list[dict]:
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    if row["domain"] == "math":
        return messages + [{"role": "user", "content": cfg.math_prompt.format(question=row["question"])}]
    return messages + [{"role": "user", "content": cfg.code_prompt.format(question=row["question"],
                                                                          io_format=code_io_format(row))}]


def code_io_format(row: dict) -> str:
    """How the program will be run, and the starter code if the question has one."""
    tests = tests_from_json(row.get("tests_json")) or {}
    text = IO_FORMATS.get(tests.get("kind"), "").format(fn_name=tests.get("fn_name"),
                                                        entry_point=tests.get("entry_point"))
    if row.get("starter_code"):
        text += f"Start from this code:\n```python\n{row['starter_code']}\n```\n"
    return text


def to_attempt_row(row: dict) -> dict:
    """Processor output (success or error row) -> attempt fields plus the carried question fields."""
    error = row.get("__inference_error__") or None
    carried = {k: row.get(k) for k in CARRIED}
    if error:
        return {**carried, "response": None, "num_tokens": 0, "finish_reason": "error", "error": error[:2000]}
    return {**carried, "response": row["response"], "num_tokens": row["num_tokens"],
            "finish_reason": row["finish_reason"], "error": None}


@lru_cache(maxsize=4)
def _tokenizer(model: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)


def chat_prompt(messages: list[dict], model: str, trust_remote_code: bool = False) -> str:
    """The prompt text of a chat, as ray.data.llm's chat-template stage writes it (the generation prompt added after
    the user turn); the model's tokenizer is loaded once per process."""
    return _tokenizer(model, trust_remote_code).apply_chat_template(messages, tokenize=False,
                                                                    add_generation_prompt=True)


def engine_kwargs(cfg: StudentConfig) -> dict:
    eng = cfg.engine
    return {"max_model_len": eng.max_model_len, "dtype": eng.dtype, "enforce_eager": eng.enforce_eager,
            "seed": eng.seed, "tensor_parallel_size": eng.tensor_parallel_size,
            "pipeline_parallel_size": eng.pipeline_parallel_size, **eng.extra}


# vLLM's allowed `max_lora_rank` values (vllm.config.lora.MaxLoRARanks; importing vLLM on the driver costs seconds).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class LoraAdapter:
    """A peft LoRA adapter directory (local or a URI), served by vLLM on top of its base model."""
    path: str
    base: str
    rank: int

    def engine_kwargs(self) -> dict:
        rank = next((r for r in VLLM_LORA_RANKS if r >= self.rank), None)
        if rank is None:
            raise ValueError(f"{self.path}: LoRA rank {self.rank} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")
        return {"enable_lora": True, "max_lora_rank": rank}

    @property
    def loading_path(self) -> str | None:
        """ray.data.llm's `dynamic_lora_loading_path`: where it fetches a remote adapter from (None: a local one)."""
        return storage.parent(self.path) if storage.is_remote(self.path) else None

    @property
    def request_model(self) -> str:
        """The `model` column of each request: the adapter's folder under `loading_path`, or its local path."""
        return storage.name(self.path) if storage.is_remote(self.path) else os.path.abspath(self.path)


def lora_adapter(model: str) -> LoraAdapter | None:
    """`model` as a LoRA adapter (a directory with peft's `adapter_config.json`, which names the base model), or
    None for a full model."""
    config_path = storage.join(model, "adapter_config.json")
    if not storage.exists(config_path):
        return None
    config = json.loads(storage.read_text(config_path))
    if not config.get("base_model_name_or_path"):
        raise ValueError(f"{model} is a LoRA adapter that does not name its base model (base_model_name_or_path in "
                         "adapter_config.json)")
    rank = max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])
    return LoraAdapter(path=model, base=config["base_model_name_or_path"], rank=rank)


def answer_processor(cfg: StudentConfig, row_sampling: Callable[[dict], dict] | None = None):
    """The `ray.data.llm` processor that answers expanded pool rows (see module docstring). `row_sampling(row)`, if
    given: sampling parameters of that row's request over the config's (e.g. a longer max_tokens for some rows)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    res = cfg.resources
    light = {"num_cpus": res.cpus_per_light_stage}
    adapter = lora_adapter(cfg.model)  # None: a full model
    kwargs = {**(adapter.engine_kwargs() if adapter else {}), **engine_kwargs(cfg)}  # engine.extra may override
    engine_model = adapter.base if adapter else cfg.model
    placement = None if res.use_gpu else {"bundles": [{"CPU": res.cpus_per_engine}]}
    # Only the engine stage: vLLM tokenizes the prompt text and detokenizes its output itself (module docstring).
    processor_cfg = vLLMEngineProcessorConfig(
        model_source=engine_model, engine_kwargs=kwargs, batch_size=res.batch_size,
        concurrency=res.concurrency, max_concurrent_batches=res.max_concurrent_batches,
        should_continue_on_error=True, log_engine_metrics=False, placement_group_config=placement,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
        dynamic_lora_loading_path=adapter.loading_path if adapter else None,
    )
    params, model, trust = sampling_params(cfg), engine_model, bool(kwargs.get("trust_remote_code", False))
    lora = {"model": adapter.request_model} if adapter else {}  # ray.data.llm: a LoRA request for this adapter

    def preprocess(row: dict) -> dict:
        mine = {**params, **row_sampling(row)} if row_sampling else params
        return {"prompt": chat_prompt(build_messages(row, cfg), model, trust), "sampling_params": mine,
                "max_tokens": mine["max_tokens"], **lora, **{k: row[k] for k in CARRIED}}

    def postprocess(row: dict) -> dict:
        n_tokens = int(row["num_generated_tokens"])
        finish = "length" if n_tokens >= row["max_tokens"] else "stop"
        return {**{k: row[k] for k in CARRIED}, "response": row["generated_text"], "num_tokens": n_tokens,
                "finish_reason": finish, "__inference_error__": ""}

    # One preprocess task per engine at a time: each new worker process imports transformers and loads the tokenizer
    # (seconds of CPU the starting engines need), and one task writes prompts far faster than an engine answers them.
    pre = {**light, "concurrency": pool_max(res.concurrency)}
    return build_processor(processor_cfg, preprocess=preprocess, postprocess=postprocess,
                           preprocess_map_kwargs=pre, postprocess_map_kwargs=light)

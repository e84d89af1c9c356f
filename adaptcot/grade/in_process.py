"""vLLM in the Ray Data actor's own process (`engine.in_process: true`, adaptcot's choice): the answering stage
without ray.data.llm's start-up costs.

Why (measured with `benchmarks/grade_throughput.py` on 2 CPU cores): ray.data.llm's engine is vLLM's `AsyncLLM`,
which always runs its engine core in a second process, and vLLM starts that process with `spawn` inside a Ray actor
(`vllm.utils.system_utils._maybe_force_spawn`), so every engine imports vLLM twice; building the processor also
imports vLLM in the driver. Together about 20 s of start-up per engine on CPU, paid again by every stage that starts
engines. Here one `vllm.LLMEngine` runs in the actor (its core in-process), stepped by one thread; every Ray Data
batch the actor is given adds its requests to the running engine, so answers of different batches share the
engine's continuous batching as with ray.data.llm (batches are async; the actor takes `max_concurrent_batches` at
once). The chat template is applied here with the engine's tokenizer: no separate preprocess stage.

What it gives up (use `in_process: false`, the default, for these): tensor/pipeline parallelism across processes,
LoRA adapters fetched from object stores, ray.data.llm's engine metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
from typing import Any, Callable

import pyarrow as pa

from adaptcot.grade.answering import (
    CARRIED,
    StudentConfig,
    build_messages,
    engine_kwargs,
    lora_adapter,
    sampling_params,
)

# Request ids are unique per actor; the engine refuses a duplicate id.
_ids = itertools.count()


def check_in_process(cfg: StudentConfig) -> None:
    """What the in-process engine cannot run, refused before any work (parallelism is refused by EngineConfig)."""
    adapter = lora_adapter(cfg.model)
    if adapter and adapter.loading_path:
        raise ValueError(f"engine.in_process serves local LoRA adapters only ({cfg.model} is remote): copy it to "
                         "the nodes or set in_process: false")


class InProcessEngine:
    """Async `map_batches` UDF: answers a batch of expanded pool rows with the actor's own vLLM engine."""

    def __init__(self, cfg: StudentConfig, row_sampling: Callable[[dict], dict] | None = None):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: the point of it
        from vllm import EngineArgs, LLMEngine

        self.cfg, self.row_sampling, self.params = cfg, row_sampling, sampling_params(cfg)
        adapter = lora_adapter(cfg.model)
        # Stats off unless engine.extra turns them on, as `vllm.LLM` has them: they cost 5-10% of a CPU step here.
        kwargs = {"disable_log_stats": True, **(adapter.engine_kwargs() if adapter else {}), **engine_kwargs(cfg)}
        self.engine = LLMEngine.from_engine_args(EngineArgs(model=adapter.base if adapter else cfg.model, **kwargs))
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest
            self.lora = LoRARequest("adapter", 1, os.path.abspath(adapter.path))
        self.tokenizer = self.engine.get_tokenizer()
        # Requests reach the engine through a queue drained by the stepping thread, the only one that touches the
        # engine (it is not thread-safe). A lock shared with submitters starved them: the stepping thread took it
        # back after every step and the engine ran ~8 requests at a time instead of max_num_seqs.
        self.incoming: queue.SimpleQueue = queue.SimpleQueue()
        self.wake = threading.Event()
        self.waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self.failed: BaseException | None = None
        threading.Thread(target=self._step_forever, daemon=True, name="vllm-engine").start()

    def _add_incoming(self) -> None:
        while not self.incoming.empty():
            request_id, prompt, params, loop, future = self.incoming.get()
            try:
                self.engine.add_request(request_id, prompt, params, lora_request=self.lora)
            except Exception as e:  # e.g. a prompt longer than the context: this row's error, the rest go on
                loop.call_soon_threadsafe(_resolve, future, e)
                continue
            self.waiting[request_id] = (loop, future)

    def _step_forever(self) -> None:
        try:
            while True:
                self._add_incoming()
                if not self.engine.has_unfinished_requests():
                    self.wake.wait()
                    self.wake.clear()
                    continue
                for out in self.engine.step():
                    if out.finished:
                        loop, future = self.waiting.pop(out.request_id)
                        loop.call_soon_threadsafe(_resolve, future, out)
        except BaseException as e:  # the engine is broken: every row waiting or still coming fails (so the task)
            self.failed = e
            while True:
                for loop, future in list(self.waiting.values()):
                    loop.call_soon_threadsafe(_fail, future, e)
                self.waiting.clear()
                while not self.incoming.empty():
                    *_, loop, future = self.incoming.get()
                    loop.call_soon_threadsafe(_fail, future, e)
                self.wake.wait()
                self.wake.clear()

    def _submit(self, row: dict) -> tuple[dict, asyncio.Future]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = {**self.params, **self.row_sampling(row)} if self.row_sampling else self.params
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.failed:
            raise RuntimeError(f"the vLLM engine of this actor failed: {self.failed!r}")
        try:
            prompt = self.tokenizer.apply_chat_template(build_messages(row, self.cfg), tokenize=False,
                                                        add_generation_prompt=True)
            sampling = SamplingParams(**params, output_kind=RequestOutputKind.FINAL_ONLY)
        except Exception as e:  # this row's error
            future.set_result(e)
            return params, future
        self.incoming.put((str(next(_ids)), prompt, sampling, loop, future))
        self.wake.set()
        return params, future

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        submitted = [self._submit(row) for row in rows]
        outs = [await future for _, future in submitted]
        answers = [answer_row(params, out) for (params, _), out in zip(submitted, outs)]
        table = batch.select([c for c in CARRIED if c in batch.column_names])
        for name, kind in ANSWER_COLUMNS.items():  # typed: a batch of refused requests has no text to infer from
            table = table.append_column(pa.field(name, kind), pa.array([a[name] for a in answers], kind))
        return table


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


ANSWER_COLUMNS = {"response": pa.string(), "num_tokens": pa.int64(), "finish_reason": pa.string(),
                  "__inference_error__": pa.string()}


def answer_row(params: dict, out: Any) -> dict:
    """The answer columns ray.data.llm's path gives (`answering.answer_processor`) beside the carried fields:
    response, tokens, finish reason, and `__inference_error__` for a request the engine refused."""
    if isinstance(out, Exception):
        return {"response": None, "num_tokens": 0, "finish_reason": "error",
                "__inference_error__": f"{type(out).__name__}: {out}"}
    completion = out.outputs[0]
    n_tokens = len(completion.token_ids)
    # As the ray.data.llm path infers it, so the two paths store the same finish reasons.
    finish = "length" if n_tokens >= params["max_tokens"] else "stop"
    return {"response": completion.text, "num_tokens": n_tokens, "finish_reason": finish,
            "__inference_error__": ""}


def in_process_answerer(cfg: StudentConfig, row_sampling: Callable[[dict], dict] | None = None):
    """dataset -> answered dataset, one `InProcessEngine` actor per engine (`resources.concurrency`)."""
    import ray

    check_in_process(cfg)
    res = cfg.resources
    pool = res.concurrency if isinstance(res.concurrency, int) else tuple(res.concurrency)
    size = {"size": pool} if isinstance(pool, int) else {"min_size": pool[0], "max_size": pool[1]}
    gpu = {"num_gpus": 1} if res.use_gpu else {}

    def answer(ds):
        return ds.map_batches(
            InProcessEngine, fn_constructor_kwargs={"cfg": cfg, "row_sampling": row_sampling},
            batch_size=res.batch_size, batch_format="pyarrow", num_cpus=res.cpus_per_engine, **gpu,
            compute=ray.data.ActorPoolStrategy(**size, max_tasks_in_flight_per_actor=2 * res.max_concurrent_batches),
            max_concurrency=res.max_concurrent_batches)
    return answer

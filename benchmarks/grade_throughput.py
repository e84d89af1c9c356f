"""Grading throughput: the pipeline's answering and PRM stages against raw vLLM, on the same inputs.

Run: .venv/bin/python benchmarks/grade_throughput.py [--prompts 1024] [--max-tokens 512] [--models DIR] [--skip-prm]

Models: the tiny local student and PRM (`adaptcot.tiny_models`); engine args of configs/local.yaml's `grade` section
(float32, enforce_eager, max_model_len 1024 for the student, 2048 for the PRM), engine seed 0.
1. Answering, generated tokens/s. Baseline: `vllm.LLM.generate` over the chat-templated prompts with
   `SamplingParams(temperature, top_p, max_tokens, ignore_eos=True)`. `answer_processor` cannot pass `ignore_eos`,
   so its responses stop at EOS: both sides count the tokens they generated (len(token_ids) / num_tokens), and the
   same engine also runs generate() honouring EOS, the like-for-like baseline. Pipeline: `answer_processor(
   StudentConfig)` over a Ray dataset of pool-shaped rows, consumed fully.
2. PRM scoring, scored responses/s and PRM input tokens/s on (question, baseline response) rows. Baseline:
   `LLM(runner="pooling", pooler_config=PoolerConfig(step_tag_id)).encode(prompts, pooling_task="token_classify")`
   on the prompts `PRMScorer` builds; pipeline: `map_batches(PRMScorer)` with correct=False on every row. Tokens are
   the baseline's prompt token counts (same inputs).
"total" includes engine start (raw: import vllm and load; pipeline: building the dataset, starting its actors and
engines; not `ray.init`). "steady": raw times generate()/encode() alone; pipeline: the engine operator's wall time
from Ray Data's stats (it starts when the engine actor is ready). Each side runs in its own process, one after the
other (none competes for the 2 cores), with the same vLLM environment (ENV; also the Ray runtime env).
Prints each side and the ratio pipeline/raw (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# VLLM_CPU_OMP_THREADS_BIND only acts in vLLM's multiprocess executor; in-process engines ("uni" executor, also
# inside AsyncLLM's engine-core process) use OMP_NUM_THREADS threads, which Ray sets to 1 in actors of <= 1 CPU and
# vLLM to 1 when unset: pinned here, the same for both sides.
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
TEMPERATURE, TOP_P, SEED = 1.0, 1.0, 0
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024}
PRM_LEN, STEP_RULE = 2048, "double_newline"
# Pipeline settings. ray.data.llm builds an AsyncLLM, whose CPU defaults are the server's (max_num_seqs 128,
# max_num_batched_tokens 2048), not LLM's (256, 4096): set to LLM's for parity (no measurable effect on the tiny
# model). Student batch_size 32, 64 and 128 measured within noise; 1.5 CPUs of actors leave room for Ray Data tasks.
PIPELINE_ENGINE_EXTRA = {"max_num_seqs": 256, "max_num_batched_tokens": 4096}
CPUS_PER_ENGINE, CPUS_PER_LIGHT_STAGE, BATCH_SIZE = 1.0, 0.1, 32
BLOCK_ROWS = 8 * BATCH_SIZE  # input blocks a multiple of batch_size: no 1-row remainder batches
PRM_CPUS, PRM_BATCH_SIZE = 1.0, 256  # PRM batch 32 costs ~8% more than 256 (one encode() call per batch)


def student_cfg(model: str, max_tokens: int, extra: dict | None = None):
    from adaptcot.answering import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig

    return StudentConfig(model=model, sampling=SamplingConfig(temperature=TEMPERATURE, top_p=TOP_P,
                                                              max_tokens=max_tokens),
                         engine=EngineConfig(**ENGINE, seed=SEED, extra=extra or {}),
                         resources=ResourcesConfig(cpus_per_engine=CPUS_PER_ENGINE, batch_size=BATCH_SIZE,
                                                   cpus_per_light_stage=CPUS_PER_LIGHT_STAGE))


def raw_gen(a, rows):
    from adaptcot.answering import build_messages
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    llm = LLM(model=a.student, seed=SEED, **ENGINE)
    tok, cfg = llm.get_tokenizer(), student_cfg(a.student, a.max_tokens)
    prompts = [tok.apply_chat_template(build_messages(r, cfg), tokenize=False, add_generation_prompt=True)
               for r in rows]
    result = {"start": time.perf_counter() - t0}
    for key, ignore_eos in (("ignore_eos", True), ("eos", False)):
        t1 = time.perf_counter()
        outs = llm.generate(prompts, SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=a.max_tokens,
                                                    ignore_eos=ignore_eos), use_tqdm=False)
        result[key] = {"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "steady": time.perf_counter() - t1}
        if ignore_eos:
            result["prompt_tokens"] = sum(len(o.prompt_token_ids) for o in outs)
            Path(a.work, "responses.json").write_text(json.dumps(
                [{"question": r["question"], "response": o.outputs[0].text} for r, o in zip(rows, outs)]))
    return result


def raw_prm(a, rows):
    t0 = time.perf_counter()
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.config import PoolerConfig
    from adaptcot.prm_scoring import PRMConfig, PRMScorer, check_prm
    scorer = PRMScorer.__new__(PRMScorer)  # only its prompt builder, so both sides score the same prompts
    scorer.cfg, scorer.step_rule = PRMConfig(model=a.prm, max_model_len=PRM_LEN), STEP_RULE
    scorer.tokenizer = AutoTokenizer.from_pretrained(a.prm)
    llm = LLM(model=a.prm, runner="pooling", pooler_config=PoolerConfig(step_tag_id=check_prm(scorer.cfg)),
              seed=SEED, **{**ENGINE, "max_model_len": PRM_LEN})
    prompts = [scorer._prompt(r["question"], r["response"]) for r in rows]
    t1 = time.perf_counter()
    outs = llm.encode(prompts, pooling_task="token_classify", use_tqdm=False)
    t2 = time.perf_counter()
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    return {"rows": len(outs), "tokens": tokens, "total": t2 - t0, "steady": t2 - t1}


def operator_seconds(ds, udf: str) -> float:
    """Wall time of the operator running `udf`, from Ray Data's stats (starts once its actor is ready)."""
    return float(re.search(rf"MapBatches\({udf}\)[^:\n]*: [^\n]* in ([\d.]+)s", ds.stats()).group(1))


def pipeline(a, rows):
    import ray
    from adaptcot.answering import answer_processor
    from adaptcot.prm_scoring import PRMConfig, PRMScorer
    from adaptcot.runtime import configure_ray_data
    configure_ray_data()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": ENV})
    t0 = time.perf_counter()
    out = answer_processor(student_cfg(a.student, a.max_tokens, PIPELINE_ENGINE_EXTRA))(
        ray.data.from_items(rows, override_num_blocks=-(-len(rows) // BLOCK_ROWS)))
    n = tokens = 0
    for b in out.iter_batches(batch_format="pyarrow", batch_size=None):
        n, tokens = n + b.num_rows, tokens + sum(b["num_tokens"].to_pylist())
    result = {"gen": {"rows": n, "tokens": tokens, "total": time.perf_counter() - t0,
                      "steady": operator_seconds(out, "vLLMEngineStageUDF")}}
    if not a.skip_prm:
        items = [{**r, "correct": False} for r in json.loads(Path(a.work, "responses.json").read_text())]
        prm = PRMConfig(model=a.prm, max_model_len=PRM_LEN, dtype="float32", enforce_eager=True,
                        num_cpus=PRM_CPUS, batch_size=PRM_BATCH_SIZE)
        t0 = time.perf_counter()
        out = ray.data.from_items(items, override_num_blocks=-(-len(items) // PRM_BATCH_SIZE)).map_batches(
            PRMScorer, fn_constructor_kwargs={"cfg": prm, "aggregation": "min", "step_rule": STEP_RULE},
            concurrency=1, num_cpus=PRM_CPUS, batch_size=PRM_BATCH_SIZE, batch_format="pyarrow")
        scored = sum(sum(1 for s in b["step_scores"].to_pylist() if s is not None)
                     for b in out.iter_batches(batch_format="pyarrow", batch_size=None))
        result["prm"] = {"rows": scored, "total": time.perf_counter() - t0,
                         "steady": operator_seconds(out, "PRMScorer")}
    ray.shutdown()
    return result


def child(mode: str, a) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", a.work, "--max-tokens", str(a.max_tokens),
           "--models", a.models] + (["--skip-prm"] if a.skip_prm else [])
    proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--models", default="/tmp/adaptcot_bench_models")
    p.add_argument("--skip-prm", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    from adaptcot.tiny_models import build_tiny_models
    paths = build_tiny_models(a.models)
    a.student, a.prm = str(paths["student"]), str(paths["prm"])
    if a.child:  # one measured side, in its own process
        fn = {"raw_gen": raw_gen, "raw_prm": raw_prm, "pipeline": pipeline}[a.child]
        rows = json.loads(Path(a.work, "responses.json" if a.child == "raw_prm" else "rows.json").read_text())
        print(json.dumps(fn(a, rows)))
        return
    from adaptcot.synthetic import math_rows
    with tempfile.TemporaryDirectory() as work:
        a.work = work
        rows = [{"question_id": f"q{i}", "domain": "math", "question": r["question"],
                 "reference_answer": r["answer"].rsplit("####", 1)[1].strip(), "sample_index": 0}
                for i, r in enumerate(math_rows(a.prompts, seed=0))]
        Path(work, "rows.json").write_text(json.dumps(rows))
        raw = child("raw_gen", a)
        rprm = None if a.skip_prm else child("raw_prm", a)
        pipe = child("pipeline", a)
    gen = pipe["gen"]
    rate = lambda n, seconds: f"{n / seconds:7.0f} tok/s"  # noqa: E731
    print(f"answering: {a.prompts} prompts ({raw['prompt_tokens']} prompt tokens; pipeline answered {gen['rows']}), "
          f"max_tokens {a.max_tokens}, temperature {TEMPERATURE}, top_p {TOP_P}")
    base = {}
    for key, label in (("ignore_eos", "raw LLM.generate, ignore_eos"), ("eos", "raw LLM.generate, EOS honoured")):
        r, total = raw[key], raw["start"] + raw[key]["steady"]
        base[key] = (r["tokens"] / total, r["tokens"] / r["steady"])
        print(f"  {label:31} {r['tokens']:8} tokens  total {total:6.1f} s {rate(r['tokens'], total)} | "
              f"generate() {r['steady']:6.1f} s {rate(r['tokens'], r['steady'])}")
    pipe_rates = (gen["tokens"] / gen["total"], gen["tokens"] / gen["steady"])
    print(f"  {'pipeline answer_processor':31} {gen['tokens']:8} tokens  total {gen['total']:6.1f} s "
          f"{rate(gen['tokens'], gen['total'])} | engine op  {gen['steady']:5.1f} s "
          f"{rate(gen['tokens'], gen['steady'])}  [start-up ~{gen['total'] - gen['steady']:.0f} s]")
    for key, label in (("ignore_eos", "raw ignore_eos"), ("eos", "raw EOS honoured")):
        print(f"  ratio pipeline/{label}: {pipe_rates[0] / base[key][0]:.2f} incl. start, "
              f"{pipe_rates[1] / base[key][1]:.2f} steady (target >= 0.9)")
    if rprm:
        prm = pipe["prm"]
        print(f"PRM scoring: {rprm['rows']} responses, {rprm['tokens']} PRM input tokens")
        for label, r, tot, st in (("raw LLM.encode", rprm, rprm["total"], rprm["steady"]),
                                  ("pipeline PRMScorer", prm, prm["total"], prm["steady"])):
            print(f"  {label:19} {r['rows']:5} scored  total {tot:6.1f} s {r['rows'] / tot:7.1f} resp/s "
                  f"{rate(rprm['tokens'], tot)} | steady {st:6.1f} s {r['rows'] / st:7.1f} resp/s "
                  f"{rate(rprm['tokens'], st)}")
        print(f"  ratio pipeline/raw: {(prm['rows'] / prm['total']) / (rprm['rows'] / rprm['total']):.2f} incl. "
              f"start, {(prm['rows'] / prm['steady']) / (rprm['rows'] / rprm['steady']):.2f} steady (target >= 0.9)")


if __name__ == "__main__":
    main()

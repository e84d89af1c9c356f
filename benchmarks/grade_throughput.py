"""Grading throughput: the pipeline's answering and PRM stages against raw vLLM, on the same inputs.

Run: .venv/bin/python benchmarks/grade_throughput.py [--prompts 1024] [--max-tokens 512] [--heavy-tail]
     [--models DIR] [--skip-prm] [--repeats 3] [--smoke]

Models: the tiny local student and PRM (`adaptcot.demo.tiny_models`); engine args of configs/local.yaml's `grade`
section (float32, enforce_eager, max_model_len 1024 for the student, 2048 for the PRM), engine seed 0.
Rows: math questions in the pool's schema, expanded to one sample each by `todo.select_todo` (what the job's
todo stage feeds the engines: code tests as `tests_json`, `sample_index`, `sample_key`), so both sides answer the
rows the pipeline carries (`answering.CARRIED`).
Workloads: uniform (every answer max_tokens long) or --heavy-tail (every tenth row, by question id, answers
HEAVY_FACTOR x max_tokens: the long answers that keep a batch open after the rest of it is done; max_tokens
defaults to 256 there, so the long ones fit the tiny model's 4096 positions). Both sides sample with
`ignore_eos` (a `sampling` field the pipeline passes to vLLM), so each answer is exactly its max_tokens long and
both sides generate the same number of tokens.
1. Answering, generated tokens/s. Baseline: `vllm.LLM.generate` over the chat-templated prompts with one
   `SamplingParams(temperature, top_p, max_tokens of the row, ignore_eos=True)` per prompt. Pipeline, twice:
   `answerer.answerer(StudentConfig, row_sampling)` over a Ray dataset of those rows, consumed fully, with
   ray.data.llm's processor (the default) and with `engine.in_process` (vLLM in the actor's process).
2. PRM scoring, scored responses/s and PRM input tokens/s on (question, baseline response) rows. Baseline:
   `LLM(runner="pooling", pooler_config=PoolerConfig(step_tag_id)).encode(prompts, pooling_task="token_classify")`
   on the prompt texts `prm.prm_input` builds (what `PRMScorer` scores: the first steps that fit the PRM's
   context); pipeline: `map_batches(PRMScorer)` with correct=False on every row (it passes the engine token ids).
   Tokens are the baseline's prompt token counts (same inputs).
"total" includes engine start (raw: `from vllm import LLM` and load, in a process that has imported nothing heavy
before its clock starts, as a user's script; pipeline: building the dataset, starting its actors and engines; not
`ray.init`). "steady": raw times generate()/encode() alone; pipeline: the engine operator's wall time
from Ray Data's stats (it starts when the engine actor is ready; for the PRM it includes building the prompts,
which raw does before its clock starts). Each side runs in its own process, one after the other (none competes
for the 2 cores), with the same vLLM environment (ENV; also the Ray runtime env). Run to run, a side's time varies by
up to ~20% on this machine: each side runs --repeats times (default 3, in rotated order); a ratio is the median of
the repetitions' ratios (each repetition's sides ran one after the other).
Prints each side and the ratio pipeline/raw (target >= 0.9 including start-up, >= 0.95 steady).

Agreement, checked at every size (exit 1 with the disagreements listed): the pipeline answered every row exactly once
(by question id), with no engine error, each response exactly its row's max_tokens long; raw generated the same;
the PRM sides scored the same responses, with the same number of steps each and step scores equal within
PRM_TOLERANCE (the same model on the same prompts; only batching differs).
--smoke: 16 prompts, 32 tokens, heavy-tailed (two rows answer 320), models in a temporary directory (1-2 minutes):
checks that it runs and agrees, not its speed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# VLLM_CPU_OMP_THREADS_BIND only acts in vLLM's multiprocess executor; in-process engines ("uni" executor, also
# inside AsyncLLM's engine-core process) use OMP_NUM_THREADS threads, which Ray sets to 1 in actors of <= 1 CPU and
# vLLM to 1 when unset: pinned here, the same for both sides.
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
TEMPERATURE, TOP_P, SEED = 1.0, 1.0, 0
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024}
PRM_LEN, STEP_RULE = 2048, "double_newline"
TINY_POSITIONS = 4096  # the tiny models' max_position_embeddings
HEAVY_FACTOR, HEAVY_EVERY, HEAVY_MAX_TOKENS = 10, 10, 256  # --heavy-tail: every 10th row answers 10x max_tokens
# Pipeline settings. ray.data.llm builds an AsyncLLM, whose CPU defaults are the server's (max_num_seqs 128,
# max_num_batched_tokens 2048), not LLM's (256, 4096): set to LLM's for parity. In flight per engine: batch_size x
# max_concurrent_batches = 16 x 64 = 1024 rows, 4x max_num_seqs (the rest wait in ray.data.llm's queue, capped at
# 1.1x max_num_seqs in the engine): ray.data.llm returns a batch when its last row is done, and with a heavy tail
# nearly every batch of 16 waits on a long answer; at 16 x 24 the engine ran on the long answers alone for a while.
PIPELINE_ENGINE_EXTRA = {"max_num_seqs": 256, "max_num_batched_tokens": 4096}
CPUS_PER_ENGINE, CPUS_PER_LIGHT_STAGE, BATCH_SIZE, CONCURRENT_BATCHES = 1.0, 0.1, 16, 64
BLOCK_ROWS = 8 * BATCH_SIZE  # input blocks a multiple of batch_size: no 1-row remainder batches
PRM_CPUS, PRM_BATCH_SIZE = 1.0, 256  # PRM batch 32 costs ~8% more than 256 (one encode() call per batch)
PRM_TOLERANCE = 1e-3  # largest |raw - pipeline| of a step score (probabilities; float32, batching differs)
SMOKE = {"prompts": 16, "max_tokens": 32}
DEFAULT_MODELS = "/tmp/adaptcot_bench_models"


def row_max_tokens(question_id: str, max_tokens: int, heavy: bool) -> int:
    """A row's max_tokens: every HEAVY_EVERY-th question (q0, q10, ...) answers HEAVY_FACTOR x longer if heavy."""
    return max_tokens * HEAVY_FACTOR if heavy and int(question_id[1:]) % HEAVY_EVERY == 0 else max_tokens


def heavy_row_sampling(row: dict, max_tokens: int) -> dict:
    """The pipeline's `row_sampling` of the heavy-tailed workload."""
    return {"max_tokens": row_max_tokens(row["question_id"], max_tokens, True)}


def engine_len(a) -> int:
    """The student's max_model_len: ENGINE's, or room for the longest answer and the prompt (heavy tail)."""
    return max(ENGINE["max_model_len"], HEAVY_FACTOR * a.max_tokens + 512) if a.heavy_tail else ENGINE["max_model_len"]


def todo_rows(n: int) -> pa.Table:
    """n math questions in the pool's schema, expanded to one sample each as the job's todo stage does."""
    from adaptcot.common import schemas
    from adaptcot.demo.synthetic import math_rows
    from adaptcot.grade.answering import CARRIED
    from adaptcot.grade.todo import POOL_COLUMNS, select_todo

    pool = pa.Table.from_pylist(
        [{"question_id": f"q{i}", "domain": "math", "question": r["question"],
          "reference_answer": r["answer"].rsplit("####", 1)[1].strip(), "tests": None, "starter_code": None}
         for i, r in enumerate(math_rows(n, seed=0))],
        schema=pa.schema([schemas.POOL.field(c) for c in POOL_COLUMNS]))
    todo = select_todo(pool, 1)
    missing = [c for c in CARRIED if c not in todo.column_names]
    if missing:
        sys.exit(f"grade_throughput: the todo rows lack {missing}, which answering.CARRIED needs: build them as "
                 "grading.todo_dataset does")
    return todo


def student_cfg(model: str, max_tokens: int, max_model_len: int, extra: dict | None = None,
                in_process: bool = False):
    from adaptcot.grade.answering import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig

    return StudentConfig(model=model, sampling=SamplingConfig(temperature=TEMPERATURE, top_p=TOP_P,
                                                              max_tokens=max_tokens, ignore_eos=True),
                         engine=EngineConfig(**{**ENGINE, "max_model_len": max_model_len}, seed=SEED,
                                             extra=extra or {}, in_process=in_process),
                         resources=ResourcesConfig(cpus_per_engine=CPUS_PER_ENGINE, batch_size=BATCH_SIZE,
                                                   max_concurrent_batches=CONCURRENT_BATCHES,
                                                   cpus_per_light_stage=CPUS_PER_LIGHT_STAGE))


def raw_gen(a, rows):
    from adaptcot.grade.answering import build_messages
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    llm = LLM(model=a.student, seed=SEED, **{**ENGINE, "max_model_len": engine_len(a)})
    tok, cfg = llm.get_tokenizer(), student_cfg(a.student, a.max_tokens, engine_len(a))
    prompts = [tok.apply_chat_template(build_messages(r, cfg), tokenize=False, add_generation_prompt=True)
               for r in rows]
    params = [SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, ignore_eos=True,
                             max_tokens=row_max_tokens(r["question_id"], a.max_tokens, a.heavy_tail)) for r in rows]
    result = {"start": time.perf_counter() - t0}
    t1 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    result.update(tokens=sum(len(o.outputs[0].token_ids) for o in outs), steady=time.perf_counter() - t1,
                  prompt_tokens=sum(len(o.prompt_token_ids) for o in outs))
    Path(a.work, "responses.json").write_text(json.dumps(
        [{"index": i, "question": r["question"], "response": o.outputs[0].text}
         for i, (r, o) in enumerate(zip(rows, outs))]))
    return result


def raw_prm(a, rows):
    t0 = time.perf_counter()
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.config import PoolerConfig

    from adaptcot.grade.prm import PRMConfig, check_prm, prm_input
    cfg = PRMConfig(model=a.prm, max_model_len=PRM_LEN)
    tokenizer = AutoTokenizer.from_pretrained(a.prm)
    llm = LLM(model=a.prm, runner="pooling", pooler_config=PoolerConfig(step_tag_id=check_prm(cfg, tokenizer)),
              seed=SEED, **{**ENGINE, "max_model_len": PRM_LEN})
    # PRMScorer's input texts (first steps that fit the PRM's context), from the same public function
    t_prompts = time.perf_counter()
    prompts = [prm_input(tokenizer, r["question"], r["response"], cfg, STEP_RULE)[0] for r in rows]
    t_prompts = time.perf_counter() - t_prompts
    scored = [i for i, p in enumerate(prompts) if p]  # a response without steps is not scored (as in PRMScorer)
    t1 = time.perf_counter()
    outs = llm.encode([prompts[i] for i in scored], pooling_task="token_classify", use_tqdm=False)
    t2 = time.perf_counter()
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    Path(a.work, "raw_prm_scores.json").write_text(json.dumps(
        {rows[i]["index"]: o.outputs.data[:, 1].float().tolist() for i, o in zip(scored, outs)}))
    return {"rows": len(outs), "tokens": tokens, "total": t2 - t0, "steady": t2 - t1, "prompts": t_prompts}


def operator_seconds(ds, udf: str) -> float:
    """Wall time of the operator running `udf`, from Ray Data's stats (starts once its actor is ready)."""
    return float(re.search(rf"MapBatches\({udf}\)[^:\n]*: [^\n]* in ([\d.]+)s", ds.stats()).group(1))


def pipeline(a, rows):
    import ray

    from adaptcot.common.runtime import configure_ray_data
    from adaptcot.grade.answerer import answerer
    from adaptcot.grade.prm import PRMConfig, PRMScorer
    configure_ray_data()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": ENV})
    t0 = time.perf_counter()
    per_row = functools.partial(heavy_row_sampling, max_tokens=a.max_tokens) if a.heavy_tail else None
    cfg = student_cfg(a.student, a.max_tokens, engine_len(a), PIPELINE_ENGINE_EXTRA, a.in_process)
    out = answerer(cfg, per_row)(
        ray.data.from_arrow([rows.slice(i, BLOCK_ROWS) for i in range(0, rows.num_rows, BLOCK_ROWS)]))
    built = time.perf_counter() - t0  # the processor built in the driver (imports vLLM), nothing run yet
    n = tokens = 0
    answers = []  # (question id, tokens, engine error) per answered row, checked against the rows by the parent
    for b in out.iter_batches(batch_format="pyarrow", batch_size=None):
        counts = [c or 0 for c in b["num_tokens"].to_pylist()]
        n, tokens = n + b.num_rows, tokens + sum(counts)
        errors = b["__inference_error__"].to_pylist() if "__inference_error__" in b.column_names \
            else [None] * b.num_rows
        answers += zip(b["question_id"].to_pylist(), counts, errors)
    result = {"gen": {"rows": n, "tokens": tokens, "total": time.perf_counter() - t0, "build": built,
                      "steady": operator_seconds(out, "InProcessEngine" if a.in_process else "vLLMEngineStageUDF")}}
    Path(a.work, answers_file(a.in_process)).write_text(json.dumps(answers))
    if not a.skip_prm:
        items = [{**r, "correct": False} for r in json.loads(Path(a.work, "responses.json").read_text())]
        prm = PRMConfig(model=a.prm, max_model_len=PRM_LEN, dtype="float32", enforce_eager=True,
                        num_cpus=PRM_CPUS, batch_size=PRM_BATCH_SIZE)
        t0 = time.perf_counter()
        out = ray.data.from_items(items, override_num_blocks=-(-len(items) // PRM_BATCH_SIZE)).map_batches(
            PRMScorer, fn_constructor_kwargs={"cfg": prm, "aggregation": "min", "step_rule": STEP_RULE},
            concurrency=1, num_cpus=PRM_CPUS, batch_size=PRM_BATCH_SIZE, batch_format="pyarrow")
        scores = {}
        for b in out.iter_batches(batch_format="pyarrow", batch_size=None):
            scores.update((i, s) for i, s in zip(b["index"].to_pylist(), b["step_scores"].to_pylist())
                          if s is not None)
        result["prm"] = {"rows": len(scores), "total": time.perf_counter() - t0,
                         "steady": operator_seconds(out, "PRMScorer")}
        Path(a.work, "pipeline_prm_scores.json").write_text(json.dumps(scores))
    ray.shutdown()
    return result


def answers_file(in_process: bool) -> str:
    return "pipeline_answers_in_process.json" if in_process else "pipeline_answers.json"


def child(mode: str, a, in_process: bool = False, prm: bool = False) -> dict:
    """One side in a fresh process given the models' paths, so nothing (torch, transformers) is imported before
    its clock starts: raw's start-up is a user's `from vllm import LLM` and load."""
    cmd = [sys.executable, __file__, "--child", mode, "--work", a.work, "--max-tokens", str(a.max_tokens),
           "--student", a.student, "--prm", a.prm] + (["--skip-prm"] if a.skip_prm or not prm else []) + \
        (["--heavy-tail"] if a.heavy_tail else []) + (["--in-process"] if in_process else [])
    proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def disagreements(a, raw: dict, work: str, label: str, in_process: bool = False, check_prm: bool = False) -> list[str]:
    """What the two sides do not agree on (see the module docstring); empty when they agree. The in-process
    pipeline's answers are checked; the PRM only once (the ray.data.llm run scores)."""
    problems = []
    expected = [f"q{i}" for i in range(a.prompts)]
    answers = json.loads(Path(work, answers_file(in_process)).read_text())
    answered = sorted(q for q, _, _ in answers)
    if answered != sorted(expected):
        missing, extra = sorted(set(expected) - set(answered)), len(answered) - len(set(answered))
        problems.append(f"answering ({label}): the pipeline answered {len(answered)} rows for {a.prompts} prompts "
                        f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, {extra} answered twice)")
    errors = [(q, e) for q, _, e in answers if e]
    if errors:
        problems.append(f"answering ({label}): {len(errors)} pipeline rows are engine errors, e.g. {errors[0][0]}: "
                        f"{errors[0][1][:300]}")
    bad_lengths = [(q, t, row_max_tokens(q, a.max_tokens, a.heavy_tail)) for q, t, e in answers
                   if not e and t != row_max_tokens(q, a.max_tokens, a.heavy_tail)]
    if bad_lengths:
        problems.append(f"answering ({label}): {len(bad_lengths)} pipeline responses are not their max_tokens long "
                        f"(ignore_eos), e.g. (question, tokens, max_tokens) {bad_lengths[:3]}")
    expected_tokens = sum(row_max_tokens(q, a.max_tokens, a.heavy_tail) for q in expected)
    if raw["tokens"] != expected_tokens:
        problems.append(f"answering: raw generated {raw['tokens']} tokens, not the {expected_tokens} asked for")
    if not check_prm:
        return problems
    raw_scores = json.loads(Path(work, "raw_prm_scores.json").read_text())
    pipe_scores = json.loads(Path(work, "pipeline_prm_scores.json").read_text())
    if raw_scores.keys() != pipe_scores.keys():
        only_raw = sorted(raw_scores.keys() - pipe_scores.keys())
        only_pipe = sorted(pipe_scores.keys() - raw_scores.keys())
        problems.append(f"PRM: raw scored {len(raw_scores)} responses, the pipeline {len(pipe_scores)} (only raw: "
                        f"{only_raw[:5]}, only pipeline: {only_pipe[:5]})")
    if not raw_scores:
        problems.append("PRM: no response was scored")
    steps = [i for i in raw_scores.keys() & pipe_scores.keys() if len(raw_scores[i]) != len(pipe_scores[i])]
    if steps:
        i = steps[0]
        problems.append(f"PRM: {len(steps)} responses have a different number of step scores, e.g. response {i}: "
                        f"raw {len(raw_scores[i])}, pipeline {len(pipe_scores[i])}")
    diffs = [(abs(x - y), i) for i in raw_scores.keys() & pipe_scores.keys()
             for x, y in zip(raw_scores[i], pipe_scores[i])]
    worst = max(diffs, default=(0.0, None))
    print(f"PRM agreement: {len(diffs)} step scores, largest |raw - pipeline| {worst[0]:.2e}")
    if worst[0] > PRM_TOLERANCE:
        problems.append(f"PRM: step scores differ by up to {worst[0]:.3g} (response {worst[1]}; tolerance "
                        f"{PRM_TOLERANCE}), {sum(d > PRM_TOLERANCE for d, _ in diffs)} of {len(diffs)} beyond it")
    return problems


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None, help=f"tokens per answer (default 512; --heavy-tail: "
                                                                 f"{HEAVY_MAX_TOKENS}, the long ones x{HEAVY_FACTOR})")
    p.add_argument("--heavy-tail", action="store_true", help=f"every {HEAVY_EVERY}th answer {HEAVY_FACTOR}x longer")
    p.add_argument("--models", default=None, help=f"where the tiny models are built (default {DEFAULT_MODELS}; "
                                                  "--smoke: a temporary directory)")
    p.add_argument("--skip-prm", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side (medians reported; --smoke: 1)")
    p.add_argument("--smoke", action="store_true", help=f"a small run ({SMOKE}) that checks the sides agree")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--student", help=argparse.SUPPRESS)
    p.add_argument("--prm", help=argparse.SUPPRESS)
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.smoke:
        a.prompts, a.max_tokens, a.heavy_tail, a.repeats = SMOKE["prompts"], SMOKE["max_tokens"], True, 1
    a.max_tokens = a.max_tokens or (HEAVY_MAX_TOKENS if a.heavy_tail else 512)
    if engine_len(a) > TINY_POSITIONS:
        sys.exit(f"grade_throughput: answers of {engine_len(a) - 512} tokens do not fit the tiny models' "
                 f"{TINY_POSITIONS} positions; lower --max-tokens")
    if a.child:  # one measured side, in its own process
        fn = {"raw_gen": raw_gen, "raw_prm": raw_prm, "pipeline": pipeline}[a.child]
        if a.child == "raw_prm":
            rows = json.loads(Path(a.work, "responses.json").read_text())
        else:
            rows = pq.read_table(Path(a.work, "rows.parquet"))
            rows = rows.to_pylist() if a.child == "raw_gen" else rows
        print(json.dumps(fn(a, rows)))
        return
    sides = {"raw": ("raw_gen", False), "ray.data.llm": ("pipeline", False), "in_process": ("pipeline", True)}
    runs = {side: [] for side in sides}  # per repetition, each side's result
    problems, rprm, pipe_prm = [], None, None
    with tempfile.TemporaryDirectory() as work:
        a.work = work
        a.models = a.models or (str(Path(work, "models")) if a.smoke else DEFAULT_MODELS)
        from adaptcot.demo.tiny_models import build_tiny_models
        paths = build_tiny_models(a.models)
        a.student, a.prm = str(paths["student"]), str(paths["prm"])
        pq.write_table(todo_rows(a.prompts), Path(work, "rows.parquet"))
        for rep in range(a.repeats):
            # Rotated each repetition, so no side always runs first or right after the same other side. The PRM runs
            # once, with the first ray.data.llm side (after raw, which writes the responses it scores).
            order = list(sides)[rep % len(sides):] + list(sides)[:rep % len(sides)]
            for side in order:
                mode, in_process = sides[side]
                result = child(mode, a, in_process, prm=rep == 0 and mode == "pipeline" and not in_process)
                runs[side].append(result if mode == "raw_gen" else result["gen"])
                if "prm" in result:
                    pipe_prm = result["prm"]
            if rep == 0 and not a.skip_prm:
                rprm = child("raw_prm", a)
            raw = runs["raw"][-1]
            problems += disagreements(a, raw, work, "ray.data.llm", check_prm=rprm is not None and rep == 0) + \
                disagreements(a, raw, work, "in-process", in_process=True)
    for r in runs["raw"]:
        r["total"] = r["start"] + r["steady"]
    rate = lambda n, seconds: f"{n / seconds:7.0f} tok/s"  # noqa: E731
    med = lambda side, key: statistics.median(r[key] for r in runs[side])  # noqa: E731
    workload = (f"heavy tail: every {HEAVY_EVERY}th answer {HEAVY_FACTOR * a.max_tokens} tokens, the others "
                f"{a.max_tokens}" if a.heavy_tail else f"{a.max_tokens} tokens each")
    raw = runs["raw"][0]
    print(f"answering: {a.prompts} prompts ({raw['prompt_tokens']} prompt tokens), {workload} (ignore_eos), "
          f"temperature {TEMPERATURE}, top_p {TOP_P}; each side run {a.repeats}x in rotated order: medians of times, "
          "and ratios as the median of each repetition's")
    tokens = raw["tokens"]
    print(f"  {'raw LLM.generate':26} {tokens:8} tokens  total {med('raw', 'total'):6.1f} s "
          f"{rate(tokens, med('raw', 'total'))} | generate() {med('raw', 'steady'):6.1f} s "
          f"{rate(tokens, med('raw', 'steady'))}  [start-up ~{med('raw', 'start'):.0f} s]")
    for side in ("ray.data.llm", "in_process"):
        total, steady = med(side, "total"), med(side, "steady")
        print(f"  {'pipeline, ' + side:26} {tokens:8} tokens  total {total:6.1f} s {rate(tokens, total)} | "
              f"engine op  {steady:6.1f} s {rate(tokens, steady)}  [start-up ~{total - steady:.0f} s, of it "
              f"{med(side, 'build'):.0f} s building the stage]")
    for side in ("ray.data.llm", "in_process"):
        # Tokens are equal on every side (checked): the ratio of rates is the ratio of times. A repetition's sides ran
        # back to back, repetitions minutes apart: each repetition's ratio counts, not medians of different ones.
        incl = [r["total"] / s["total"] for r, s in zip(runs["raw"], runs[side])]
        steady = [r["steady"] / s["steady"] for r, s in zip(runs["raw"], runs[side])]
        print(f"  ratio pipeline/raw, {side:12}: {statistics.median(incl):.2f} incl. start, "
              f"{statistics.median(steady):.2f} steady (target >= 0.9 incl. start, >= 0.95 steady)"
              + (f"; per repetition {' '.join(f'{x:.2f}' for x in incl)} incl., "
                 f"{' '.join(f'{x:.2f}' for x in steady)} steady" if a.repeats > 1 else ""))
    if rprm:
        prm = pipe_prm
        print(f"PRM scoring: {rprm['rows']} responses, {rprm['tokens']} PRM input tokens (raw built its prompts in "
              f"{rprm['prompts']:.1f} s, before its steady clock)")
        for label, r, tot, st in (("raw LLM.encode", rprm, rprm["total"], rprm["steady"]),
                                  ("pipeline PRMScorer", prm, prm["total"], prm["steady"])):
            print(f"  {label:19} {r['rows']:5} scored  total {tot:6.1f} s {r['rows'] / tot:7.1f} resp/s "
                  f"{rate(rprm['tokens'], tot)} | steady {st:6.1f} s {r['rows'] / st:7.1f} resp/s "
                  f"{rate(rprm['tokens'], st)}")
        print(f"  ratio pipeline/raw: {(prm['rows'] / prm['total']) / (rprm['rows'] / rprm['total']):.2f} incl. "
              f"start, {(prm['rows'] / prm['steady']) / (rprm['rows'] / rprm['steady']):.2f} steady "
              f"(target >= 0.9 incl. start, >= 0.95 steady)")
    if problems:
        sys.exit("grade_throughput: the pipeline and raw vLLM disagree:\n  " + "\n  ".join(problems))
    print("agreement: the pipeline answered every row once, without errors"
          + ("" if a.skip_prm else "; both PRM sides scored the same responses alike"))


if __name__ == "__main__":
    main()

"""SFT throughput: the project's Ray Train job against a plain single-process torch loop, same model, data and batches.

Run: .venv/bin/python benchmarks/sft_throughput.py [--records 256] [--steps 40] [--batch 16] [--model teacher]
(about 4 minutes on 2 CPU cores.) RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is as the project sets it (1 s).

Data: --records synthetic SFT records (multi-step arithmetic with a random number of steps, so lengths vary from
~60 to ~400 tokens), in the SFT records schema. Model: one of the tiny local models (`adaptcot.tiny_models`),
fine-tuned in float32 on the CPU.

- project: `adaptcot.sft_train.train` on a local Ray cluster: one Ray Train worker with 2 CPUs and 2 torch threads,
  transformers' Trainer with our collator and loss, --batching batches (default grouped) of --batch examples,
  --steps optimizer steps,
  a metrics line (and `ray.train.report`) every 5 steps, no checkpoint before the final export. Its steady rate covers
  the windows after the first two (their tokens over their time, from the per-window `tokens_per_s`); the end-to-end
  rate (worker start, model load, export included) is printed beside it.
- baseline: in this process after Ray is shut down, 2 torch threads, the same model loaded fresh, the same example
  order (`prepare`), the same batches (`SFTCollator`), AdamW at the same learning rate: forward with labels,
  backward, clip, step, zero_grad, for the same number of steps; timed after the same first 10 steps. It runs for
  each of plain, grouped and packed batching; the one matching --batching gives the ratio.
The loop matching --batching also runs once while the (idle) Ray cluster is still up: on 2 cores Ray's own
processes (raylet, GCS, the Train controller) take ~15-20% of a training loop's throughput (measured: 8.5k vs
10.4k tokens/s), a cost of the machine's size, not of the job. The target 0.9 is checked against that matched
baseline; the ratio against the loop with Ray down is printed too. Also printed: the padding fraction of the same
data and batch size under each batching. Exits 1 if the project's run did not train the requested steps.
Rates count non-pad tokens. On the CPU a packed row (one block-masked sequence) is slower than grouped padding:
sdpa computes attention over the whole packed length; packing pays off with flash-attention's varlen kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TARGET = 0.9
WINDOW = 5  # steps per metrics line
WARM_UP = 2  # windows both sides leave out: the Ray side ramps up over its first ~10 steps (measured)
THREADS = 2

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--records", type=int, default=256)
parser.add_argument("--steps", type=int, default=80)
parser.add_argument("--batch", type=int, default=16, help="examples per micro-batch")
parser.add_argument("--model", default="teacher", choices=["student", "teacher"], help="which tiny model")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--batching", default="grouped", choices=["grouped", "packed", "plain"],
                    help="the project's batching (the baseline uses the same batches)")


def records(n: int, seed: int) -> pa.Table:
    from adaptcot.schemas import SFT_RECORDS

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        value, steps = rng.randint(1, 50), []
        for _ in range(rng.choice([1, 2, 3, 6, 12, 24])):
            x = rng.randint(1, 30)
            steps.append(f"{value} + {x} = {value + x}.")
            value += x
        question = f"Start at {steps[0].split()[0]} and apply the additions. What is the result?"
        reply = "<think>\n" + "\n".join(steps) + f"\n</think>\n\nThe answer is \\boxed{{{value}}}."
        rows.append({"record_id": f"r{i}", "question_id": f"q{i}", "kind": "cot", "cot_id": f"c{i}",
                     "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                     "level": "wrong_mid", "teacher": "bench"})
    return pa.Table.from_pylist(rows, schema=SFT_RECORDS)


def train_config(model: str, a, **kw):
    from adaptcot.sft_train import TrainConfig

    base = dict(model=model, max_seq_len=1024, per_device_batch_size=a.batch, epochs=8, max_steps=a.steps,
                learning_rate=1e-4, lr_scheduler="constant", warmup_ratio=0.0, logging_steps=WINDOW,
                save_steps=10 * a.steps, num_workers=1, cpus_per_worker=float(THREADS), torch_threads=THREADS,
                seed=a.seed, batching=a.batching)
    return TrainConfig(**{**base, **kw})


def plain_loop(model_dir: str, order: pa.Table, cfg, packed: bool) -> tuple[float, int]:
    """tokens/s of a bare torch training loop over the same batches, after the warm-up steps; and its steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptcot.sft_train import OrderDataset, SFTCollator

    torch.set_num_threads(THREADS)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    dataset, collate = OrderDataset(order), SFTCollator(tokenizer.pad_token_id or 0, packed=packed)
    b = cfg.per_device_batch_size
    tokens, started = 0, None
    for step in range(cfg.max_steps):
        if step == WINDOW * WARM_UP:
            started = time.perf_counter()
        batch = collate([dataset[i] for i in range(step * b, step * b + b)])
        batch.pop("token_kind")
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WINDOW * WARM_UP:
            tokens += real
    return tokens / (time.perf_counter() - started), cfg.max_steps


def main() -> None:
    a = parser.parse_args()
    import ray
    from transformers import AutoTokenizer

    from adaptcot.runtime import set_cpu_env_defaults
    from adaptcot.sft_train import prepare, train
    from adaptcot.tiny_models import build_tiny_models

    env = set_cpu_env_defaults()
    problems = []
    with tempfile.TemporaryDirectory(prefix="sft_bench_") as tmp:
        work = Path(tmp)
        model_dir = str(build_tiny_models(work / "models")[a.model])
        data = work / "sft_records.parquet"
        table = records(a.records, a.seed)
        pq.write_table(table, data)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        cfg = train_config(model_dir, a)
        if a.records * 8 < a.steps * a.batch:
            sys.exit(f"--records x 8 epochs must cover --steps x --batch examples")
        padding = {b: prepare(table, tokenizer, train_config(model_dir, a, batching=b))[1] for b in
                   ("plain", "grouped", "packed")}
        orders = {b: prepare(table, tokenizer, train_config(model_dir, a, batching=b))[0]
                  for b in ("plain", "grouped", "packed")}
        order = orders[a.batching]
        print(f"{a.records} records, {padding['packed'].tokens} tokens, longest {padding['packed'].max_len}; "
              f"tiny {a.model}; {a.steps} steps of {a.batch} examples; {THREADS} torch threads; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)

        ray.init(address="local", num_cpus=THREADS, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})
        try:
            report = train(cfg, str(data), str(work / "out"))
            # The same loop with the (now idle) Ray cluster still up: Ray's own processes share the 2 cores.
            with_ray = plain_loop(model_dir, order, cfg, packed=a.batching == "packed")[0]
        finally:
            ray.shutdown()
        rows = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
        if report.global_step != a.steps:
            problems.append(f"the Ray Train job ran {report.global_step} steps, not {a.steps}")
        # Steady state = the same steps the baseline times (after the warm-up windows): each window's time is its
        # tokens (known from the order) over its logged rate.
        lengths = [len(x) for x in order["input_ids"].to_pylist()]
        window_tokens = [sum(lengths[w * WINDOW * a.batch:(w + 1) * WINDOW * a.batch]) for w in range(len(rows))]
        steady = list(zip(window_tokens, rows))[WARM_UP:]
        project = sum(t for t, _ in steady) / sum(t / r["tokens_per_s"] for t, r in steady) if steady else float("nan")
        trained_tokens = sum(lengths[:a.steps * a.batch])
        end_to_end = trained_tokens / report.seconds
        print(f"project: steady {project:.0f} tokens/s (windows {[round(r['tokens_per_s']) for r in rows]}), "
              f"end to end {end_to_end:.0f} tokens/s ({report.seconds:.1f} s incl. Ray worker start and export)",
              flush=True)
        loops = {b: plain_loop(model_dir, orders[b], cfg, packed=b == "packed")[0] for b in orders}
        baseline = loops[a.batching]
        print(f"baseline: {', '.join(f'{b} {v:.0f}' for b, v in loops.items())} tokens/s; {a.batching} with the "
              f"idle Ray cluster up {with_ray:.0f}; load average {os.getloadavg()[0]:.1f}", flush=True)

    print(f"\n{'side':<40} {'tokens/s':>10}")
    print(f"{'Ray Train job, ' + a.batching + ' (steady)':<40} {project:10.0f}")
    print(f"{'Ray Train job (end to end)':<40} {end_to_end:10.0f}")
    print(f"{'plain torch loop, ' + a.batching + ', idle Ray up':<40} {with_ray:10.0f}")
    for b, value in loops.items():
        print(f"{'plain torch loop, ' + b + ', Ray down':<40} {value:10.0f}")
    print(f"\npadding fraction: plain {padding['plain'].padding_fraction:.3f}, grouped "
          f"{padding['grouped'].padding_fraction:.3f}, packed {padding['packed'].padding_fraction:.3f}")
    print(f"ratio Ray Train / plain loop with Ray down: {project / baseline:.3f} (Ray's idle processes included)")
    ratio = project / with_ray
    print(f"ratio Ray Train / plain loop beside the same idle Ray: {ratio:.3f} {'meets' if ratio >= TARGET else 'MISSES'} "
          f"the target >= {TARGET}")
    if problems:
        print("problems:\n  " + "\n  ".join(problems))
        sys.exit(1)


if __name__ == "__main__":
    main()

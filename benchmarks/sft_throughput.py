"""SFT throughput: the project's Ray Train job against a plain single-process torch loop, same model, data and batches.

Run: .venv/bin/python benchmarks/sft_throughput.py [--records 256] [--steps 80] [--batch 16] [--model teacher]
     [--batching grouped] [--smoke]
(about 4 minutes on 2 CPU cores.) RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is as the project sets it (1 s).

Data: --records synthetic SFT records (multi-step arithmetic with a random number of steps, so lengths vary from
~60 to ~400 tokens), in the SFT records schema. Model: one of the tiny local models (`adaptcot.demo.tiny_models`),
fine-tuned in float32 on the CPU.

- project: `adaptcot.sft.ray_train.train` on a local Ray cluster: one Ray Train worker with 2 CPUs and 2 torch threads,
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
data and batch size under each batching.
Agreement (exit 1 with the disagreements listed): the project's run trained the requested steps, and each of its
logging windows has the padding fraction (same batches) and, within LOSS_TOLERANCE, the mean loss (same model, data,
optimizer and updates) of the same window of the baseline loop with the same batching (Ray down).
--smoke: 32 records, 15 steps of 4 examples on the tiny student (about a minute): checks that it runs and agrees,
not its speed.
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
LOSS_TOLERANCE = 1e-3  # relative: same math on both sides, float32 reductions in another order
SMOKE = {"records": 32, "steps": 15, "batch": 4, "model": "student"}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--records", type=int, default=256)
parser.add_argument("--steps", type=int, default=80)
parser.add_argument("--batch", type=int, default=16, help="examples per micro-batch")
parser.add_argument("--model", default="teacher", choices=["student", "teacher"], help="which tiny model")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--batching", default="grouped", choices=["grouped", "packed", "plain"],
                    help="the project's batching (the baseline uses the same batches)")
parser.add_argument("--smoke", action="store_true", help=f"a small run ({SMOKE}) that checks the sides agree")


def records(n: int, seed: int) -> pa.Table:
    from adaptcot.common.schemas import SFT_RECORDS

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
    from adaptcot.sft.train_config import TrainConfig

    base = dict(model=model, max_seq_len=1024, per_device_batch_size=a.batch, epochs=8, max_steps=a.steps,
                learning_rate=1e-4, lr_scheduler="constant", warmup_ratio=0.0, logging_steps=WINDOW,
                save_steps=10 * a.steps, num_workers=1, cpus_per_worker=float(THREADS), torch_threads=THREADS,
                seed=a.seed, batching=a.batching)
    return TrainConfig(**{**base, **kw})


def plain_loop(model_dir: str, order: pa.Table, cfg, packed: bool) -> tuple[float, list[dict]]:
    """tokens/s of a bare torch training loop over the same batches, after the warm-up steps; and per logging
    window (WINDOW steps, as the project logs them) its mean loss and padding fraction."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptcot.sft.trainer import OrderDataset, SFTCollator

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
    windows, losses, fed, pad = [], [], 0, 0
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
        losses.append(float(loss.detach()))  # for the agreement check (a float per step: nothing on the CPU)
        fed, pad = fed + batch["input_ids"].numel(), pad + batch["input_ids"].numel() - real
        if (step + 1) % WINDOW == 0:
            windows.append({"loss": sum(losses) / len(losses), "padding_fraction": round(pad / fed, 4)})
            losses, fed, pad = [], 0, 0
    return tokens / (time.perf_counter() - started), windows


def disagreements(project_windows: list[dict], loop_windows: list[dict]) -> list[str]:
    """Windows where the Ray Train job and the plain loop (same batching) differ in padding or mean loss."""
    problems = []
    if len(project_windows) != len(loop_windows):
        problems.append(f"the Ray Train job logged {len(project_windows)} windows, the loop {len(loop_windows)}")
    for w, (p, q) in enumerate(zip(project_windows, loop_windows)):
        steps = f"steps {w * WINDOW + 1}-{(w + 1) * WINDOW}"
        if p["padding_fraction"] != q["padding_fraction"]:
            problems.append(f"{steps}: padding fraction {p['padding_fraction']} (Ray Train) != "
                            f"{q['padding_fraction']} (loop): not the same batches")
        if abs(p["loss"] - q["loss"]) > LOSS_TOLERANCE * abs(q["loss"]):
            problems.append(f"{steps}: mean loss {p['loss']:.5f} (Ray Train) != {q['loss']:.5f} (loop), beyond "
                            f"{LOSS_TOLERANCE:.0e} relative")
    return problems


def main() -> None:
    a = parser.parse_args()
    if a.smoke:
        a.records, a.steps, a.batch, a.model = SMOKE["records"], SMOKE["steps"], SMOKE["batch"], SMOKE["model"]
    if a.steps <= WINDOW * WARM_UP:
        sys.exit(f"--steps must be more than the {WINDOW * WARM_UP} warm-up steps")
    import ray
    from transformers import AutoTokenizer

    from adaptcot.common.runtime import set_cpu_env_defaults
    from adaptcot.demo.tiny_models import build_tiny_models
    from adaptcot.sft.order import prepare
    from adaptcot.sft.ray_train import train

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
            report = train(cfg.model_copy(update={"data": str(data), "out": str(work / "out")}))
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
        runs = {b: plain_loop(model_dir, orders[b], cfg, packed=b == "packed") for b in orders}
        loops = {b: rate for b, (rate, _) in runs.items()}
        baseline = loops[a.batching]
        matched = runs[a.batching][1]
        print(f"agreement, {a.batching}: per window, loss Ray Train {[round(r['loss'], 4) for r in rows]} vs loop "
              f"{[round(r['loss'], 4) for r in matched]}; padding {[r['padding_fraction'] for r in rows]} vs "
              f"{[r['padding_fraction'] for r in matched]}", flush=True)
        problems += disagreements(rows, matched)
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
        sys.exit("sft_throughput: the Ray Train job and the plain loop disagree:\n  " + "\n  ".join(problems))
    print("agreement: the Ray Train job trained the requested steps on the loop's batches, with the loop's losses")


if __name__ == "__main__":
    main()

"""SFT throughput: the project's Ray Train job against a plain single-process torch loop, same model, data and batches.

Run: .venv/bin/python benchmarks/sft_throughput.py [--records 256] [--steps 60] [--batch 8] [--batching packed]
     [--threads 1] [--model student] [--models DIR] [--no-ddp] [--no-plain-run]
(about 3-4 minutes on 2 idle CPU cores; ~1.5 min of it is Ray start-up, worker start-up and the final exports.)

Data: --records synthetic SFT records (schema SFT_RECORDS, kind "cot"): arithmetic word problems answered by a
chain of 1 to 24 addition steps, so the lengths vary from ~60 to ~400 tokens and padding matters. Model: the tiny
local student (`adaptcot.tiny_models`, built into a temp dir or --models DIR), float32 on the CPU. Both sides use
the same TrainConfig: --batch examples per micro-batch, no gradient accumulation, AdamW at lr 1e-4 with a constant
schedule, no weight decay, gradient clipping at 1.0, and the example order `sft_train.prepare` makes.

- project: `adaptcot.sft_train.train` (transformers' Trainer inside a Ray Train TorchTrainer) on
  `ray.init(num_cpus=2)` with the project's CPU env defaults (`runtime.set_cpu_env_defaults`, passed to the workers
  through runtime_env), one worker with --threads CPUs and --threads torch threads (TrainConfig.torch_threads; a
  1-CPU Ray worker gets OMP_NUM_THREADS=1 anyway, printed), --batching batches, --steps optimizer steps, a
  metrics line and `ray.train.report` every 5 steps, save_steps beyond --steps (no checkpoint but the final export).
  Steady rate: non-pad tokens over time of the logging windows after the first --warmup-windows (each window's
  time = its tokens, known from the order, over the `tokens_per_s` it logged in metrics.jsonl; a window's time
  includes the previous window's metrics report). End-to-end rate: all trained tokens over `train_report.json`
  seconds (tokenising, Ray Train worker start, model load, export included). The ratio uses the steady rate.
- baseline: in this process with Ray down, torch.set_num_threads(--threads), the model loaded fresh from the same
  directory, use_cache off, batches from `SFTCollator` over `OrderDataset(order)` (the same batches), then
  forward with labels, backward, clip_grad_norm_, AdamW step, zero_grad, for --steps steps, timed after the same
  warm-up steps. Run before AND after the project's job (drift on a shared machine shows as a gap between the
  two); the ratio uses their mean. Run again with plain and grouped batching to show what packing buys.
- extra rows: the same job with 2 workers x 0.5 CPU, 1 torch thread each (DDP over gloo; --no-ddp skips it), and a
  short job with plain batching whose measured padding fraction is checked against the prediction (--no-plain-run
  skips it). Also printed: `DataReport.padding_fraction` of the dataset for plain, grouped and packed batching.

Checks (exit 1): the job trained --steps steps, its stored example order is the one the baseline used, its logged
loss per window matches the baseline's (same work, same numbers; 1% tolerance), and the plain job's measured
padding fraction is the predicted one. Rates count non-pad tokens. The 1-minute load average is printed before and
after: above ~2 other processes share the 2 cores and the rates are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TARGET = 0.9
WINDOW = 5  # steps per metrics line (logging_steps)
LOSS_TOLERANCE = 0.01  # relative, per logging window

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--records", type=int, default=256)
parser.add_argument("--steps", type=int, default=60, help="optimizer steps, both sides (a multiple of 5)")
parser.add_argument("--batch", type=int, default=8, help="examples per micro-batch")
parser.add_argument("--batching", default="packed", choices=["packed", "grouped", "plain"],
                    help="the project's batching (the baseline uses the same batches)")
parser.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) of the single worker")
parser.add_argument("--warmup-windows", type=int, default=1, help="logging windows of 5 steps left out, both sides")
parser.add_argument("--model", default="student", choices=["student", "teacher"], help="which tiny model")
parser.add_argument("--models", default=None, help="where to build (or find) the tiny models; default a temp dir")
parser.add_argument("--no-ddp", action="store_true", help="skip the 2 workers x 0.5 CPU job")
parser.add_argument("--no-plain-run", action="store_true", help="skip the short plain-batching job")
parser.add_argument("--seed", type=int, default=0)


def records(n: int, seed: int) -> pa.Table:
    """SFT records: "add these numbers" word problems with a step-by-step CoT of random length."""
    from adaptcot.schemas import SFT_RECORDS

    rng = random.Random(seed)
    names = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay"]
    things = ["apples", "marbles", "stamps", "coins", "books"]
    rows = []
    for i in range(n):
        who, what = rng.choice(names), rng.choice(things)
        value = rng.randint(1, 50)
        adds = [rng.randint(1, 30) for _ in range(rng.choice([1, 2, 3, 4, 6, 9, 12, 18, 24]))]
        question = (f"{who} has {value} {what}. Then {who} gets " + ", then ".join(str(x) for x in adds)
                    + f" more. How many {what} does {who} have now?")
        steps = []
        for k, x in enumerate(adds, 1):
            steps.append(f"Step {k}: {value} + {x} = {value + x}.")
            value += x
        reply = "<think>\n" + "\n".join(steps) + f"\n</think>\n\n{who} has \\boxed{{{value}}} {what}."
        rows.append({"record_id": f"r{i}", "question_id": f"q{i}", "kind": "cot", "cot_id": f"c{i}",
                     "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                     "level": "wrong_mid", "teacher": "bench"})
    return pa.Table.from_pylist(rows, schema=SFT_RECORDS)


def train_config(model: str, a, **kw):
    from adaptcot.sft_train import TrainConfig

    workers = kw.get("num_workers", 1)
    epochs = math.ceil(a.steps * a.batch * workers / a.records)
    base = dict(model=model, max_seq_len=1024, per_device_batch_size=a.batch, epochs=max(1, epochs),
                max_steps=a.steps, learning_rate=1e-4, lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0,
                max_grad_norm=1.0, logging_steps=WINDOW, save_steps=10 * a.steps, num_workers=1,
                cpus_per_worker=float(a.threads), torch_threads=a.threads, seed=a.seed, batching=a.batching)
    return TrainConfig(**{**base, **kw})


def plain_loop(model_dir: str, order: pa.Table, cfg, threads: int, warm_steps: int) -> dict:
    """A bare torch training loop over the same batches: non-pad tokens/s after `warm_steps`, losses per step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptcot.sft_train import OrderDataset, SFTCollator

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    dataset = OrderDataset(order)
    collate = SFTCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                          packed=cfg.batching == "packed")
    b = cfg.per_device_batch_size
    losses, tokens, fed, started = [], 0, 0, time.perf_counter()
    for step in range(cfg.max_steps):
        if step == warm_steps:
            started = time.perf_counter()
        batch = collate([dataset[i] for i in range(step * b, step * b + b)])
        batch.pop("token_kind")
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step >= warm_steps:
            tokens += real
            fed += batch["input_ids"].numel()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "losses": losses, "padding": 1 - tokens / fed, "seconds": seconds}


def ray_job(cfg, data: Path, out: Path, order: pa.Table, warmup_windows: int) -> dict:
    """Run `sft_train.train`; its steady and end-to-end tokens/s, metrics rows, the order it stored."""
    from adaptcot.sft_train import train

    report = train(cfg, str(data), str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stored = [pq.read_table(p) for p in sorted((out / "data").glob("*.order.parquet"))]
    lengths = [len(x) for x in order["input_ids"].to_pylist()]
    per_step = cfg.per_device_batch_size * cfg.num_workers
    window_tokens = [sum(lengths[w * WINDOW * per_step:(w + 1) * WINDOW * per_step]) for w in range(len(rows))]
    steady = list(zip(window_tokens, rows))[warmup_windows:]
    seconds = sum(t / r["tokens_per_s"] for t, r in steady)
    trained = sum(lengths[:report.global_step * per_step])
    return {"report": report, "rows": rows, "steady": sum(t for t, _ in steady) / seconds if steady else float("nan"),
            "end_to_end": trained / report.seconds, "stored_order": stored[0] if len(stored) == 1 else None,
            "trained_tokens": trained}


def thread_probe(cpus: float) -> tuple[str | None, int]:
    """OMP_NUM_THREADS and torch's thread count in a Ray actor with `cpus` CPUs (what a Ray Train worker gets)."""
    import ray

    @ray.remote(num_cpus=cpus)
    class Probe:
        def threads(self):
            import torch

            return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

    actor = Probe.remote()
    try:
        return ray.get(actor.threads.remote())
    finally:
        ray.kill(actor)


def main() -> int:
    a = parser.parse_args()
    started = time.perf_counter()

    def say(line: str) -> None:  # a progress line, with the seconds since the start
        print(f"[{time.perf_counter() - started:5.0f} s] {line}", flush=True)

    if a.steps % WINDOW or a.steps <= WINDOW * a.warmup_windows:
        sys.exit(f"--steps must be a multiple of {WINDOW} above the warm-up's {WINDOW * a.warmup_windows}")
    import ray
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adaptcot.runtime import set_cpu_env_defaults
    from adaptcot.sft_train import padding_fraction, prepare
    from adaptcot.tiny_models import build_tiny_models

    hf_logging.disable_progress_bar()  # model loading and saving bars in this process
    env = set_cpu_env_defaults()
    load_before = os.getloadavg()[0]
    warm_steps = WINDOW * a.warmup_windows
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sft_bench_") as tmp:
        work = Path(tmp)
        model_dir = str(build_tiny_models(Path(a.models) if a.models else work / "models")[a.model])
        data = work / "sft_records.parquet"
        table = records(a.records, a.seed)
        pq.write_table(table, data)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        cfg = train_config(model_dir, a)
        prepared = {b: prepare(table, tokenizer, train_config(model_dir, a, batching=b)) for b in
                    ("plain", "grouped", "packed")}
        order, data_report = prepared[a.batching]
        say(f"{a.records} records, {data_report.tokens} tokens, {min(len(x) for x in order['input_ids'].to_pylist())}"
              f"-{data_report.max_len} per example; tiny {a.model}; {a.steps} steps of {a.batch} examples "
              f"({cfg.epochs} epochs), {a.batching} batching; first {warm_steps} steps are warm-up on both sides; "
              f"load average {load_before:.1f}")

        base_before = plain_loop(model_dir, order, cfg, a.threads, warm_steps)
        say(f"baseline ({a.batching}, {a.threads} thread(s)), before the job: "
              f"{base_before['tokens_per_s']:.0f} tokens/s")

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
        try:
            omp, torch_default = thread_probe(float(a.threads))
            say(f"a Ray actor with {a.threads} CPU(s) gets OMP_NUM_THREADS={omp}, torch threads {torch_default}; "
                  f"the job sets torch_threads={a.threads}, the baseline torch.set_num_threads({a.threads})")
            job = ray_job(cfg, data, work / "out", order, a.warmup_windows)
            say(f"project job: steady {job['steady']:.0f} tokens/s (per window "
                  f"{[round(r['tokens_per_s']) for r in job['rows']]}), end to end {job['end_to_end']:.0f} tokens/s "
                  f"({job['report'].seconds:.1f} s)")
            ddp = plain_job = None
            if not a.no_ddp:
                ddp_cfg = train_config(model_dir, a, num_workers=2, cpus_per_worker=0.5, torch_threads=1)
                ddp_order, _ = prepare(table, tokenizer, ddp_cfg)
                ddp = ray_job(ddp_cfg, data, work / "out_ddp", ddp_order, a.warmup_windows)
                say(f"project job, 2 workers x 0.5 CPU: steady {ddp['steady']:.0f} tokens/s, end to end "
                      f"{ddp['end_to_end']:.0f} tokens/s ({ddp['report'].seconds:.1f} s)")
            if not a.no_plain_run:
                plain_steps = WINDOW * (a.warmup_windows + 1)
                plain_cfg = train_config(model_dir, a, batching="plain", max_steps=plain_steps)
                plain_order = prepared["plain"][0]
                plain_job = ray_job(plain_cfg, data, work / "out_plain", plain_order, a.warmup_windows)
                plain_lengths = [len(x) for x in plain_order["input_ids"].to_pylist()]
                plain_predicted = padding_fraction(plain_lengths[:plain_steps * a.batch], plain_cfg)
                plain_measured = _padding_of(plain_job["rows"], plain_lengths, a.batch)
                say(f"project job, plain batching, {plain_steps} steps: padding fraction measured "
                      f"{plain_measured:.4f}, predicted {plain_predicted:.4f}; steady {plain_job['steady']:.0f} "
                      f"tokens/s (per window {[round(r['tokens_per_s']) for r in plain_job['rows']]})")
                if abs(plain_measured - plain_predicted) > 0.002:
                    problems.append(f"plain job: measured padding fraction {plain_measured:.4f} is not the "
                                    f"predicted {plain_predicted:.4f}")
        finally:
            ray.shutdown()

        base_after = plain_loop(model_dir, order, cfg, a.threads, warm_steps)
        say(f"baseline ({a.batching}), after the job: {base_after['tokens_per_s']:.0f} tokens/s")
        others = {b: plain_loop(model_dir, prepared[b][0], train_config(model_dir, a, batching=b), a.threads,
                                warm_steps) for b in ("plain", "grouped", "packed") if b != a.batching}

    # --- Checks: the two sides did the same work ---
    report = job["report"]
    if report.global_step != a.steps:
        problems.append(f"the Ray Train job ran {report.global_step} steps, not {a.steps}")
    stored = job["stored_order"]
    if stored is None or stored.select(["record_id", "input_ids"]) != order.select(["record_id", "input_ids"]):
        problems.append("the Ray Train job's stored example order is not the one the baseline used")
    window_losses = [sum(base_before["losses"][w * WINDOW:(w + 1) * WINDOW]) / WINDOW for w in range(len(job["rows"]))]
    worst = max((abs(r["loss"] - l) / max(abs(l), 1e-9), w) for w, (r, l) in enumerate(zip(job["rows"], window_losses)))
    print(f"loss per window, job vs baseline: {[(r['loss'], round(l, 4)) for r, l in zip(job['rows'], window_losses)]}"
          f" (largest relative gap {worst[0]:.2e}, window {worst[1]})")
    if worst[0] > LOSS_TOLERANCE:
        problems.append(f"the job's loss differs from the baseline's by {worst[0]:.1%} in window {worst[1]}: the "
                        f"two sides are not training on the same batches the same way")
    if base_before["losses"] != base_after["losses"]:
        problems.append("the baseline's two runs logged different losses (not deterministic)")

    baseline = (base_before["tokens_per_s"] + base_after["tokens_per_s"]) / 2
    loops = {a.batching: baseline, **{b: r["tokens_per_s"] for b, r in others.items()}}
    load_after = os.getloadavg()[0]
    print(f"\n{'side':<58} {'tokens/s':>9}")
    print(f"{f'Ray Train job, {a.batching}, 1 worker x {a.threads} CPU, steady':<58} {job['steady']:9.0f}")
    print(f"{f'Ray Train job, {a.batching}, 1 worker x {a.threads} CPU, end to end':<58} {job['end_to_end']:9.0f}")
    if ddp:
        print(f"{f'Ray Train job, {a.batching}, 2 workers x 0.5 CPU (DDP), steady':<58} {ddp['steady']:9.0f}")
        print(f"{f'Ray Train job, {a.batching}, 2 workers x 0.5 CPU (DDP), end to end':<58} {ddp['end_to_end']:9.0f}")
    if plain_job:
        print(f"{f'Ray Train job, plain, 1 worker x {a.threads} CPU, steady (1 window)':<58} {plain_job['steady']:9.0f}")
    print(f"{f'plain torch loop, {a.batching}, before / after the job':<58} "
          f"{base_before['tokens_per_s']:9.0f} / {base_after['tokens_per_s']:.0f}")
    for b in ("plain", "grouped", "packed"):
        if b != a.batching:
            print(f"{f'plain torch loop, {b}':<58} {loops[b]:9.0f}")
    print(f"\npadding fraction of the dataset (DataReport, batch {a.batch}): "
          + ", ".join(f"{b} {prepared[b][1].padding_fraction:.3f}" for b in ("plain", "grouped", "packed"))
          + f"; measured by the baseline: " + ", ".join(
              f"{b} {(base_before if b == a.batching else others[b])['padding']:.3f}" for b in ("plain", "grouped",
                                                                                                 "packed")))
    print(f"packing vs padding in the plain loop: packed/plain {loops['packed'] / loops['plain']:.2f}x, "
          f"packed/grouped {loops['packed'] / loops['grouped']:.2f}x tokens/s")
    if ddp:
        print(f"2 workers x 0.5 CPU (DDP) / 1 worker x {a.threads} CPU: {ddp['steady'] / job['steady']:.2f}x")
    gap = abs(base_before["tokens_per_s"] - base_after["tokens_per_s"]) / baseline
    print(f"load average {load_before:.1f} before, {load_after:.1f} after; baseline drift over the job "
          f"{gap:.1%}{' (noisy machine: rates not trustworthy)' if gap > 0.1 or max(load_before, load_after) > 2.5 else ''}")
    ratio = job["steady"] / baseline
    print(f"ratio Ray Train steady / plain torch loop ({a.batching}, {a.threads} thread(s)): {ratio:.3f} "
          f"{'meets' if ratio >= TARGET else 'MISSES'} the target >= {TARGET}")
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if problems:
        print("problems:\n  " + "\n  ".join(problems))
        return 1
    return 0


def _padding_of(rows: list[dict], lengths: list[int], batch: int) -> float:
    """The job's padding fraction over all its windows, from the per-window fractions (weighted by fed tokens)."""
    fed = pad = 0.0
    for w, r in enumerate(rows):
        real = sum(lengths[w * WINDOW * batch:(w + 1) * WINDOW * batch])
        window_fed = real / (1 - r["padding_fraction"])
        fed += window_fed
        pad += window_fed - real
    return pad / fed if fed else 0.0


if __name__ == "__main__":
    sys.exit(main())

"""Supervised fine-tuning of the student on adaptcot SFT records, with transformers' `Trainer` inside Ray Train.

Driver side (pure, no Ray; runs before any worker starts, so a bad dataset fails early and cheaply):
- `tokenize_records`: chat records -> token ids through the student's own chat template; `prompt_tokens` marks where
  the assistant turn starts, so the loss is on assistant tokens only (the turn's end token included: the model has
  to learn to stop). Records longer than `max_seq_len` are dropped and counted, or fail the run (`too_long`); they
  are never truncated.
- `training_order`: the whole run's example order, materialised once and seeded: epochs, CasCoD phases, CasCoD
  pairs kept next to each other (so a joint-loss batch holds both objectives), length grouping. The Trainer then
  reads it sequentially, so a resumed run continues exactly where the checkpoint was taken.
- `padding_fraction`: the share of pad tokens the batching will feed the model (0 with packing).

Objectives (METHOD.md §2):
- `cot`: q -> reasoning + answer; the model's own token-mean loss.
- `cascod` / `joint`: L = (1 - alpha) * L(q -> r) + alpha * L(q, r -> a), each L a token mean over its own records
  in the micro-batch (a micro-batch lacking one kind gets only the other's term); both are logged
  (`loss_rationale`, `loss_answer`).
- `cascod` / `two_phase`: every epoch of q -> r first, then every epoch of (q, r) -> a, in one run (one step
  count, one checkpoint series).

Worker side: `train_loop_per_worker` builds a `Trainer` (with DDP over gloo on CPU, NCCL on GPU; FSDP or DeepSpeed
from config), resumes from `ray.train.get_checkpoint()`, reports metrics every logging step and checkpoints through
`RayTrainReportCallback`, and exports the final model in Hugging Face format (what vLLM loads) as the last reported
checkpoint. `ray_jobs/train_sft.py` is the driver.

Batching: `grouped` (default) pads micro-batches of similar length (sorted within mega-batches of 64
micro-batches); `packed` concatenates a micro-batch's examples into one row with per-example position ids, which
transformers turns into a block-diagonal causal mask (no padding, no cross-example attention; fast only with a
variable-length attention kernel such as flash-attention 2); `plain` pads shuffled ones.
The collator is written here, not transformers' `DataCollatorWithFlattening`, because it also carries each token's
objective (rationale or answer) for the CasCoD loss.

Not covered: sequence parallelism for CoTs beyond one device's memory; a chunked cross-entropy for huge
vocabularies (the joint loss materialises float32 logits of the micro-batch); datasets larger than one worker's
memory (the tokenised order is read whole by every worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs  # noqa: F401  (pa.fs: checkpoints, data and exports on local paths or URIs)
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaptcot import storage
from adaptcot.schemas import require_columns

# Token objective codes carried next to the labels.
KIND_CODES = {"cot": 0, "cascod_rationale": 1, "cascod_answer": 2}
OBJECTIVE_KINDS = {"cot": ("cot",), "cascod": ("cascod_rationale", "cascod_answer")}
RECORD_COLUMNS = ("record_id", "question_id", "kind", "messages")
ORDER_SCHEMA = pa.schema([
    pa.field("record_id", pa.string()), pa.field("kind", pa.string()), pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("prompt_tokens", pa.int32()), pa.field("phase", pa.int8()), pa.field("epoch", pa.int16()),
])
MEGA_BATCH = 64  # micro-batches sorted together in `grouped` batching (transformers' LengthGroupedSampler uses 50)


class CasCoDConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["joint", "two_phase"] = "joint"
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # weight of the answer step in the joint loss


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Hugging Face hub name or local directory ("{run_dir}/..." allowed); default: the graded student's model.
    model: str | None = None
    data: str | None = None  # SFT records (Parquet); default: this job's <run_dir>/sft/sft_records.parquet
    out: str = "train"  # under run_dir, or an absolute path / URI (s3://, gs://)
    objective: Literal["cot", "cascod"] = "cot"
    cascod: CasCoDConfig = CasCoDConfig()
    max_seq_len: int = Field(default=4096, ge=16, le=262_144)
    too_long: Literal["drop", "fail"] = "drop"  # records over max_seq_len: counted and dropped, or the run fails
    # "packed" pays off with a variable-length attention kernel (attn_implementation: flash_attention_2 on GPUs);
    # with sdpa/eager a packed row attends over its whole length under a block mask, which on the CPU is slower
    # than grouped padding (benchmarks/sft_throughput.py).
    batching: Literal["packed", "grouped", "plain"] = "grouped"
    attn_implementation: str | None = None  # transformers' choice by default (sdpa); "flash_attention_2" on GPUs
    per_device_batch_size: int = Field(default=4, ge=1)  # examples per micro-batch
    grad_accum: int = Field(default=1, ge=1)
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # cap on optimizer steps (otherwise all epochs)
    learning_rate: float = Field(default=1e-5, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0
    logging_steps: int = Field(default=1, ge=1)
    save_steps: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_failures: int = Field(default=0, ge=-1)  # worker failures Ray Train recovers from (from the last checkpoint)
    # Ray Train workers: one per GPU on clusters; fractional CPUs so two fit a small CPU node.
    num_workers: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    use_gpu: bool = False
    torch_threads: int | None = Field(default=None, ge=1)  # CPU workers: intra-op threads per worker
    bf16: bool = False
    gradient_checkpointing: bool = False
    fsdp: str = ""  # transformers' `fsdp` string, e.g. "full_shard auto_wrap"
    fsdp_config: dict[str, Any] = {}
    deepspeed: dict[str, Any] | None = None  # a DeepSpeed config dict
    report_to: list[Literal["mlflow", "wandb", "tensorboard"]] = []  # their standard transformers callbacks

    @model_validator(mode="after")
    def _consistent(self):
        if self.objective == "cascod" and self.cascod.mode == "joint" and self.per_device_batch_size % 2:
            raise ValueError("cascod joint training needs an even per_device_batch_size (a rationale record and its "
                             "answer record share each micro-batch)")
        if self.bf16 and not self.use_gpu:
            raise ValueError("bf16 is for GPU workers (use_gpu: true); CPU training runs in float32")
        if self.fsdp and self.deepspeed:
            raise ValueError("choose one of fsdp and deepspeed")
        if (self.fsdp or self.deepspeed) and not self.use_gpu:
            raise ValueError("fsdp / deepspeed settings are for GPU workers (use_gpu: true)")
        for name in self.report_to:
            module = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}[name]
            try:
                __import__(module)
            except ImportError:
                raise ValueError(f"report_to names {name!r} but the `{module}` package is not installed") from None
        return self

    def kinds(self) -> tuple[str, ...]:
        return OBJECTIVE_KINDS[self.objective]

    def fingerprint(self, data_digest: str) -> str:
        """Names the Ray Train run: the same data and settings resume the same run; anything else starts anew."""
        settings = self.model_dump(exclude={"cpus_per_worker", "torch_threads", "report_to", "logging_steps",
                                            "out", "data", "max_failures"})
        return hashlib.sha256(json.dumps([settings, data_digest], sort_keys=True).encode()).hexdigest()[:12]


class DatasetError(ValueError):
    """The SFT dataset cannot be trained on as configured (raised before any worker starts)."""


@dataclass
class DataReport:
    records: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # records of the objective's kinds, before length checks
    ignored_kinds: dict[str, int] = field(default_factory=dict)  # records of other kinds (not this objective's)
    too_long: int = 0
    empty_target: int = 0
    used: int = 0
    tokens: int = 0  # tokens of the used records
    target_tokens: int = 0  # tokens with a loss
    max_len: int = 0
    examples: int = 0  # examples in the training order (used records x epochs)
    micro_batches: int = 0
    padding_fraction: float = 0.0

    def lines(self) -> list[str]:
        return [f"{self.records} records, {self.used} used {dict(self.by_kind)}; dropped: {self.too_long} longer than "
                f"max_seq_len, {self.empty_target} with an empty target; other kinds ignored: {self.ignored_kinds}",
                f"{self.tokens} tokens ({self.target_tokens} with a loss), longest {self.max_len}; {self.examples} "
                f"examples in {self.micro_batches} micro-batches, padding fraction {self.padding_fraction:.3f}"]


# --- Driver side: pure functions over Arrow ---------------------------------------------------------------------------
def tokenize_records(records: pa.Table, tokenizer, cfg: TrainConfig) -> tuple[pa.Table, DataReport]:
    """Chat records -> (record_id, kind, input_ids, prompt_tokens) for the objective's kinds; DataReport of the rest."""
    require_columns(records, RECORD_COLUMNS, "train")
    report = DataReport(records=records.num_rows)
    kinds = Counter(records["kind"].to_pylist())
    wanted = cfg.kinds()
    report.by_kind = {k: kinds.get(k, 0) for k in wanted}
    report.ignored_kinds = {k: n for k, n in kinds.items() if k not in wanted}
    out = {"record_id": [], "kind": [], "input_ids": [], "prompt_tokens": []}
    for row in records.select(["record_id", "kind", "messages"]).to_pylist():
        if row["kind"] not in wanted:
            continue
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise DatasetError(f"record {row['record_id']}: the last message must be the assistant's")
        prompt = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        full = _chat_ids(tokenizer, messages, add_generation_prompt=False)
        if full[:len(prompt)] != prompt:
            raise DatasetError(f"record {row['record_id']}: the chat template does not render the conversation as "
                               f"its prompt followed by the assistant turn, so the assistant tokens cannot be found")
        if len(full) == len(prompt) or not messages[-1]["content"].strip():
            report.empty_target += 1
            continue
        if len(full) > cfg.max_seq_len:
            report.too_long += 1
            continue
        out["record_id"].append(row["record_id"])
        out["kind"].append(row["kind"])
        out["input_ids"].append(full)
        out["prompt_tokens"].append(len(prompt))
        report.tokens += len(full)
        report.target_tokens += len(full) - len(prompt)
        report.max_len = max(report.max_len, len(full))
    report.used = len(out["record_id"])
    if report.too_long and cfg.too_long == "fail":
        raise DatasetError(f"{report.too_long} of {sum(report.by_kind.values())} records are longer than max_seq_len "
                           f"{cfg.max_seq_len} tokens (too_long: fail); raise max_seq_len or set too_long: drop")
    if report.used == 0:
        raise DatasetError(f"no record left to train on: {report.lines()[0]}")
    table = pa.table({"record_id": pa.array(out["record_id"], pa.string()), "kind": pa.array(out["kind"], pa.string()),
                      "input_ids": pa.array(out["input_ids"], pa.list_(pa.int32())),
                      "prompt_tokens": pa.array(out["prompt_tokens"], pa.int32())})
    return table, report


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                        tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def training_order(tokens: pa.Table, cfg: TrainConfig, pair_of: dict[str, str] | None = None) -> pa.Table:
    """Every example of the run in the order it is trained (schema ORDER_SCHEMA), seeded.

    `pair_of` maps a CasCoD record id to the id of its partner (same question and CoT); joint training keeps the
    two next to each other."""
    rng = random.Random(cfg.seed)
    ids = tokens["record_id"].to_pylist()
    kinds = tokens["kind"].to_pylist()
    lengths = [len(x) for x in tokens["input_ids"].to_pylist()]
    if cfg.objective == "cascod" and cfg.cascod.mode == "two_phase":
        phases = [[i for i, k in enumerate(kinds) if k == kind] for kind in ("cascod_rationale", "cascod_answer")]
        units_by_phase = [[[i] for i in phase] for phase in phases]
    elif cfg.objective == "cascod":
        units_by_phase = [_pairs(ids, kinds, pair_of or {})]
    else:
        units_by_phase = [[[i] for i in range(len(ids))]]
    rows: list[tuple[int, int, int]] = []  # (row index, phase, epoch)
    for phase, units in enumerate(units_by_phase):
        for epoch in range(cfg.epochs):
            shuffled = list(units)
            rng.shuffle(shuffled)
            if cfg.batching == "grouped":
                shuffled = _group_by_length(shuffled, lengths, cfg.per_device_batch_size, rng)
            rows += [(i, phase, epoch) for unit in shuffled for i in unit]
    take = pa.array([r[0] for r in rows], pa.int64())
    ordered = tokens.take(take)
    return pa.table({"record_id": ordered["record_id"], "kind": ordered["kind"], "input_ids": ordered["input_ids"],
                     "prompt_tokens": ordered["prompt_tokens"],
                     "phase": pa.array([r[1] for r in rows], pa.int8()),
                     "epoch": pa.array([r[2] for r in rows], pa.int16())}, schema=ORDER_SCHEMA)


def _pairs(ids: list[str], kinds: list[str], pair_of: dict[str, str]) -> list[list[int]]:
    """CasCoD units: [rationale row, answer row] where both survived, else the lone row."""
    row_of = {record_id: i for i, record_id in enumerate(ids)}
    units, seen = [], set()
    for i, record_id in enumerate(ids):
        if i in seen:
            continue
        partner = row_of.get(pair_of.get(record_id, ""))
        if partner is not None and partner not in seen and kinds[partner] != kinds[i]:
            unit = [i, partner] if kinds[i] == "cascod_rationale" else [partner, i]
        else:
            unit = [i]
        seen.update(unit)
        units.append(unit)
    return units


def _group_by_length(units: list[list[int]], lengths: list[int], batch: int, rng: random.Random) -> list[list[int]]:
    """Sort units by length within mega-batches, cut into micro-batches, shuffle the micro-batches."""
    per_batch = max(1, batch // max(len(u) for u in units)) if units else 1
    mega = per_batch * MEGA_BATCH
    batches = []
    for start in range(0, len(units), mega):
        chunk = sorted(units[start:start + mega], key=lambda u: -max(lengths[i] for i in u))
        batches += [chunk[j:j + per_batch] for j in range(0, len(chunk), per_batch)]
    rng.shuffle(batches)
    return [unit for b in batches for unit in b]


def micro_batches(n_examples: int, cfg: TrainConfig) -> list[range]:
    """How the sequential order is cut into micro-batches (the same cut the Trainer's dataloader makes)."""
    b = cfg.per_device_batch_size
    return [range(s, min(s + b, n_examples)) for s in range(0, n_examples, b)]


def padding_fraction(lengths: list[int], cfg: TrainConfig) -> float:
    """Pad tokens / all tokens fed to the model, for the order's lengths under the configured batching."""
    if cfg.batching == "packed" or not lengths:
        return 0.0
    fed = sum(max(lengths[i] for i in r) * len(r) for r in micro_batches(len(lengths), cfg))
    return 1.0 - sum(lengths) / fed


def optimizer_steps(n_examples: int, cfg: TrainConfig) -> int:
    per_step = cfg.per_device_batch_size * cfg.num_workers * cfg.grad_accum
    steps = max(1, n_examples // per_step)  # the Trainer drops an incomplete accumulation at the end
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def cascod_pairs(records: pa.Table) -> dict[str, str]:
    """record_id -> partner record_id for CasCoD records made from the same teacher CoT (`cot_id`)."""
    if "cot_id" not in records.column_names:
        return {}  # records from before `cot_id` existed: trained as single records
    by_cot: dict[str, dict[str, str]] = {}
    for row in records.select(["record_id", "cot_id", "kind"]).to_pylist():
        if row["cot_id"] and row["kind"] in ("cascod_rationale", "cascod_answer"):
            by_cot.setdefault(row["cot_id"], {})[row["kind"]] = row["record_id"]
    pairs = {}
    for both in by_cot.values():
        if len(both) == 2:
            pairs[both["cascod_rationale"]] = both["cascod_answer"]
            pairs[both["cascod_answer"]] = both["cascod_rationale"]
    return pairs


def prepare(records: pa.Table, tokenizer, cfg: TrainConfig) -> tuple[pa.Table, DataReport]:
    """Tokenise, check and order a dataset: everything the workers need, done before they start."""
    tokens, report = tokenize_records(records, tokenizer, cfg)
    pairs = cascod_pairs(records) if cfg.objective == "cascod" else None
    order = training_order(tokens, cfg, pairs)
    lengths = [len(x) for x in order["input_ids"].to_pylist()]
    report.examples = order.num_rows
    report.micro_batches = len(micro_batches(order.num_rows, cfg))
    report.padding_fraction = round(padding_fraction(lengths, cfg), 4)
    per_step = cfg.per_device_batch_size * cfg.num_workers * cfg.grad_accum
    if order.num_rows < per_step:
        raise DatasetError(f"{order.num_rows} examples are fewer than one optimizer step's {per_step} "
                           f"(per_device_batch_size x num_workers x grad_accum)")
    return order, report


# --- Worker side -----------------------------------------------------------------------------------------------------
class OrderDataset:
    """Map-style torch dataset over the tokenised order (flat numpy ids + offsets: O(1) per example)."""

    def __init__(self, order: pa.Table):
        ids = order["input_ids"].combine_chunks()
        self.offsets = ids.offsets.to_numpy()
        self.values = ids.values.to_numpy()
        self.prompt_tokens = order["prompt_tokens"].to_numpy()
        self.kinds = np.array([KIND_CODES[k] for k in order["kind"].to_pylist()], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.values[self.offsets[i]:self.offsets[i + 1]],
                "prompt_tokens": int(self.prompt_tokens[i]), "kind": int(self.kinds[i])}


class SFTCollator:
    """Examples -> model inputs: labels -100 on prompt tokens; `token_kind` per token; packed or padded."""

    def __init__(self, pad_id: int, packed: bool):
        self.pad_id, self.packed = pad_id, packed

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        rows = []
        for ex in examples:
            ids = torch.as_tensor(np.asarray(ex["input_ids"], dtype=np.int64))
            labels = ids.clone()
            labels[:ex["prompt_tokens"]] = -100
            kind = torch.full_like(ids, ex["kind"])
            rows.append((ids, labels, kind))
        if self.packed:
            return {"input_ids": torch.cat([r[0] for r in rows])[None],
                    "labels": torch.cat([r[1] for r in rows])[None],
                    "token_kind": torch.cat([r[2] for r in rows])[None],
                    "position_ids": torch.cat([torch.arange(len(r[0])) for r in rows])[None]}
        width = max(len(r[0]) for r in rows)
        batch = {"input_ids": torch.full((len(rows), width), self.pad_id, dtype=torch.long),
                 "labels": torch.full((len(rows), width), -100, dtype=torch.long),
                 "token_kind": torch.zeros((len(rows), width), dtype=torch.long),
                 "attention_mask": torch.zeros((len(rows), width), dtype=torch.long)}
        for j, (ids, labels, kind) in enumerate(rows):
            batch["input_ids"][j, :len(ids)] = ids
            batch["labels"][j, :len(ids)] = labels
            batch["token_kind"][j, :len(ids)] = kind
            batch["attention_mask"][j, :len(ids)] = 1
        return batch


def per_kind_losses(logits, labels, token_kind) -> dict[int, Any]:
    """Token-mean next-token cross-entropy per objective code present in the batch."""
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    targets, kinds = labels[:, 1:], token_kind[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                         reduction="none").view_as(targets)
    counted = targets != -100
    out = {}
    for code in kinds[counted].unique().tolist():
        mask = counted & (kinds == code)
        out[int(code)] = (ce * mask).sum() / mask.sum()
    return out


def make_trainer_class():
    """A `Trainer` that computes the CasCoD joint loss, counts tokens and padding, and logs the per-objective losses."""
    import torch
    from transformers import Trainer

    class SFTTrainer(Trainer):
        def __init__(self, *args, alpha: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.alpha = alpha  # None: the model's own loss (one objective)
            if alpha is not None:
                self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean: the Trainer scales it
            self._counts = torch.zeros(2, dtype=torch.float64)  # tokens fed, pad tokens fed (since the last log)
            self._kind_sums: dict[int, tuple[float, int]] = {}  # objective code -> (sum of losses, micro-batches)
            self._last_log = time.perf_counter()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            token_kind = inputs.pop("token_kind")
            fed = inputs["input_ids"].numel()
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else fed
            self._counts += torch.tensor([fed, fed - real], dtype=torch.float64)
            if self.alpha is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            losses = per_kind_losses(outputs.logits, labels, token_kind)
            weights = {KIND_CODES["cascod_rationale"]: 1.0 - self.alpha, KIND_CODES["cascod_answer"]: self.alpha}
            loss = sum(weights[code] * value for code, value in losses.items())
            for code, value in losses.items():
                total, n = self._kind_sums.get(code, (0.0, 0))
                self._kind_sums[code] = (total + float(value.detach()), n + 1)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict, start_time=None) -> None:
            if "loss" in logs:  # a training log (not the end-of-training summary)
                counts = self._counts.to(self.args.device)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(counts)
                now = time.perf_counter()
                fed, pad = counts.tolist()
                logs["tokens_per_s"] = round((fed - pad) / max(now - self._last_log, 1e-9), 1)
                logs["padding_fraction"] = round(pad / fed, 4) if fed else 0.0
                for code, (total, n) in self._kind_sums.items():
                    name = {1: "loss_rationale", 2: "loss_answer"}.get(code)
                    if name and n:
                        logs[name] = round(total / n, 4)
                self._counts.zero_()
                self._kind_sums = {}
                self._last_log = now
            super().log(logs, start_time)

    return SFTTrainer


def make_reporting_callback(metrics_path: str | None):
    """Per log step: `ray.train.report(metrics)` on every worker (Ray requires all), a JSONL line on rank 0."""
    from transformers import TrainerCallback

    class ReportMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            import ray.train

            if not logs or "loss" not in logs:
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(time.time(), 3),
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            if metrics_path and state.is_world_process_zero:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            ray.train.report(row)

    return ReportMetrics()


FINAL_MARKER = "adaptcot_final_model.json"


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: Trainer over the ordered dataset; resume, train, export."""
    import shutil
    import tempfile

    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    cfg = TrainConfig(**config["train"])
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / FINAL_MARKER).exists():  # a finished run restarted: hand its model back again
                ray.train.report({"final": 1}, checkpoint=checkpoint if context.get_world_rank() == 0 else None)
                return
    fs, path = storage.resolve(config["order_uri"])
    dataset = OrderDataset(pq.read_table(path, filesystem=fs))
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    model = AutoModelForCausalLM.from_pretrained(config["model"], dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
                                                 **({"attn_implementation": cfg.attn_implementation}
                                                    if cfg.attn_implementation else {}))
    # No KV cache in training: with one, transformers does not build the block-diagonal mask of packed batches.
    use_cache, model.config.use_cache = model.config.use_cache, False
    work = Path(tempfile.gettempdir()) / f"adaptcot-train-{config['run_name']}-rank{context.get_world_rank()}"
    args = TrainingArguments(
        output_dir=str(work), per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=1,
        max_steps=optimizer_steps(len(dataset), cfg), learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,  # a float < 1: a ratio of the steps weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1, train_sampling_strategy="sequential",
        remove_unused_columns=False, dataloader_drop_last=False, bf16=cfg.bf16, use_cpu=not cfg.use_gpu,
        gradient_checkpointing=cfg.gradient_checkpointing, fsdp=cfg.fsdp or "", fsdp_config=cfg.fsdp_config or None,
        deepspeed=cfg.deepspeed, report_to=list(cfg.report_to) or "none", disable_tqdm=True,
        ddp_backend=None if cfg.use_gpu else "gloo", average_tokens_across_devices=True)
    alpha = cfg.cascod.alpha if cfg.objective == "cascod" and cfg.cascod.mode == "joint" else None
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, alpha=alpha,
        data_collator=SFTCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                  packed=cfg.batching == "packed"),
        callbacks=[make_reporting_callback(config.get("metrics_path")), RayTrainReportCallback()])
    trainer = prepare_trainer(trainer)
    resumed_from_step = None
    if checkpoint is not None:  # Ray Train's latest registered checkpoint of this run (a restart after a kill)
        with checkpoint.as_directory() as d:
            saved = Path(d) / RayTrainReportCallback.CHECKPOINT_NAME
            resumed_from_step = json.loads((saved / "trainer_state.json").read_text())["global_step"]
            trainer.train(resume_from_checkpoint=str(saved))
    else:
        trainer.train()
    # Export: every rank takes part (FSDP gathers the full state), rank 0 writes the Hugging Face directory.
    model.config.use_cache = use_cache
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_model(tmp)
        if context.get_world_rank() == 0:
            tokenizer.save_pretrained(tmp)
            trainer.state.save_to_json(str(Path(tmp) / "trainer_state.json"))
            (Path(tmp) / FINAL_MARKER).write_text(json.dumps({"global_step": trainer.state.global_step,
                                                              "resumed_from_step": resumed_from_step}))
        ray.train.report({"final": 1, "step": trainer.state.global_step},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp) if context.get_world_rank() == 0
                         else None)
    shutil.rmtree(work, ignore_errors=True)


def log_history(trainer_state: dict) -> list[dict]:
    """The training log lines of a saved `trainer_state.json` (one per logging step, exactly once each)."""
    return [row for row in trainer_state.get("log_history", []) if "loss" in row]


@dataclass
class TrainReport:
    run_name: str
    data: dict
    global_step: int = 0
    model_dir: str = ""
    seconds: float = 0.0
    final_loss: float | None = None
    resumed_from_step: int | None = None  # the checkpoint a killed run was resumed from

    def lines(self) -> list[str]:
        resumed = f" (resumed from step {self.resumed_from_step})" if self.resumed_from_step else ""
        return [f"run {self.run_name}: {self.global_step} steps in {self.seconds:.0f} s{resumed}, "
                f"final loss {self.final_loss}; model in {self.model_dir}"]

    def as_dict(self) -> dict:
        return asdict(self)


def data_digest(path: str) -> str:
    """Content fingerprint of the SFT records file (it names the run, with the settings)."""
    h = hashlib.sha256()
    with _open_input(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _open_input(path: str):
    fs, inner = storage.resolve(path)
    return fs.open_input_stream(inner)


# --- Driver: the Ray Train job ----------------------------------------------------------------------------------------
_fs = storage.resolve  # (pyarrow filesystem, path inside it) for a local path or a URI


def _join(base: str, *parts: str) -> str:
    """`storage.join`, local paths made absolute (workers may run in another working directory)."""
    joined = storage.join(base, *parts)
    return joined if storage.is_remote(joined) else os.path.abspath(joined)


def train(cfg: TrainConfig, data: str, out: str) -> TrainReport:
    """Fine-tune `cfg.model` on the SFT records at `data`; everything under `out` (a path or URI). Ray must be up.

    `out/` holds `data/<run>.order.parquet` (the tokenised order), `ray/<run>/` (Ray Train's checkpoints), `model/`
    (the exported model), `metrics.jsonl` (one line per logging step) and `train_report.json`. The run's name is a
    fingerprint of the data and settings: running again with the same ones resumes (or, when finished, returns the
    exported model at once); other data or settings start a new run."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    started = time.perf_counter()
    if Path(cfg.model).exists():  # a local directory: workers may run in another working directory
        cfg = cfg.model_copy(update={"model": str(Path(cfg.model).absolute())})
    fs, data_path = _fs(data)
    if fs.get_file_info(data_path).type == pa.fs.FileType.NotFound:
        raise DatasetError(f"train: no SFT records at {data}")
    records = pq.read_table(data_path, filesystem=fs)
    order, data_report = prepare(records, AutoTokenizer.from_pretrained(cfg.model), cfg)
    run_name = "sft-" + cfg.fingerprint(data_digest(data))
    report = TrainReport(run_name=run_name, data=asdict(data_report), model_dir=_join(out, "model"))
    out_fs, out_path = _fs(out)
    report_path = _join(out_path, "train_report.json")
    if _finished(out_fs, out_path, run_name):
        previous = json.loads(out_fs.open_input_stream(report_path).read())
        return TrainReport(**previous)
    order_path = _join(out_path, "data", f"{run_name}.order.parquet")
    out_fs.create_dir(_join(out_path, "data"), recursive=True)
    pq.write_table(order, order_path, filesystem=out_fs)
    checkpoints = _join(out, "ray")
    # Live lines as training goes (every attempt appends: after a resume, the steps since the checkpoint repeat);
    # metrics.jsonl is rewritten at the end from the final trainer state, each step exactly once.
    metrics_path = None if "://" in out else _join(out_path, "metrics.live.jsonl")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.model_dump(), "model": cfg.model, "run_name": run_name,
                           "order_uri": order_path if "://" not in out else _join(out, "data",
                                                                                  f"{run_name}.order.parquet"),
                           "metrics_path": metrics_path},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(name=run_name, storage_path=checkpoints,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"train: run {run_name} ended without a final model")
    model_dir = _join(out_path, "model")
    if out_fs.get_file_info(model_dir).type != pa.fs.FileType.NotFound:
        out_fs.delete_dir(model_dir)
    out_fs.create_dir(model_dir, recursive=True)
    with result.checkpoint.as_directory() as final:
        pa.fs.copy_files(str(Path(final).absolute()), model_dir, source_filesystem=pa.fs.LocalFileSystem(),
                         destination_filesystem=out_fs)
        state = json.loads((Path(final) / "trainer_state.json").read_text())
        report.resumed_from_step = json.loads((Path(final) / FINAL_MARKER).read_text())["resumed_from_step"]
    history = log_history(state)
    with out_fs.open_output_stream(_join(out_path, "metrics.jsonl")) as f:  # exact: each step once, after resumes
        f.write("".join(json.dumps(row) + "\n" for row in history).encode())
    report.global_step = state.get("global_step", 0)
    report.final_loss = history[-1]["loss"] if history else None
    report.seconds = round(time.perf_counter() - started, 1)
    with out_fs.open_output_stream(report_path) as f:
        f.write(json.dumps(report.as_dict(), indent=2).encode())
    return report


def _finished(fs, out_path: str, run_name: str) -> bool:
    marker = _join(out_path, "model", FINAL_MARKER)
    report = _join(out_path, "train_report.json")
    if fs.get_file_info(marker).type == pa.fs.FileType.NotFound or \
            fs.get_file_info(report).type == pa.fs.FileType.NotFound:
        return False
    return json.loads(fs.open_input_stream(report).read()).get("run_name") == run_name

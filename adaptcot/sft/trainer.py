"""Worker side of SFT: transformers' `Trainer` in each Ray Train worker (objectives: METHOD.md §2).

- `cot`: q -> reasoning + answer; the token mean over the accumulated batch, on all devices (as transformers does).
- `cascod` / `joint`: L = (1 - alpha) * L(q -> r) + alpha * L(q, r -> a), each L a token mean over its own records
  in the micro-batch (a micro-batch lacking one kind gets only the other's term); both are logged
  (`loss_rationale`, `loss_answer`).
- `cascod` / `two_phase`: every epoch of q -> r first, then every epoch of (q, r) -> a, in one run (one step
  count, one checkpoint series).

`train_loop_per_worker` builds a `Trainer` (DDP over gloo on CPU, NCCL on GPU; FSDP or DeepSpeed from config) with
`training_arguments`, resumes from `ray.train.get_checkpoint()`, reports metrics every logging step and checkpoints
through `RayTrainReportCallback`, and exports the final model in Hugging Face format (what vLLM loads) as the last
reported checkpoint. The collator is written here, not transformers' `DataCollatorWithFlattening`, because it also
carries each token's objective (rationale or answer) for the CasCoD loss; packed rows carry per-example position ids,
which transformers turns into a block-diagonal causal mask (fast only with a variable-length attention kernel such
as flash-attention 2).

The loss is the fused one of `loss.py` (no full-sequence logits); the model is loaded float32 whatever `bf16` says
(`distributed.py`); each worker reads its share of the order (`shards.py`).

Not covered: sequence parallelism for CoTs beyond one device's memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from adaptcot.common import storage
from adaptcot.sft import lora
from adaptcot.sft.distributed import parallel_arguments, worker_environment
from adaptcot.sft.loss import use_fused_loss
from adaptcot.sft.order import KIND_CODES, optimizer_steps
from adaptcot.sft.shards import ShardDataset, shard_name
from adaptcot.sft.train_config import TrainConfig


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


def make_trainer_class():
    """A `Trainer` that computes the CasCoD joint loss, counts tokens and padding, and logs the per-objective losses."""
    import torch
    from transformers import Trainer

    class SFTTrainer(Trainer):
        def __init__(self, *args, alpha: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.alpha = alpha  # None: one objective, the token mean over the whole accumulated batch
            # cot: the Trainer counts the accumulated batch's tokens (all devices) and passes them in, as for the
            # model's own loss; joint CasCoD: a per-micro-batch mean, which the Trainer divides by the accumulation.
            self.model_accepts_loss_kwargs = alpha is None
            self._counts = torch.zeros(2, dtype=torch.float64)  # tokens fed, pad tokens fed (since the last log)
            self._kind_sums: dict[int, tuple[float, int]] = {}  # objective code -> (sum of losses, micro-batches)
            self._last_log = time.perf_counter()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            token_kind = inputs.pop("token_kind")
            fed = inputs["input_ids"].numel()
            real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else fed
            self._counts += torch.tensor([fed, fed - real], dtype=torch.float64)
            outputs = model(**inputs, token_kind=token_kind)  # `loss.use_fused_loss`: sums, never logits
            sums = outputs["kind_sums"]
            if self.alpha is None:
                total = sum(s for s, _ in sums.values()) + outputs["zero"]
                if num_items_in_batch is None:
                    return total / max(int(sum(c for _, c in sums.values())), 1)
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:  # the Trainer's own scaling of a summed token loss
                    loss = loss * self.accelerator.num_processes
                return (loss, outputs) if return_outputs else loss
            losses = {code: s / c for code, (s, c) in sums.items()}
            weights = {KIND_CODES["cascod_rationale"]: 1.0 - self.alpha, KIND_CODES["cascod_answer"]: self.alpha}
            loss = sum((weights[code] * value for code, value in losses.items()), outputs["zero"])
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


def training_arguments(cfg: TrainConfig, n_examples: int, output_dir: str):
    """transformers' `TrainingArguments` for one worker: the order is read sequentially (`training_order` has shuffled
    and grouped it), one pass of it is the whole run, and warmup is a step count computed here (transformers < 5
    reads a float `warmup_steps` as steps, not as a ratio)."""
    from transformers import TrainingArguments

    steps = optimizer_steps(n_examples, cfg)
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=1, max_steps=steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        warmup_steps=math.ceil(cfg.warmup_ratio * steps), max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        train_sampling_strategy="sequential", remove_unused_columns=False, dataloader_drop_last=False,
        use_cpu=not cfg.use_gpu, **parallel_arguments(cfg), report_to=list(cfg.report_to) or "none",
        disable_tqdm=True, ddp_backend=None if cfg.use_gpu else "gloo",
        average_tokens_across_devices=True)


def load_model(cfg: TrainConfig, path: str):
    """The model a worker trains: float32 whatever `bf16` says (these are the weights the optimizer updates; bf16
    is the compute, `distributed.py`), no KV cache, the fused loss (`loss.py`)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **(
        {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}))
    model.config.use_cache = False  # with a KV cache transformers does not build the mask of packed batches
    use_fused_loss(model, cfg.loss_kernel)
    return model


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: Trainer over the ordered dataset; resume, train, export."""
    import shutil
    import tempfile

    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import AutoConfig, AutoTokenizer

    cfg = TrainConfig(**config["train"])
    os.environ.update(worker_environment(cfg))  # before the model is loaded (FSDP: rank 0 alone reads the weights)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / FINAL_MARKER).exists():  # a finished run restarted: hand its model back again
                ray.train.report({"final": 1}, checkpoint=checkpoint if context.get_world_rank() == 0 else None)
                return
    rank, world = context.get_world_rank(), context.get_world_size()
    dataset = ShardDataset(storage.join(config["order_shards"], shard_name(rank)), config["token_files"], rank, world,
                           cfg.per_device_batch_size)  # this rank's share of the order (`shards.py`)
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    work = Path(tempfile.gettempdir()) / f"adaptcot-train-{config['run_name']}-rank{context.get_world_rank()}"
    args = training_arguments(cfg, len(dataset), str(work))  # before the model: it sets up FSDP's loading
    use_cache = AutoConfig.from_pretrained(config["model"]).use_cache
    model = load_model(cfg, config["model"])
    if cfg.lora is not None:  # after the fused loss: peft's LoraModel calls the replaced forward (`lora.py`)
        model = lora.wrap(model, cfg.lora, cfg.seed)
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
    if trainer.is_fsdp_enabled:  # checkpoints are sharded; the exported model is whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_model(tmp)  # with LoRA: the adapter alone
        if context.get_world_rank() == 0:
            if cfg.lora is not None:  # the adapter kept with its base named, or merged into the base (`lora.py`)
                lora.export(tmp, config["model"], cfg.lora.export)
            tokenizer.save_pretrained(tmp)
            trainer.state.save_to_json(str(Path(tmp) / "trainer_state.json"))
            (Path(tmp) / FINAL_MARKER).write_text(json.dumps({"global_step": trainer.state.global_step,
                                                              "resumed_from_step": resumed_from_step}))
        ray.train.report({"final": 1, "step": trainer.state.global_step},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp) if context.get_world_rank() == 0
                         else None)
    shutil.rmtree(work, ignore_errors=True)

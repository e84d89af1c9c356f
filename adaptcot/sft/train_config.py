"""The `train` section of a job: what SFT trains on, how, and on which resources (METHOD.md §2 for the objectives).

`TrainConfig.fingerprint` names the Ray Train run: the same data and settings resume the same run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from adaptcot.common.settings import Strict

OBJECTIVE_KINDS = {"cot": ("cot",), "cascod": ("cascod_rationale", "cascod_answer")}


class CasCoDConfig(Strict):
    mode: Literal["joint", "two_phase"] = "joint"
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # weight of the answer step in the joint loss


class LoraConfig(Strict):
    """LoRA adapters (peft) instead of full fine-tuning: for a 7B+ student on a few GPUs."""
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"  # peft's name for every linear layer but the LM head
    # merged: one Hugging Face model (base + adapter), loaded like any model; adapter: the adapter alone (small),
    # served by vLLM on top of the base model (evaluation does it with enable_lora).
    export: Literal["merged", "adapter"] = "merged"


class TrainConfig(Strict):
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
    # bf16 compute on GPUs; the weights (FSDP's sharded parameters, the optimizer's master copy) stay float32.
    bf16: bool = False
    gradient_checkpointing: bool = False  # under FSDP: FSDP's activation checkpointing (transformers' advice)
    # The fused linear cross-entropy (`loss.py`): torch's chunked kernel, or Liger's Triton kernel on GPUs.
    loss_kernel: Literal["torch", "liger"] = "torch"
    lora: LoraConfig | None = None
    # FSDP2 with adaptcot's defaults (`distributed.py`); transformers' older words ("full_shard auto_wrap") are
    # read too. `fsdp_config` keys (transformers' names) override the defaults.
    fsdp: bool | str = False
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
        if isinstance(self.fsdp, str):
            unknown = [w for w in self.fsdp.split() if w not in ("full_shard", "shard_grad_op", "offload",
                                                                  "auto_wrap")]
            if unknown:
                raise ValueError(f"fsdp: unknown word(s) {unknown}; use fsdp: true and fsdp_config keys (FSDP2)")
        if self.fsdp and self.deepspeed:
            raise ValueError("choose one of fsdp and deepspeed")
        if (self.fsdp or self.deepspeed) and not self.use_gpu:
            raise ValueError("fsdp / deepspeed settings are for GPU workers (use_gpu: true)")
        if self.loss_kernel == "liger":
            if not self.use_gpu:
                raise ValueError("loss_kernel: liger is a GPU (Triton) kernel; CPU workers use loss_kernel: torch")
            try:
                __import__("liger_kernel")
            except ImportError:
                raise ValueError("loss_kernel: liger needs the `liger-kernel` package (pip install "
                                 "'adaptcot[gpu]')") from None
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

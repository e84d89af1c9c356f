"""How a training run is spread and in which precision (adaptcot's choices; transformers' documented settings).

- **Precision.** The model is always loaded in float32. With `bf16: true` the Trainer computes in bf16 (autocast
  under DDP, FSDP's mixed-precision policy, DeepSpeed's bf16 mode) while the weights the optimizer updates stay
  float32: at lr 1e-5 most updates to a bf16 weight round away.
- **FSDP** (`fsdp: true`): FSDP2, full sharding, wrapped per decoder layer (transformers falls back to the model's
  `_no_split_modules`), FSDP's own activation checkpointing when `gradient_checkpointing` is on (transformers
  advises it over `gradient_checkpointing`, which adds an all-gather in the backward), the checkpoint loaded by
  rank 0 only and broadcast (`cpu_ram_efficient_loading`), and sharded checkpoints (each rank writes and resumes
  its own shard; the exported model is gathered whole). Keys in `fsdp_config` override these.
- **DeepSpeed** (`deepspeed: {...}`, e.g. ZeRO-3 for 32B students): the dict goes to transformers as is, with
  `"auto"` filled in for what the Trainer knows (batch sizes, bf16, gradient clipping).
"""

from __future__ import annotations

from typing import Any

from adaptcot.sft.train_config import TrainConfig

FSDP_DEFAULTS = {
    "version": 2,
    "reshard_after_forward": True,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "cpu_ram_efficient_loading": True,
    "state_dict_type": "SHARDED_STATE_DICT",
}
# transformers' legacy `fsdp` strings (deprecated in transformers 5.19, removed in 5.20), as fsdp_config keys.
LEGACY_FSDP_WORDS = {"full_shard": {"reshard_after_forward": True}, "shard_grad_op": {"reshard_after_forward": False},
                     "offload": {"cpu_offload": True}, "auto_wrap": {}}


def fsdp_config(cfg: TrainConfig) -> dict[str, Any] | None:
    """The `fsdp_config` transformers gets, or None without FSDP."""
    if not cfg.fsdp:
        return None
    out = dict(FSDP_DEFAULTS)
    if isinstance(cfg.fsdp, str):
        for word in cfg.fsdp.split():
            out.update(LEGACY_FSDP_WORDS[word])  # TrainConfig has checked the words
    out["activation_checkpointing"] = cfg.gradient_checkpointing
    out.update({k.removeprefix("fsdp_"): v for k, v in cfg.fsdp_config.items()})
    return out


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any] | None:
    if cfg.deepspeed is None:
        return None
    auto = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}
    return {**auto, **cfg.deepspeed}


def parallel_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """The TrainingArguments fields for precision, sharding and checkpointing of activations."""
    fsdp = fsdp_config(cfg)
    return {"bf16": cfg.bf16, "fsdp": bool(fsdp), "fsdp_config": fsdp, "deepspeed": deepspeed_config(cfg),
            # Under FSDP the activations are checkpointed by FSDP (`activation_checkpointing` above).
            "gradient_checkpointing": cfg.gradient_checkpointing and not fsdp}


def worker_environment(cfg: TrainConfig) -> dict[str, str]:
    """Variables a worker sets before it loads the model: with FSDP's `cpu_ram_efficient_loading`, transformers
    loads real weights on rank 0 only when it sees these (`accelerate launch` would set them; Ray Train does not)."""
    fsdp = fsdp_config(cfg)
    if not fsdp:
        return {}
    return {"ACCELERATE_USE_FSDP": "true",
            "FSDP_CPU_RAM_EFFICIENT_LOADING": str(bool(fsdp.get("cpu_ram_efficient_loading"))).lower()}


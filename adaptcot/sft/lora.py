"""LoRA training with peft (`train.lora`) and its two exports (adaptcot's option; the papers fine-tune all weights).

- `wrap(model, cfg, seed)`: peft's LoRA (task CAUSAL_LM) on a model whose forward `loss.use_fused_loss` has already
  replaced: peft's `LoraModel` calls that forward, so training still goes through the fused loss, and only the
  adapter's weights get gradients. Seeded, so every rank and every run of the same settings starts from the same
  adapter (DDP and FSDP broadcast rank 0's weights anyway; a rerun of the same settings must match).
- `check_targets(model, cfg)`: `target_modules` against the model's modules, on the meta device (no weights read),
  on the driver before any worker starts. peft refuses a list only when none of its names matches anything, so each
  name of a list is checked on its own.
- `export(directory, base, how)`: the directory the Trainer saved the adapter to (`adapter_config.json` +
  `adapter_model.safetensors`; under FSDP it gathers them whole) becomes the exported model. `adapter`: kept as is,
  with `base_model_name_or_path` (peft's own field, which vLLM ignores) set to the model training started from, so
  `grade/answering.py::lora_adapter` serves it on that base. `merged`: the base is loaded on this process (float32,
  as training holds it), the adapter merged in (`merge_and_unload`), and a plain Hugging Face model written in its
  place. Merging from the saved adapter, not the live model, does not depend on how the live model is sharded
  (only DDP runs here: no GPU).

Gradient checkpointing needs nothing here: transformers' `gradient_checkpointing_enable` (which the Trainer calls on
the peft model) turns on `enable_input_require_grads`, so reentrant checkpointing of frozen layers still carries
gradients to the adapters (`tests/test_sft_lora.py` checks it). Under FSDP the Trainer calls transformers'
`update_fsdp_plugin_peft` itself (the adapters wrapped apart from the frozen weights). Not covered: QLoRA
(quantised bases), DoRA and other peft methods, adapters on the embeddings or the LM head served by vLLM.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adaptcot.sft.train_config import LoraConfig

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")


def peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                          task_type="CAUSAL_LM")


def wrap(model, cfg: LoraConfig, seed: int):
    """`model` with LoRA adapters (a `PeftModelForCausalLM`); only the adapters are trainable."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)  # the adapters' initial weights
    return get_peft_model(model, peft_config(cfg))


def check_targets(model_path: str, cfg: LoraConfig) -> None:
    """Fail naming `train.lora.target_modules` when a target names no module of the model (weights not read)."""
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    names = [name for name, _ in model.named_modules()]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    if isinstance(cfg.target_modules, list):  # a string is one regex (or all-linear): peft's own check below
        one = [peft_config(cfg.model_copy(update={"target_modules": [t]})) for t in cfg.target_modules]
        unknown = [t for t, c in zip(cfg.target_modules, one)
                   if not any(check_target_module_exists(c, n) for n in names)]
        if unknown:
            raise ValueError(f"train.lora.target_modules: {unknown} name no module of {model_path} (its linear "
                             f"layers: {linear}; or use all-linear)")
    try:
        wrap(model, cfg, seed=0)
    except ValueError as e:  # e.g. a module type LoRA does not support (peft prints the module: keep its name)
        message = re.sub(r"\(.*\) is not supported", " is not supported", str(e), flags=re.DOTALL)
        raise ValueError(f"train.lora.target_modules: {message}") from None


def export(directory: str | Path, base: str, how: str) -> None:
    """Turn the adapter the Trainer saved in `directory` into the exported model (`adapter` or `merged`)."""
    directory = Path(directory)
    config_path = directory / "adapter_config.json"
    if how == "adapter":
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(config, indent=2))
        return
    merged = merge(directory, base)
    for name in ADAPTER_FILES:
        (directory / name).unlink(missing_ok=True)
    merged.save_pretrained(directory)


def merge(adapter_dir: str | Path, base: str):
    """The base model with the adapter merged into its weights: a plain transformers model (float32)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()

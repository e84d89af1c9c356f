"""Precision and sharding of training: float32 weights under bf16 compute (run here on the CPU), FSDP and DeepSpeed
settings as transformers and accelerate read them (rendered here), and GPU runs that skip without CUDA."""

from pathlib import Path

import pytest

from adaptcot.sft.distributed import deepspeed_config, fsdp_config, parallel_arguments, worker_environment
from adaptcot.sft.train_config import TrainConfig


def gpu_config(**kw) -> TrainConfig:
    return TrainConfig(**{"model": "m", "use_gpu": True, "bf16": True, "gradient_checkpointing": True, **kw})


def test_fsdp_uses_fsdp2_its_own_activation_checkpointing_sharded_checkpoints_and_rank0_loading():
    from accelerate import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    args = parallel_arguments(gpu_config(fsdp=True))
    assert args["fsdp"] is True and args["gradient_checkpointing"] is False  # FSDP checkpoints the activations
    # What transformers makes of it (use_cpu only because this machine has no GPU: the FSDP fields do not depend
    # on it); a key transformers does not know would be silently ignored, so the rendered plugin is checked.
    rendered = TrainingArguments(output_dir="unused", use_cpu=True, **{**args, "bf16": False}).fsdp_plugin_args
    assert rendered == {"fsdp_version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                        "activation_checkpointing": True, "cpu_ram_efficient_loading": True,
                        "state_dict_type": "SHARDED_STATE_DICT"}
    plugin = FullyShardedDataParallelPlugin(**rendered)
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing and plugin.cpu_ram_efficient_loading
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    assert worker_environment(gpu_config(fsdp=True)) == {"ACCELERATE_USE_FSDP": "true",
                                                         "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    assert worker_environment(gpu_config()) == {}


def test_older_fsdp_words_and_overrides_are_read_and_unknown_words_refused():
    from pydantic import ValidationError

    assert fsdp_config(gpu_config(fsdp="full_shard auto_wrap")) == fsdp_config(gpu_config(fsdp=True))
    assert fsdp_config(gpu_config(fsdp="shard_grad_op offload")) == {
        **fsdp_config(gpu_config(fsdp=True)), "reshard_after_forward": False, "cpu_offload": True}
    custom = fsdp_config(gpu_config(fsdp=True, fsdp_config={"fsdp_state_dict_type": "FULL_STATE_DICT",
                                                            "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"]}))
    assert custom["state_dict_type"] == "FULL_STATE_DICT" and custom["transformer_layer_cls_to_wrap"]
    assert fsdp_config(gpu_config(fsdp=True, gradient_checkpointing=False))["activation_checkpointing"] is False
    with pytest.raises(ValidationError, match="fsdp: unknown word"):
        gpu_config(fsdp="full_shard hybrid")
    with pytest.raises(ValidationError, match="GPU workers"):
        TrainConfig(model="m", fsdp=True)


def test_deepspeed_gets_the_trainers_values_for_what_it_leaves_to_auto():
    zero3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}
    rendered = deepspeed_config(gpu_config(deepspeed=zero3))
    assert rendered["zero_optimization"] == zero3["zero_optimization"]
    assert rendered["bf16"] == {"enabled": "auto"} and rendered["train_micro_batch_size_per_gpu"] == "auto"
    assert parallel_arguments(gpu_config(deepspeed=zero3))["gradient_checkpointing"] is True  # not FSDP's
    assert deepspeed_config(gpu_config(deepspeed={**zero3, "bf16": {"enabled": False}}))["bf16"] == {"enabled": False}


def test_bf16_training_keeps_float32_weights_and_the_small_updates_bf16_weights_would_lose(tiny_models_dir, tmp_path):
    """The GPU settings' precision path, run on the CPU (bf16 autocast): the worker's model loading, the Trainer
    from the same arguments but `use_cpu`. After two steps at lr 1e-5 the weights are still float32, and most of
    what changed is smaller than half a bf16 step of the weight (an update a bf16 weight would round away)."""
    import torch
    import torch.distributed as dist

    from adaptcot.sft.trainer import SFTCollator, load_model, make_trainer_class, training_arguments

    cfg = gpu_config(learning_rate=1e-5, per_device_batch_size=2, max_steps=2, warmup_ratio=0.0,
                     lr_scheduler="constant", gradient_checkpointing=False)
    model = load_model(cfg, tiny_models_dir["student"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(p.dtype == torch.float32 for p in before.values())
    data = [{"input_ids": list(range(5, 40)), "prompt_tokens": 4, "kind": 0} for _ in range(4)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        args = training_arguments(cfg.model_copy(update={"use_gpu": False}), 4, str(tmp_path / "out"))
        assert args.bf16
        trainer = make_trainer_class()(model=model, args=args, train_dataset=data, data_collator=SFTCollator(0, False))
        assert trainer.accelerator.mixed_precision == "bf16"
        trainer.train()
    finally:
        dist.destroy_process_group()
    changed = lost = 0
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        delta = (p.detach() - before[name]).abs()
        half_step = before[name].abs() * 2.0 ** -9  # half the spacing of bf16 (8 bits of mantissa) at the weight
        moved = delta > 0
        changed += int(moved.sum())
        lost += int((moved & (delta < half_step)).sum())
    assert changed > 0 and lost / changed > 0.5, (changed, lost)


cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA GPUs")


@cuda
@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.device_count() < 2, reason="FSDP needs two GPUs")
def test_fsdp_on_two_gpus_trains_checkpoints_sharded_and_exports_a_whole_float32_model(ray_session, tiny_models_dir,
                                                                                         tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from adaptcot.sft.ray_train import train
    from tests.test_sft_train import records, write_records

    data = write_records(records(16, kinds=("cot",)), tmp_path / "records.parquet")
    cfg = gpu_config(model=tiny_models_dir["student"], data=str(data), out=str(tmp_path / "train"), fsdp=True,
                     num_workers=2, per_device_batch_size=2, epochs=2, save_steps=2, max_seq_len=512)
    report = train(cfg)
    assert report.global_step > 0
    shards = list(Path(tmp_path / "train" / "ray").rglob("*.distcp"))
    assert shards, "FSDP checkpoints are sharded (one file per rank)"
    model = AutoModelForCausalLM.from_pretrained(report.model_dir, dtype=torch.float32)
    assert model.num_parameters() > 0


@cuda
@pytest.mark.slow
def test_the_liger_kernel_gives_the_torch_kernels_loss(tiny_models_dir):
    pytest.importorskip("liger_kernel")
    import torch

    from adaptcot.sft.loss import fused_linear_cross_entropy

    torch.manual_seed(0)
    rows = torch.randn(512, 64, device="cuda")
    weight = torch.randn(151_936, 64, device="cuda") * 0.02
    targets = torch.randint(0, 151_936, (512,), device="cuda")
    torch.testing.assert_close(fused_linear_cross_entropy(rows, weight, None, targets, "liger"),
                               fused_linear_cross_entropy(rows, weight, None, targets, "torch"), rtol=1e-4, atol=1e-3)


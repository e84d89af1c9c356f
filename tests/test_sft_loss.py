"""The fused SFT loss: the same loss and gradients as the full-logit loss it replaced, through the trainer's own
`compute_loss` (both objectives, padded and packed batches), and the weights kept in float32 under bf16 settings."""

import copy

import pytest

from adaptcot.sft.loss import reference_kind_sums, use_fused_loss
from adaptcot.sft.order import KIND_CODES, tokenize_records
from adaptcot.sft.train_config import TrainConfig
from adaptcot.sft.trainer import SFTCollator, make_trainer_class, training_arguments
from tests.test_sft_train import records


@pytest.fixture(scope="module")
def tokenizer(tiny_models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models_dir["student"])


def batch_of(tokenizer, objective: str, packed: bool):
    kinds = ("cot",) if objective == "cot" else ("cascod_rationale", "cascod_answer")
    cfg = TrainConfig(model="unused", max_seq_len=512, objective=objective, per_device_batch_size=4)
    table, _ = tokenize_records(records(3, kinds=kinds), tokenizer, cfg)
    examples = [{"input_ids": r["input_ids"], "prompt_tokens": r["prompt_tokens"], "kind": KIND_CODES[r["kind"]]}
                for r in table.to_pylist()]
    return SFTCollator(pad_id=0, packed=packed)(examples)


@pytest.fixture
def one_process_group(tmp_path):
    """A one-process gloo group, as Ray Train sets up in each worker before the Trainer is built."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def trainer_for(model, tmp_path, objective: str):
    cfg = TrainConfig(model="unused", objective=objective, per_device_batch_size=2, max_steps=1)
    alpha = 0.3 if objective == "cascod" else None
    return make_trainer_class()(model=model, args=training_arguments(cfg, 4, str(tmp_path)), alpha=alpha)


@pytest.mark.parametrize("objective,packed", [("cot", False), ("cot", True), ("cascod", False), ("cascod", True)])
def test_the_fused_loss_gives_the_full_logit_loss_and_its_gradients(tiny_models_dir, tokenizer, tmp_path,
                                                                     one_process_group, objective, packed):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    before = AutoModelForCausalLM.from_pretrained(tiny_models_dir["student"], dtype=torch.float32)
    fused = copy.deepcopy(before)
    use_fused_loss(fused)
    batch = batch_of(tokenizer, objective, packed)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "token_kind")}
    if objective == "cot":  # what training did before: the model's own token-mean loss
        expected = before(**inputs, labels=batch["labels"], use_cache=False).loss
    else:  # CasCoD's joint loss from full float32 logits
        sums = reference_kind_sums(before(**inputs, use_cache=False).logits, batch["labels"], batch["token_kind"])
        means = {code: s / c for code, (s, c) in sums.items()}
        expected = 0.7 * means[KIND_CODES["cascod_rationale"]] + 0.3 * means[KIND_CODES["cascod_answer"]]
    expected.backward()
    got = trainer_for(fused, tmp_path, objective).compute_loss(fused, dict(batch))
    got.backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grads = dict(before.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)

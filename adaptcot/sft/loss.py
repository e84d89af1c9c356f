"""The SFT loss without full-sequence logits (METHOD.md §2's objectives; the kernel is adaptcot's choice).

A 16k-token CoT at a 152k vocabulary has 2.5 G logits: 10 GB in float32, more with their gradient. Neither objective
builds them. The model's forward is replaced (on the instance, so FSDP, DeepSpeed, DDP and peft still wrap the
call) by one that runs the decoder to its final hidden states, keeps only the positions that have a label, and
hands them with the LM head's weight to a fused linear cross-entropy that works through the vocabulary in chunks:
torch's `linear_cross_entropy` (CPU and GPU) or Liger's Triton kernel (GPU, `loss_kernel: liger`).

It returns, per objective code (`order.KIND_CODES`), the summed token loss and the token count; the trainer turns
them into the same values as before: the model's token mean for `cot` (normalised by the tokens of the whole
accumulated batch, as transformers does), and the per-objective token means of the CasCoD joint loss.
`reference_kind_sums` is the old way (full logits, upcast to float32), kept for the tests and the memory benchmark.
"""

from __future__ import annotations

import math
import types
from typing import Any

IGNORE = -100
# torch's default chunk holds about half as many logits as the chunk's input has hidden values, so its rows shrink
# with the hidden size: at a tiny model's 128 it is 4 rows and re-reads the 152k-row LM head ~2000 times a step (8x
# slower on the CPU, measured by benchmarks/sft_memory.py). At least 256 rows (~155 MB of float32 logits at 152k):
# real models' hidden sizes already give that or more.
MIN_CHUNK_ROWS = 256


def shifted_targets(labels, token_kind):
    """(targets, kinds) for next-token prediction: position t predicts label t+1 (transformers' shift)."""
    return labels[:, 1:], token_kind[:, 1:]


def kind_sums(hidden, head_weight, head_bias, labels, token_kind, kernel: str = "torch") -> dict[int, tuple]:
    """objective code -> (summed cross-entropy, token count) over the labelled positions, never forming logits
    beyond one chunk of them. `hidden` is the decoder's final hidden state (batch, seq, d)."""
    import torch

    targets, kinds = shifted_targets(labels, token_kind)
    hidden = hidden[:, :-1]
    counted = targets != IGNORE
    out = {}
    for code in torch.unique(kinds[counted]).tolist():
        mask = counted & (kinds == code)
        rows, wanted = hidden[mask], targets[mask]
        out[int(code)] = (fused_linear_cross_entropy(rows, head_weight, head_bias, wanted, kernel),
                          mask.sum())
    return out


def fused_linear_cross_entropy(rows, weight, bias, targets, kernel: str):
    """sum over rows of cross_entropy(rows @ weight.T + bias, targets), the vocabulary worked through in chunks."""
    import torch
    import torch.nn.functional as F

    if kernel == "liger":  # GPU only; TrainConfig checks the package and use_gpu
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE)(weight, rows, targets, bias)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_rows(*rows.shape, weight.shape[0]))
    return F.linear_cross_entropy(rows, weight, targets, linear_bias=bias, reduction="sum", ignore_index=IGNORE,
                                  options=options)


def torch_chunk_rows(rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk torch's `linear_cross_entropy` picks by default (policy "compact", chunking "aspect_ratio:2",
    for float32 on the CPU and bf16 on CUDA): the chunk's logits about half the size of its input rows."""
    target = math.ceil(rows / math.ceil(vocab / hidden))
    return max(1, min((1 << (target - 1).bit_length()) // 2, rows))


def chunk_rows(rows: int, hidden: int, vocab: int) -> int:
    """Rows per chunk of the fused loss: torch's default, at least MIN_CHUNK_ROWS."""
    return max(1, min(rows, max(MIN_CHUNK_ROWS, torch_chunk_rows(rows, hidden, vocab))))


def reference_kind_sums(logits, labels, token_kind) -> dict[int, tuple]:
    """The same sums from full logits upcast to float32 (what training did before; tests and benchmarks only)."""
    import torch.nn.functional as F

    targets, kinds = shifted_targets(labels, token_kind)
    logits = logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                         reduction="none").view_as(targets)
    counted = targets != IGNORE
    return {int(code): ((ce * (counted & (kinds == code))).sum(), (counted & (kinds == code)).sum())
            for code in kinds[counted].unique().tolist()}


class KindSumsOutput(dict):
    """What the replaced forward returns: {"kind_sums": {code: (sum, count)}, "zero": 0 on the graph}."""


def check_supported(model) -> None:
    """Refuse models whose logits are not a plain linear head of the final hidden state."""
    cfg = model.config
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(cfg, name, None) not in (None, 1.0):
            raise ValueError(f"train: {cfg.model_type} scales or caps its logits ({name}); the fused loss assumes a "
                             "plain linear head, which this model does not have")
    if model.get_output_embeddings() is None or not hasattr(model, "get_decoder"):
        raise ValueError(f"train: {type(model).__name__} has no separate decoder and LM head to fuse the loss over")


def use_fused_loss(model, kernel: str = "torch") -> None:
    """Replace `model.forward` (this instance only) by decoder -> fused loss; returns `KindSumsOutput`."""
    check_supported(model)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, token_kind=None,
                **kwargs: Any):
        kwargs.pop("num_items_in_batch", None)  # the trainer normalises the sums
        hidden = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False, **kwargs).last_hidden_state
        head = self.get_output_embeddings()
        # `zero` keeps the loss on the graph when a micro-batch has no labelled token (every rank must backward).
        return KindSumsOutput(kind_sums=kind_sums(hidden, head.weight, head.bias, labels, token_kind, kernel),
                              zero=hidden.sum() * 0.0)

    model.forward = types.MethodType(forward, model)

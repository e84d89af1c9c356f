"""A Qwen2 process reward model (PRM) for transformers, laid out like Qwen2.5-Math-PRM-7B.

The model is a Qwen2 backbone (`model.*` weights) and a two-layer head
`score = Sequential(Linear(h, h), ReLU(), Linear(h, 2))` (`score.0.*`, `score.2.*`) that gives every token two logits;
P(step correct) = softmax(logits)[..., 1], read at the step separator tokens (`config.step_separator`, `<extra_0>`).
vLLM serves the same weights natively as `Qwen2ForProcessRewardModel` (vllm/model_executor/models/qwen2_rm.py).

This file is copied into every saved PRM directory and named in `config.auto_map`, so
`AutoModel.from_pretrained(dir, trust_remote_code=True)` works offline, as with the real Qwen2.5-Math-PRM. It must
therefore import nothing but torch and transformers. `step_probs_from_logits` (transformers) and `prm_step_probs`
(vLLM) turn model outputs into one probability per step; the latter only reads vLLM's output, it does not import it.
Training a PRM, labels and losses are not covered.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput

STEP_SEPARATOR = "<extra_0>"


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2 backbone plus a per-token 2-class head; `logits` has shape [batch, seq, 2] (class 1 = step correct)."""

    def __init__(self, config):
        super().__init__(config)
        # vLLM forces num_labels = 2 for this architecture; mirror it so config and weights agree.
        self.num_labels = 2
        self.model = Qwen2Model(config)
        hidden = config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, self.num_labels))
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        # No KV cache: a PRM scores a whole finished solution in one pass.
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        # outputs[0] is the logits (loss is None), which is what Qwen's PRM usage snippet indexes.
        return TokenClassifierOutput(
            logits=self.score(out.last_hidden_state), hidden_states=out.hidden_states, attentions=out.attentions
        )


def step_probs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, step_token_id: int) -> list[list[float]]:
    """P(step correct) at each step separator, per sequence, from transformers logits [batch, seq, 2]."""
    probs = logits.float().softmax(dim=-1)[..., 1]
    mask = input_ids == step_token_id
    return [row[m].tolist() for row, m in zip(probs, mask)]


def prm_step_probs(output: Any) -> list[float]:
    """P(step correct) per step from one vLLM `LLM.encode(..., pooling_task="token_classify")` result.

    With `PoolerConfig(step_tag_id=<id of <extra_0>>)`, vLLM keeps only the step-separator positions and applies
    softmax, so `output.outputs.data` is a float tensor [n_steps, 2] of class probabilities; column 1 is P(correct).
    """
    data = output.outputs.data
    return data[:, 1].float().tolist()

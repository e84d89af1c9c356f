"""GPU memory of one SFT step, per GPU, from the student's shape and the training settings (issue 22).

    python -m adaptcot.sft.memory      # the per-size table configs/{cluster,zte,zte_code,cascod}.yaml carry

`step_memory(shape, plan)` adds up, in bytes per GPU, with P parameters on G GPUs and T = max_seq_len x micro-batch
tokens per micro-batch (a packed row at its longest):
- states, sharded over G: FSDP2 keeps float32 parameters (the master copy, `distributed.py`) 4 B, float32 gradients
  4 B and AdamW's two float32 moments 8 B a parameter; ZeRO-3 with bf16 keeps bf16 parameters 2 B, bf16 gradients
  2 B and float32 master weights and moments 12 B (the ZeRO paper's 16 B). With CPU offload they live on the host.
- gathered: parameters unsharded for compute, in bf16: the decoder layer computing and the one prefetched, the
  embedding and the LM head (FSDP2 keeps the root's parameters from forward to backward), and one layer's unsharded
  gradient before its reduce-scatter. ZeRO-3 is counted the same (its stage3_max_live_parameters allows more).
- activations, from what each op of transformers' Qwen2 decoder layer saves for its backward, per token and layer:
  8h (the two RMSNorms' float32 inputs) + 4bh (normed inputs, q, attention output) + 2b*kv (k, v) + 4bI (gate, SiLU,
  up, their product), b the compute dtype's bytes; flash-attention's softmax statistics are left out. With
  activation checkpointing each layer keeps only its input (b*h) and one layer is recomputed at a time. Plus the
  gradients in flight in one layer's backward, b(h + 3I), and the final norm, (4 + b)h, per token.
- the loss: full logits (what training did before): 12 B per token and vocabulary entry, the float32 log-probs
  cross-entropy saves, their gradient and the logits' gradient, alive together in its backward (measured on the CPU:
  `benchmarks/sft_memory.py`, `tests/test_sft_memory.py`); fused (`loss.py`): one chunk of float32 logits (and its
  bf16 copy under bf16) of torch's chunk size, the labelled hidden rows and their gradient (2bTh), and the LM
  head's gradient each call precomputes (one call per objective: CasCoD joint makes two).
- the optimizer step's temporaries (foreach AdamW: a float32 copy of the shard; ZeRO-3: the float32 gradient of
  one sub-group of at most 1e9 parameters), which come after the activations are freed: the peak is the larger.

An estimate, counted as all alive at once (with gradient accumulation the gradients do stay across micro-batches).
Not covered: the CUDA context, NCCL's buffers and allocator fragmentation (FIT_FRACTION leaves them 10%), LoRA,
sequence parallelism, models other than Qwen2-style decoders (e.g. configs/trace_style.yaml's Nemotron-H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from adaptcot.sft.loss import chunk_rows

GiB = 2**30
MiB = 2**20
FIT_FRACTION = 0.9  # adaptcot's margin: a plan fits when its total is under 90% of the GPU's memory


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    tied: bool  # the LM head is the embedding matrix

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def layer_params(self) -> int:
        h, kv = self.hidden, self.kv_dim
        return 2 * h * h + h + 2 * (h * kv + kv) + 3 * h * self.intermediate + 2 * h  # q,o; q bias; k,v; MLP; norms

    def params(self) -> int:
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.layers * self.layer_params() + self.hidden


# Qwen2.5's config.json values (hidden_size, num_hidden_layers, vocab_size, intermediate_size, num_attention_heads,
# num_key_value_heads, tie_word_embeddings) from huggingface.co/Qwen/Qwen2.5-{1.5B,7B,32B}-Instruct/blob/main/
# config.json; the -Instruct models share their base's shapes. Parameters: 1.54B, 7.62B, 32.76B.
QWEN25 = {
    "1.5B": Shape("Qwen2.5-1.5B", 1536, 28, 151_936, 8960, 12, 2, tied=True),
    "7B": Shape("Qwen2.5-7B", 3584, 28, 152_064, 18_944, 28, 4, tied=False),
    "32B": Shape("Qwen2.5-32B", 5120, 64, 152_064, 27_648, 40, 8, tied=False),
}
# Total device memory as CUDA reports it (nvidia-smi's total; torch.cuda.get_device_properties().total_memory).
GPUS = {"A10G-24GB": 23_028 * MiB, "A100-80GB": 85_056_798_720, "H100-80GB": 81_559 * MiB}


@dataclass(frozen=True)
class Plan:
    gpus: int
    sharding: Literal["fsdp", "zero3", "none"]  # FSDP2 full sharding, DeepSpeed ZeRO-3, or unsharded (one GPU, DDP)
    seq_len: int  # train.max_seq_len
    micro_batch: int = 1  # train.per_device_batch_size, packed into one row
    checkpointing: bool = True  # train.gradient_checkpointing
    offload: bool = False  # parameters, gradients and optimizer states on the host (fsdp_config: {cpu_offload: true})
    compute_bytes: int = 2  # bf16 (train.bf16); 4 for float32 (the CPU)
    objectives: int = 1  # fused loss calls per micro-batch: 2 for CasCoD's joint loss
    gpu: str = "H100-80GB"

    @property
    def tokens(self) -> int:
        return self.seq_len * self.micro_batch


@dataclass(frozen=True)
class StepMemory:
    """Bytes per GPU of each term (`host`: the offloaded states, per GPU, in host memory)."""
    weights: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int
    loss_full: int  # full-sequence logits (before issue 22)
    loss_fused: int  # the fused linear cross-entropy (`loss.py`)
    step_temporaries: int
    host: int

    def total(self, fused: bool = True) -> int:
        loss = self.loss_fused if fused else self.loss_full
        return (self.weights + self.gradients + self.optimizer
                + max(self.gathered + self.activations + loss, self.step_temporaries))


def activation_bytes(shape: Shape, plan: Plan) -> int:
    h, inter, b, t = shape.hidden, shape.intermediate, plan.compute_bytes, plan.tokens
    per_layer = 8 * h + 4 * b * h + 2 * b * shape.kv_dim + 4 * b * inter  # per token, see the module docstring
    kept = shape.layers * b * h + per_layer if plan.checkpointing else shape.layers * per_layer
    return t * (kept + b * (h + 3 * inter) + (4 + b) * h)


def loss_bytes(shape: Shape, plan: Plan, fused: bool) -> int:
    t, v, h, b = plan.tokens, shape.vocab, shape.hidden, plan.compute_bytes
    # LM-head gradients beside the model's own gradients: unsharded, the first one is the gradient itself.
    head_grads = (plan.objectives if fused else 1) - int(plan.sharding == "none")
    if not fused:
        return 12 * t * v + head_grads * v * h * b
    chunk = chunk_rows(t, h, v) * v * (4 + (b if b < 4 else 0))
    return chunk + 2 * b * t * h + head_grads * v * h * b


def step_memory(shape: Shape, plan: Plan) -> StepMemory:
    p, g = shape.params(), (plan.gpus if plan.sharding != "none" else 1)
    weights, gradients, optimizer = {"fsdp": (4, 4, 8), "zero3": (2, 2, 12), "none": (4, 4, 8)}[plan.sharding]
    states = [math.ceil(n * p / g) for n in (weights, gradients, optimizer)]
    gathered = 0
    if plan.sharding != "none":
        embedding_and_head = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        gathered = 2 * (3 * shape.layer_params() + embedding_and_head)
    step = 4 * min(math.ceil(p / g), 10**9) if plan.sharding == "zero3" else 4 * math.ceil(p / g)
    host = 0
    if plan.offload:  # the optimizer steps on the host
        host, states, step = sum(states), [0, 0, 0], 0
    return StepMemory(*states, gathered=gathered, activations=activation_bytes(shape, plan),
                      loss_full=loss_bytes(shape, plan, fused=False), loss_fused=loss_bytes(shape, plan, fused=True),
                      step_temporaries=step, host=host)


def fits(shape: Shape, plan: Plan, fused: bool = True) -> bool:
    return step_memory(shape, plan).total(fused) <= FIT_FRACTION * GPUS[plan.gpu]


# adaptcot's settings per student size: FSDP for 1.5B and 7B, ZeRO-3 for 32B; every one with bf16, activation
# checkpointing, flash-attention 2 and packed micro-batches of up to 32768 tokens (the teacher's 30720 + a prompt).
# Two records per micro-batch is what CasCoD's joint loss needs (a rationale and its answer share one).
PLANS = (
    ("1.5B", Plan(gpus=8, sharding="fsdp", seq_len=32_768, micro_batch=1, gpu="A10G-24GB")),
    ("1.5B", Plan(gpus=8, sharding="fsdp", seq_len=32_768, micro_batch=2, objectives=2, offload=True,
                  gpu="A10G-24GB")),
    ("7B", Plan(gpus=8, sharding="fsdp", seq_len=32_768, micro_batch=2, objectives=2, gpu="A100-80GB")),
    ("32B", Plan(gpus=32, sharding="zero3", seq_len=32_768, micro_batch=1, gpu="H100-80GB")),
)


def table(plans=PLANS) -> str:
    """The plans' arithmetic as comment lines (GiB per GPU), as the configs carry them."""
    gib = lambda n: f"{n / GiB:.1f}"  # noqa: E731
    lines = [
        "# GiB per GPU of one training step (python -m adaptcot.sft.memory; docs/training.md, \"Memory\"): bf16",
        "# compute on float32 weights, activation checkpointing, flash-attention 2, packed rows of max_seq_len x",
        "# micro-batch tokens. states: weights + gradients + AdamW (h: on the host), gather: unsharded bf16",
        f"# parameters; fits: total under {FIT_FRACTION:.0%} of the GPU. Right: the same with full logits (before).",
        f"# {'student':<13}{'GPUs':<15}{'sharding':<13}{'tokens':<10}{'states':>6}{'gather':>7}{'activ':>6}"
        f"{'loss':>5}{'total':>6}{'GPU':>6}{'':<6}{'full: loss':>10}{'total':>6}"]
    for size, plan in plans:
        shape, m = QWEN25[size], step_memory(QWEN25[size], plan)
        states = gib(m.host) + "h" if plan.offload else gib(m.weights + m.gradients + m.optimizer)
        verdict = lambda fused: "fits" if fits(shape, plan, fused) else "no"  # noqa: E731
        lines.append(
            f"# {shape.name:<13}{f'{plan.gpus} x {plan.gpu}':<15}"
            f"{plan.sharding + ('+offload' if plan.offload else ''):<13}{f'{plan.seq_len} x {plan.micro_batch}':<10}"
            f"{states:>6}{gib(m.gathered):>7}{gib(m.activations):>6}{gib(m.loss_fused):>5}{gib(m.total()):>6}"
            f"{gib(GPUS[plan.gpu]):>6} {verdict(True):<5}{gib(m.loss_full):>10}{gib(m.total(fused=False)):>6} "
            f"{verdict(False)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())

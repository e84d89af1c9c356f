"""Build tiny, randomly initialised student, teacher and PRM models locally, with no network, in a few seconds.

They stand in for the real models (a small Qwen2.5 student, a large teacher, Qwen2.5-Math-PRM-7B) in tests and as
the tool's local default, so every stage can run end to end on a CPU machine without the Hugging Face Hub. The
three share one byte-level BPE tokenizer trained here on a small generated corpus, with Qwen's special tokens and
ChatML chat template. The student and teacher are `Qwen2ForCausalLM`; the PRM is a `Qwen2ForProcessRewardModel`
(see `adaptcot.prm_modeling`), which vLLM serves natively and transformers loads through `trust_remote_code`.

Covered: the tokenizer, the three model directories, and skipping a rebuild that already exists. Not covered: any
training (the weights are random, so generations and scores are noise with the right shapes and types),
downloading real models, and guarding against two processes building into the same directory at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from adaptcot.demo import prm_modeling
from adaptcot.demo.prm_modeling import STEP_SEPARATOR, Qwen2ForProcessRewardModel

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a chat turn, hence the eos of every model
THINK_START, THINK_END = "<think>", "</think>"
# Ids follow this order (0..5) because the BPE trainer puts special tokens first.
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, THINK_START, THINK_END, STEP_SEPARATOR)
VOCAB_SIZE = 1024
MARKER = "tiny_models.json"
# Bump when the build changes in a way that changes the files, so old builds are redone rather than reused.
BUILD_FORMAT = 1

# Qwen2.5's ChatML template without the tool-calling branches and without its default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

def qwen2_shape(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads)


# Head size 32 in every model: vLLM's CPU attention supports head sizes 32, 64, ... but not 16.
_SHAPES = {"student": qwen2_shape(64, 128, 2, 2, 1), "teacher": qwen2_shape(128, 256, 4, 4, 2),
           "prm": qwen2_shape(64, 128, 2, 2, 1)}
# Distinct seed offsets so the PRM backbone is not a copy of the student's (they have the same shape).
_SEED_OFFSET = {"student": 0, "teacher": 1, "prm": 2}

_WORDS = (
    "the a of to and is in that it for as with on be by this are from at which not can we if so then let find "
    "solve value number answer step total each more than less sum product equal first second third next last "
    "because therefore check wait hmm think again right wrong remaining half twice apples books cost dollars hours "
    "miles minutes days weeks years price money buy sell bought sold share shared left gave give gets got has had "
    "have will would should could must might each every some many few all none both either neither other another "
    "same different between among after before during while until since when where what who whose why how "
    "problem question solution result method approach formula equation expression variable function integer "
    "fraction decimal percent ratio rate speed distance time area volume length width height perimeter radius "
    "circle triangle square rectangle angle degrees probability chance expected average mean median mode "
    "multiply divide add subtract plus minus times over under into out up down per simplify compute calculate "
    "evaluate substitute factor expand prove show assume suppose given known unknown positive negative even odd "
    "prime divisible remainder quotient multiple greatest least common digit digits tens ones hundreds thousand "
    "million student teacher school class train car store farmer garden bakery cookies students pages pencils "
    "marbles tickets workers machines water liters meters kilograms grams friend family brother sister mother "
    "father child children people person morning afternoon evening week month year today tomorrow yesterday "
    "correct verify careful carefully indeed actually maybe perhaps note notice recall since thus hence finally"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
    return " ".join(words).capitalize() + rng.choice([".", "?", ",", ":"])


def _math(rng: random.Random) -> str:
    a, b = rng.randint(0, 999), rng.randint(1, 99)
    return rng.choice([
        f"Step {rng.randint(1, 9)}: {a} + {b} = {a + b}.",
        f"{a} \\times {b} = {a * b}, so the answer is $\\boxed{{{a * b}}}$.",
        f"$\\frac{{{a}}}{{{b}}} = {a / b:.3f}$ and $x^{{2}} - {b}x = 0$",
        f"\\[ \\sqrt{{{a}}} \\approx {a ** 0.5:.2f} \\] \\( {a} - {b} = {a - b} \\)",
        f"{a}% of {b * 10} is {a * b / 10:g}; {a} \\div {b} \\cdot 2 \\le {a}",
    ])


def _python(rng: random.Random) -> str:
    a, b, name = rng.randint(0, 99), rng.randint(1, 9), rng.choice(["f", "total", "solve", "count"])
    return f"def {name}(x):\n    # {_sentence(rng)}\n    return [x * {a} + {b} for x in range({b})]\n"


def _corpus(seed: int, n_lines: int = 3000) -> list[str]:
    """A mixed English / math / LaTeX / Python corpus, so common pieces of all four become single tokens."""
    rng = random.Random(seed)
    makers = (_sentence, _math, _math, _python)
    return [rng.choice(makers)(rng) for _ in range(n_lines)]


def build_tokenizer(out_dir: str | Path, seed: int = 0, extra_corpus: list[str] = ()) -> PreTrainedTokenizerFast:
    """Train the shared byte-level BPE (deterministic for a seed), save it to `out_dir` and return it.

    `extra_corpus` lines are trained on too, so a task's own words become single tokens (`world_models`)."""
    tok = Tokenizer(models.BPE())
    # Exactly Qwen2Tokenizer's pipeline, because transformers 5 (so vLLM too) loads any `qwen2` model's tokenizer
    # as Qwen2Tokenizer and rebuilds these parts: NFC, Qwen's split regex (one digit per piece), then byte level.
    # With the full 256-byte alphabet any unicode text encodes, and NFC text decodes back exactly.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(seed) + list(extra_corpus), trainer)
    # The think tags are ordinary added tokens, as in Qwen3: never split, but kept by skip_special_tokens decoding.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD_TOKEN, IM_START, IM_END,
                                                                                    STEP_SEPARATOR)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_START, THINK_END)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token=IM_END, pad_token=PAD_TOKEN,
                            chat_template=CHAT_TEMPLATE, model_max_length=4096).save_pretrained(out_dir)
    # Reload and resave as Qwen2Tokenizer: the object returned is the one AutoTokenizer gives, and the saved
    # tokenizer_class names a class transformers 4.x knows too.
    qwen_tok = Qwen2Tokenizer.from_pretrained(out_dir)
    for key in ("is_local", "local_files_only"):  # bookkeeping of this load, not settings worth saving
        qwen_tok.init_kwargs.pop(key, None)
    qwen_tok.save_pretrained(out_dir)
    return qwen_tok


def qwen2_config(tokenizer: PreTrainedTokenizerFast, shape: dict, max_positions: int, **extra) -> Qwen2Config:
    # Pad the vocab to a multiple of 64 like real checkpoints do; a no-op when BPE training filled VOCAB_SIZE.
    vocab = -(-len(tokenizer) // 64) * 64
    return Qwen2Config(vocab_size=vocab, max_position_embeddings=max_positions, dtype="float32", bos_token_id=None,
                       eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                       pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN), **shape, **extra)


def _config(kind: str, tokenizer: PreTrainedTokenizerFast, **extra) -> Qwen2Config:
    # Wider than the 0.02 default so a random model's next-token distribution is not nearly flat: greedy decoding
    # then has clear winners that float rounding differences between engines rarely flip.
    return qwen2_config(tokenizer, _SHAPES[kind], 4096, initializer_range=0.1, **extra)


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> Path:
    # Only eos/pad/bos in generation_config.json: vLLM takes sampling defaults from it, so no temperature etc.
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=model.config.eos_token_id,
                                               pad_token_id=model.config.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    model.generation_config.save_pretrained(out_dir)  # save_pretrained skips it for models that cannot generate
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _build_causal_lm(kind: str, out_dir: str | Path, tokenizer: PreTrainedTokenizerFast, seed: int) -> Path:
    config = _config(kind, tokenizer, tie_word_embeddings=True)
    # fork_rng: seed the init without changing the caller's global torch RNG state.
    with torch.random.fork_rng():
        torch.manual_seed(seed + _SEED_OFFSET[kind])
        model = Qwen2ForCausalLM(config)
    return save_model(model, tokenizer, Path(out_dir))


def build_student(out_dir: str | Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """Save a tiny student `Qwen2ForCausalLM` (hidden 64, 2 layers) with the tokenizer to `out_dir`."""
    return _build_causal_lm("student", out_dir, tokenizer, seed)


def build_teacher(out_dir: str | Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """Save a tiny teacher `Qwen2ForCausalLM` (hidden 128, 4 layers) with the tokenizer to `out_dir`."""
    return _build_causal_lm("teacher", out_dir, tokenizer, seed)


def build_prm(out_dir: str | Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """Save a tiny `Qwen2ForProcessRewardModel` with the tokenizer and its modeling file to `out_dir`."""
    step_id = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    # Real PRM checkpoints have no lm_head, so nothing to tie; step_separator(_id) let other code find the step tag.
    config = _config("prm", tokenizer, tie_word_embeddings=False, num_labels=2)
    config.step_separator, config.step_separator_id = STEP_SEPARATOR, step_id
    config.auto_map = {"AutoModel": "prm_modeling.Qwen2ForProcessRewardModel"}
    with torch.random.fork_rng():
        torch.manual_seed(seed + _SEED_OFFSET["prm"])
        model = Qwen2ForProcessRewardModel(config)
    out = save_model(model, tokenizer, Path(out_dir))
    shutil.copyfile(prm_modeling.__file__, out / "prm_modeling.py")
    return out


def _marker_content(seed: int) -> dict:
    return {"seed": seed, "build_format": BUILD_FORMAT, "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _is_complete(out: Path, seed: int, paths: dict[str, Path]) -> bool:
    # Seed and build format decide reuse; library versions are recorded for diagnosis only, since an upgrade
    # does not make the saved files unloadable and a rebuild would change weights under existing caches.
    try:
        found = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    same = found.get("seed") == seed and found.get("build_format") == BUILD_FORMAT
    # Also redo it if someone deleted a model directory after the build.
    return same and all((path / "model.safetensors").is_file() for path in paths.values())


def build_tiny_models(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build student/, teacher/ and prm/ under `out_dir`, or reuse a complete build with the same seed."""
    out = Path(out_dir)
    paths = {kind: out / kind for kind in ("student", "teacher", "prm")}
    if _is_complete(out, seed, paths):
        return paths
    # Remove the marker first: if this build is killed, the next call sees no marker and starts over.
    (out / MARKER).unlink(missing_ok=True)
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    tokenizer = build_tokenizer(paths["student"], seed)
    build_student(paths["student"], tokenizer, seed)
    build_teacher(paths["teacher"], tokenizer, seed)
    build_prm(paths["prm"], tokenizer, seed)
    tmp = out / f".{MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps(_marker_content(seed), indent=2) + "\n")
    os.replace(tmp, out / MARKER)  # atomic: the marker is either absent or complete
    return paths

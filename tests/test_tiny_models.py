"""The tiny local models: built offline in seconds, loadable by transformers and by vLLM on the CPU, and consistent.

Everything here is real (tokenizers training, transformers, vLLM's in-process CPU engine); nothing is mocked. The
network is blocked while building, to prove the build needs none.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import socket
import time
import unicodedata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub read it at import

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from adaptcot.demo.prm_modeling import prm_step_probs, step_probs_from_logits
from adaptcot.demo.tiny_models import MARKER, SPECIAL_TOKENS, build_tiny_models

KINDS = ("student", "teacher", "prm")
# vLLM on a small CPU box: in-process engine (fast start, no worker process), 1 GiB KV cache, both cores.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}
SOLUTION = "Q: Tom has 3 apples and buys 4 more. How many?\nStep 1: 3 + 4 = 7.<extra_0>\nStep 2: \\boxed{7}.<extra_0>"


def _no_network(*args, **kwargs):
    raise OSError("network access attempted during the tiny model build")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict[str, Path], float]:
    out = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setenv("HF_HUB_OFFLINE", "1")
        start = time.perf_counter()
        paths = build_tiny_models(out, seed=0)
        seconds = time.perf_counter() - start
    return paths, seconds


@pytest.fixture(scope="module")
def paths(built) -> dict[str, Path]:
    return built[0]


@pytest.fixture(scope="module")
def tokenizer(paths):
    return AutoTokenizer.from_pretrained(paths["student"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights_digests(paths: dict[str, Path]) -> dict[str, str]:
    return {kind: _digest(paths[kind] / "model.safetensors") for kind in KINDS}


def test_build_is_fast_offline_and_complete(built):
    paths, seconds = built
    assert seconds < 20, f"build took {seconds:.1f} s"
    assert set(paths) == set(KINDS)
    for kind, path in paths.items():
        assert path.name == kind
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json"):
            assert (path / name).is_file(), f"{kind}/{name} missing"
    marker = json.loads((paths["student"].parent / MARKER).read_text())
    assert marker["seed"] == 0 and {"torch", "transformers", "tokenizers"} <= set(marker)


def test_all_models_share_one_tokenizer(paths):
    assert len({_digest(paths[kind] / "tokenizer.json") for kind in KINDS}) == 1


def test_special_tokens_are_single_fixed_ids(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(f"a{token}b") == tokenizer.encode("a") + [tokenizer.convert_tokens_to_ids(token)] + \
            tokenizer.encode("b")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert 900 <= len(tokenizer) <= 1100
    # Think tags survive skip_special_tokens decoding (the reasoning is the data); the PRM step tag does not.
    ids = tokenizer.encode("<think>x</think> y<extra_0>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think> y"


def _random_text(rng: random.Random) -> str:
    ranges = [(0x20, 0x7E), (0x0A, 0x0A), (0xA0, 0x24F), (0x391, 0x3C9), (0x400, 0x4FF), (0x4E00, 0x4FFF),
              (0x3040, 0x30FF), (0x1F300, 0x1F64F), (0x2200, 0x22FF)]
    chars = [chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 60))]
    return "".join(chars)


def test_tokenizer_round_trips_unicode(tokenizer):
    rng = random.Random(1)
    samples = [_random_text(rng) for _ in range(200)]
    samples += ["", "  leading and trailing  ", "tabs\tand\r\nnewlines\n\n", "naïve café 北京 🙂👍🏽 Ω≈ç√∫",
                "$\\frac{1}{2} + \\boxed{42}$", "def f(x):\n    return x ** 2  # ok", "\x00\x01 control"]
    for text in samples:
        # Like Qwen's, this tokenizer NFC-normalises: exact round trips hold for NFC text (nearly all text).
        text = unicodedata.normalize("NFC", text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_build_is_deterministic(paths, tmp_path):
    again = build_tiny_models(tmp_path / "again", seed=0)
    assert _digest(again["student"] / "tokenizer.json") == _digest(paths["student"] / "tokenizer.json")
    assert _weights_digests(again) == _weights_digests(paths)
    other = build_tiny_models(tmp_path / "other", seed=1)
    assert all(a != b for a, b in zip(_weights_digests(other).values(), _weights_digests(paths).values()))


def test_rebuild_with_same_seed_is_skipped_and_interrupted_build_is_redone(tmp_path):
    first = build_tiny_models(tmp_path, seed=3)
    weights = first["teacher"] / "model.safetensors"
    mtime, digests = weights.stat().st_mtime_ns, _weights_digests(first)
    assert build_tiny_models(tmp_path, seed=3) == first
    assert weights.stat().st_mtime_ns == mtime  # untouched: the build was skipped
    # A killed build leaves no marker; the next call must redo it, to the same bytes.
    (tmp_path / MARKER).unlink()
    (first["prm"] / "model.safetensors").unlink()
    assert _weights_digests(build_tiny_models(tmp_path, seed=3)) == digests
    # So is a build whose model directory was deleted afterwards.
    shutil.rmtree(first["student"])
    assert _weights_digests(build_tiny_models(tmp_path, seed=3)) == digests
    # A different seed replaces the build.
    build_tiny_models(tmp_path, seed=4)
    assert json.loads((tmp_path / MARKER).read_text())["seed"] == 4
    assert _weights_digests(first) != digests


def test_chat_template_ends_with_assistant_prompt(tokenizer):
    messages = [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": "1+1?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nReason step by step.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert no_prompt.endswith("1+1?<|im_end|>\n")


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_causal_lms_generate_with_transformers(paths, tokenizer, kind):
    model = AutoModelForCausalLM.from_pretrained(paths[kind])
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 5 and int(new.max()) < model.config.vocab_size
    assert isinstance(tokenizer.decode(new), str)


def _hf_prm_step_probs(paths, tokenizer, text: str) -> list[float]:
    model = AutoModel.from_pretrained(paths["prm"], trust_remote_code=True)
    assert type(model).__name__ == "Qwen2ForProcessRewardModel"
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids)[0]
    assert logits.shape == (1, ids.shape[1], 2)
    return step_probs_from_logits(logits, ids, model.config.step_separator_id)[0]


def test_prm_loads_with_trust_remote_code(paths, tokenizer):
    config = json.loads((paths["prm"] / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"]
    assert config["step_separator"] == "<extra_0>"
    assert config["step_separator_id"] == tokenizer.convert_tokens_to_ids("<extra_0>")
    probs = _hf_prm_step_probs(paths, tokenizer, SOLUTION)
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs)


# --- vLLM (real, on the CPU, in-process) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_env():
    pytest.importorskip("vllm")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in VLLM_ENV.items():
            mp.setenv(name, value)
        yield


def _llm(path: Path, **kwargs):
    from vllm import LLM

    return LLM(model=str(path), enforce_eager=True, dtype="float32", max_model_len=1024, seed=0, **kwargs)


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_vllm_generates_like_transformers(paths, tokenizer, vllm_env, kind):
    from vllm import SamplingParams

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 6 * 7?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt)
    llm = _llm(paths[kind])
    try:
        out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
        vllm_ids = list(out[0].outputs[0].token_ids)
    finally:
        del llm
        gc.collect()
    assert len(vllm_ids) == 8
    # Same checkpoint, same greedy tokens: vLLM reads the weights, tying and config exactly as transformers does.
    model = AutoModelForCausalLM.from_pretrained(paths[kind])
    hf = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _until_eos(vllm_ids, eos) == _until_eos(hf, eos)


def test_vllm_prm_scores_each_step_like_transformers(paths, tokenizer, vllm_env):
    from vllm.config import PoolerConfig

    step_id = tokenizer.convert_tokens_to_ids("<extra_0>")
    texts = [SOLUTION, "Step 1: guess 5.<extra_0>", SOLUTION.replace("<extra_0>", "") + "<extra_0>" * 3]
    llm = _llm(paths["prm"], runner="pooling", pooler_config=PoolerConfig(step_tag_id=step_id))
    try:
        outputs = llm.encode(texts, pooling_task="token_classify")
    finally:
        del llm
        gc.collect()
    for text, output in zip(texts, outputs):
        assert output.outputs.data.shape == (text.count("<extra_0>"), 2)
        vllm_probs = prm_step_probs(output)
        assert vllm_probs == pytest.approx(_hf_prm_step_probs(paths, tokenizer, text), abs=1e-3)

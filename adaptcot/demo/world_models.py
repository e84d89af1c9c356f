"""Train the local default's student, teacher and PRM on the arithmetic world (`adaptcot.demo.world`), on the CPU.

Random tiny models (`tiny_models`) prove the plumbing; these make the method visible. All three are small Qwen2
transformers trained from scratch here, with a byte-level BPE tokenizer trained on the world's text:
- the **student** (2 layers, hidden 64) learns problems of 1 to `student_max_steps` steps with a small budget: it
  solves short problems and slips at some step of longer ones (a real level histogram), and can learn them from
  the teacher's CoTs;
- the **peer** is the same student trained for `peer_steps` (fewer): a second student of the world, graded into
  the same bank (the transfer arm of the ablation, and one of the PRM's cut-point panel);
- the **teacher** (2 layers, hidden 96) learns the whole ladder, 1 to 6 steps, with a larger budget: nearly all its
  CoTs verify;
- the **PRM** (a `Qwen2ForProcessRewardModel`, as served by vLLM) learns P(step correct) at each step separator from
  both students' sampled answers, each line labelled by `world.label_steps`.

Both write the world's one solution format (`world.solution`). Small transformers learn this task in a sudden
drop of the loss (the step where they learn to find the i-th sentence of the question); the default budgets sit
past it for both, with a margin.

Training is a plain PyTorch loop over chat-formatted (prompt, target) pairs with the loss on the target only: these
are seconds-to-minutes runs on one process, where Ray Train and TRL would add start-up and nothing else (the
student's SFT on teacher CoTs, the product's own stage, does use Ray Train). The build is deterministic for a seed
and cached: `build_world_models` reuses a complete build with the same seed and settings.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from adaptcot.demo import prm_modeling, tiny_models, world
from adaptcot.demo.prm_modeling import STEP_SEPARATOR, Qwen2ForProcessRewardModel
from adaptcot.demo.world import WorldModelsConfig
from adaptcot.grade.answering import MATH_PROMPT
from adaptcot.grade.prm import prm_conversation, split_steps

MARKER = "world_models.json"
KINDS = ("student", "peer", "teacher", "prm")
MAX_NEW_TOKENS = 160  # a 6-step solution is about 120 tokens
BUILD_FORMAT = 3  # 3: the peer student; PRM traces from both students
SHAPES = {"student": tiny_models.qwen2_shape(64, 192, 2, 2, 2), "peer": tiny_models.qwen2_shape(64, 192, 2, 2, 2),
          "teacher": tiny_models.qwen2_shape(96, 288, 2, 3, 3),
          "prm": tiny_models.qwen2_shape(64, 192, 2, 2, 2)}


def build_tokenizer(out_dir: Path, seed: int) -> PreTrainedTokenizerFast:
    rng = random.Random(seed)
    lines = []
    for _ in range(400):
        p = world.problem(rng, rng.randint(1, 6))
        lines += [MATH_PROMPT.format(question=p.question), world.solution(p)]
    return tiny_models.build_tokenizer(out_dir, seed, extra_corpus=lines)


def _config(kind: str, tokenizer: PreTrainedTokenizerFast, **extra) -> Qwen2Config:
    return tiny_models.qwen2_config(tokenizer, SHAPES[kind], 1024, **extra)


def chat_prompt(tokenizer: PreTrainedTokenizerFast, question: str) -> list[int]:
    """The token ids vLLM gives the model for a question: the chat template with the generation prompt."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": MATH_PROMPT.format(question=question)}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def _lm_examples(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    eos = tokenizer.convert_tokens_to_ids(tiny_models.IM_END)
    out = []
    for question, target in pairs:
        prompt = chat_prompt(tokenizer, question)
        answer = tokenizer.encode(target, add_special_tokens=False) + [eos]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def _schedule(step: int, total: int, peak: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _grouped(examples: list, batch_size: int, steps: int, seed: int, group: int = 8):
    """`steps` batches of random examples, each of similar lengths (drawn `group` batches at a time, sorted by length):
    about a quarter less padding than random batches of this world's mixed lengths."""
    rng = random.Random(seed)
    made = 0
    while made < steps:
        pool = sorted((examples[rng.randrange(len(examples))] for _ in range(batch_size * group)), key=lambda e:
                      len(e[0]))
        chunks = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks[:steps - made]:
            yield chunk
        made += len(chunks)


def _batches(examples: list[tuple[list[int], list[int]]], batch_size: int, steps: int, seed: int, pad: int):
    for batch in _grouped(examples, batch_size, steps, seed):
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (x, y) in enumerate(batch):
            ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield ids, labels, mask


def _optimize(model, batches, steps: int, lr: float, loss_fn, log: list[float]) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, steps, lr)
        loss = loss_fn(model, *batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log.append(loss.item())
    model.eval()


def _lm_loss(model, ids, labels, mask):
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def train_lm(kind: str, tokenizer, pairs: list[tuple[str, str]], steps: int, cfg: WorldModelsConfig,
             seed: int) -> tuple[Qwen2ForCausalLM, list[float]]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(_config(kind, tokenizer, tie_word_embeddings=True))
        examples = _lm_examples(tokenizer, pairs)
        losses: list[float] = []
        _optimize(model, _batches(examples, cfg.batch_size, steps, seed, tokenizer.pad_token_id), steps,
                  cfg.learning_rate, _lm_loss, losses)
    return model, losses


@torch.no_grad()
def sample_answers(model, tokenizer, questions: list[str], max_new_tokens: int, temperature: float, seed: int,
                   batch_size: int = 64) -> list[str]:
    """The model's answers to `questions` with transformers' `generate` (left padding, sampling if temperature>0)."""
    tokenizer.padding_side = "left"
    out: list[str] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(questions), batch_size):
            prompts = [chat_prompt(tokenizer, q) for q in questions[i:i + batch_size]]
            width = max(map(len, prompts))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
            mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=temperature > 0, temperature=temperature or None, top_p=1.0,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=model.config.eos_token_id)
            out += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return out


def _prm_examples(tokenizer, traces: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(question, response) -> (ids, labels): label 1/0 at each step separator, -100 elsewhere."""
    step_id = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    out = []
    for question, response in traces:
        p = world.problem_from_question(question)
        steps = split_steps(response, "newline")  # the grader's step rule for this world
        if p is None or not steps:
            continue
        labels_by_step = world.label_steps(p, response)
        text = tokenizer.apply_chat_template(prm_conversation(question, steps, STEP_SEPARATOR), tokenize=False,
                                             add_generation_prompt=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        marks = iter(labels_by_step)
        out.append((ids, [int(next(marks)) if t == step_id else -100 for t in ids]))
    return out


def _prm_loss(model, ids, labels, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)


def train_prm(tokenizer, traces: list[tuple[str, str]], cfg: WorldModelsConfig, seed: int):
    config = _config("prm", tokenizer, tie_word_embeddings=False, num_labels=2)
    config.step_separator = STEP_SEPARATOR
    config.step_separator_id = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR)
    config.auto_map = {"AutoModel": "prm_modeling.Qwen2ForProcessRewardModel"}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForProcessRewardModel(config)
        examples = _prm_examples(tokenizer, traces)
        losses: list[float] = []
        _optimize(model, _batches(examples, cfg.batch_size, cfg.prm_steps, seed, tokenizer.pad_token_id),
                  cfg.prm_steps, cfg.learning_rate, _prm_loss, losses)
    return model, losses, examples


@torch.no_grad()
def prm_step_accuracy(model, examples: list[tuple[list[int], list[int]]]) -> tuple[float, float]:
    """(accuracy of P(correct) > 0.5 at the step separators, accuracy of always guessing the commoner label)."""
    hits, total, positives = 0, 0, 0
    for ids, labels in examples:
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        for position, label in enumerate(labels):
            if label != -100:
                hits += int(int(logits[position].argmax()) == label)
                positives += label
                total += 1
    return hits / total, max(positives, total - positives) / total


def _settings(seed: int, cfg: WorldModelsConfig) -> dict:
    return {"seed": seed, "build_format": BUILD_FORMAT, "config": cfg.model_dump()}


def _is_complete(out: Path, settings: dict) -> bool:
    try:
        found = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return found.get("settings") == settings and all(
        (out / kind / "model.safetensors").is_file() for kind in KINDS)


def greedy_accuracy(model, tokenizer, problems: list[world.Problem]) -> float:
    answers = sample_answers(model, tokenizer, [p.question for p in problems], MAX_NEW_TOKENS, 0.0, 0)
    return sum(f"\\boxed{{{p.answer}}}" in a for p, a in zip(problems, answers)) / len(problems)


def accuracy_report(model, tokenizer, seed: int, per_level: int = 30) -> dict:
    """Greedy accuracy per number of steps (1-6) and on the out-of-distribution split."""
    rng = random.Random(seed + 77)
    report = {str(steps): greedy_accuracy(model, tokenizer, [world.problem(rng, steps) for _ in range(per_level)])
              for steps in range(1, 7)}
    report["ood"] = greedy_accuracy(model, tokenizer, world.problems("ood", 2 * per_level, seed + 77))
    return report


def build_world_models(out_dir: str | Path, seed: int = 0, cfg: WorldModelsConfig = WorldModelsConfig(),
                       log=print) -> dict[str, Path]:
    """Train student/, peer/, teacher/ and prm/ under `out_dir` (or reuse a complete build with the same settings)."""
    out = Path(out_dir)
    settings = _settings(seed, cfg)
    paths = {kind: out / kind for kind in KINDS}
    if _is_complete(out, settings):
        return paths
    (out / MARKER).unlink(missing_ok=True)
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    torch.set_num_threads(cfg.threads)
    started, report = time.time(), {"settings": settings}
    tokenizer = build_tokenizer(paths["student"], seed)

    train_problems = world.problems("train", 6000, seed)
    student_pairs = [(p.question, world.solution(p)) for p in train_problems
                     if len(p.steps) <= cfg.student_max_steps]
    student, losses = train_lm("student", tokenizer, student_pairs, cfg.student_steps, cfg, seed)
    report["student"] = {"examples": len(student_pairs), "loss_first": losses[0], "loss_last": losses[-1]}
    log(f"[world-models] student trained in {time.time() - started:.0f} s, loss {losses[0]:.2f} -> {losses[-1]:.3f}")

    peer, losses = train_lm("peer", tokenizer, student_pairs, cfg.peer_steps, cfg, seed + 5)
    report["peer"] = {"examples": len(student_pairs), "loss_first": losses[0], "loss_last": losses[-1]}
    log(f"[world-models] peer student trained in {time.time() - started:.0f} s, loss {losses[0]:.2f} -> "
        f"{losses[-1]:.3f}")

    teacher_pairs = [(p.question, world.solution(p)) for p in train_problems]
    teacher, losses = train_lm("teacher", tokenizer, teacher_pairs, cfg.teacher_steps, cfg, seed + 1)
    report["teacher"] = {"examples": len(teacher_pairs), "loss_first": losses[0], "loss_last": losses[-1]}
    log(f"[world-models] teacher trained in {time.time() - started:.0f} s, loss {losses[0]:.2f} -> {losses[-1]:.3f}")

    # The PRM learns from both students' mistakes: sampled answers to fresh problems across the pool's ladder.
    rng = random.Random(seed + 2)
    trace_problems = [world.problem(rng, rng.randint(1, 6)) for _ in range(cfg.prm_traces)]
    questions = [p.question for p in trace_problems]
    half = len(questions) // 2
    responses = sample_answers(student, tokenizer, questions[:half], MAX_NEW_TOKENS, 1.0, seed + 2) + \
        sample_answers(peer, tokenizer, questions[half:], MAX_NEW_TOKENS, 1.0, seed + 6)
    prm, losses, examples = train_prm(tokenizer, list(zip(questions, responses)), cfg, seed + 3)
    wrong = sum(0 in [y for y in labels if y != -100] for _, labels in examples)
    heldout = [world.problem(rng, rng.randint(1, 6)) for _ in range(200)]
    heldout_answers = sample_answers(student, tokenizer, [p.question for p in heldout], MAX_NEW_TOKENS, 1.0,
                                     seed + 4)
    accuracy, baseline = prm_step_accuracy(prm, _prm_examples(tokenizer, list(zip(
        [p.question for p in heldout], heldout_answers))))
    report["prm"] = {"traces": len(examples), "traces_with_a_wrong_step": wrong, "loss_first": losses[0],
                     "loss_last": losses[-1], "heldout_step_accuracy": accuracy,
                     "heldout_majority_baseline": baseline}
    log(f"[world-models] PRM trained in {time.time() - started:.0f} s on {len(examples)} student traces "
        f"({wrong} with a wrong step), loss {losses[0]:.2f} -> {losses[-1]:.3f}; held-out step accuracy "
        f"{accuracy:.2f} (always the commoner label: {baseline:.2f})")

    for kind, model in (("student", student), ("peer", peer), ("teacher", teacher), ("prm", prm)):
        tiny_models.save_model(model, tokenizer, paths[kind])
    shutil.copyfile(prm_modeling.__file__, paths["prm"] / "prm_modeling.py")
    report["greedy_accuracy"] = {kind: accuracy_report(m, tokenizer, seed)
                                 for kind, m in (("student", student), ("peer", peer), ("teacher", teacher))}
    report["seconds"] = round(time.time() - started, 1)
    log(f"[world-models] greedy accuracy by steps and OOD: {json.dumps(report['greedy_accuracy'])}")
    tmp = out / f".{MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / MARKER)
    return paths


"""SFT training: assistant-only labels, packing that keeps examples apart, the CasCoD loss, the training order, bad
datasets caught before workers start, and (slow) real Ray Train runs: the loss falls, the exported model loads in
vLLM, a killed run resumes from its checkpoint, CasCoD reports both losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from adaptcot.common.schemas import SFT_RECORDS, SchemaError
from adaptcot.sft.loss import kind_sums
from adaptcot.sft.order import DatasetError, cascod_pairs, padding_fraction, prepare, tokenize_records, training_order
from adaptcot.sft.train_config import TrainConfig
from adaptcot.sft.trainer import SFTCollator

ROOT = Path(__file__).resolve().parents[1]


def records(n: int = 12, kinds=("cot", "cascod_rationale", "cascod_answer"), long_every: int = 0) -> pa.Table:
    """SFT records of arithmetic questions, in the shape `sft_data.build_sft` writes."""
    rows = []
    for i in range(n):
        a, b = i + 3, 2 * i + 1
        question = f"What is {a} + {b}? Put the final answer in \\boxed{{}}."
        work = f"{a} + {b} = {a + b}" + (" and so on" * 200 if long_every and i % long_every == 0 else "")
        turns = {"cot": (question, f"<think>\n{work}\n</think>\n\nThe answer is \\boxed{{{a + b}}}."),
                 "cascod_rationale": (question, work),
                 "cascod_answer": (f"{question}\n\nReasoning:\n{work}\n\nGive the final answer.",
                                   f"The answer is \\boxed{{{a + b}}}.")}
        for kind in kinds:
            user, reply = turns[kind]
            rows.append({"record_id": f"{kind}-{i}", "question_id": f"q{i}", "kind": kind, "cot_id": f"cot{i}",
                         "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                         "level": "wrong_mid", "teacher": "t"})
    return pa.Table.from_pylist(rows, schema=SFT_RECORDS)


@pytest.fixture(scope="module")
def tokenizer(tiny_models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models_dir["student"])


@pytest.fixture(scope="module")
def student(tiny_models_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_models_dir["student"], dtype=torch.float32).eval()


def cfg(**kw) -> TrainConfig:
    return TrainConfig(model="unused", **{"max_seq_len": 512, "per_device_batch_size": 4, "epochs": 1,
                                          "batching": "packed", **kw})


# --- labels, packing, loss -------------------------------------------------------------------------------------------
def test_loss_is_on_the_assistant_turn_only(tokenizer):
    table, report = tokenize_records(records(1, kinds=("cot",)), tokenizer, cfg())
    ids, prompt = table["input_ids"][0].as_py(), table["prompt_tokens"][0].as_py()
    batch = SFTCollator(pad_id=0, packed=False)([{"input_ids": ids, "prompt_tokens": prompt, "kind": 0}])
    labels = batch["labels"][0].tolist()
    trained = [t for t in labels if t != -100]
    assert labels[:prompt] == [-100] * prompt and len(trained) == len(ids) - prompt
    reply = "<think>\n3 + 1 = 4\n</think>\n\nThe answer is \\boxed{4}."
    assert tokenizer.decode(trained) == reply + "<|im_end|>\n"  # the end of turn is learnt: the model must stop
    assert "What is 3 + 1" in tokenizer.decode(ids[:prompt]) and "<|im_start|>assistant" in tokenizer.decode(
        ids[:prompt])
    assert report.target_tokens == len(trained) and report.used == 1


def test_packing_keeps_examples_apart_and_matches_padding(tokenizer, student):
    import torch

    table, _ = tokenize_records(records(3, kinds=("cot",)), tokenizer, cfg())
    examples = [{"input_ids": r["input_ids"], "prompt_tokens": r["prompt_tokens"], "kind": 0}
                for r in table.to_pylist()]
    with torch.no_grad():
        alone = [student(torch.tensor([ex["input_ids"]])).logits[0] for ex in examples]
        packed = SFTCollator(pad_id=0, packed=True)(examples)
        assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
        # use_cache=False as in training: with a KV cache transformers does not look for packed sequences.
        packed_logits = student(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                                use_cache=False).logits[0]
        padded = SFTCollator(pad_id=0, packed=False)(examples)
        padded_logits = student(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    start = 0
    for j, logits in enumerate(alone):
        n = logits.shape[0]
        # Without the block-diagonal mask the 2nd and 3rd examples would attend to the ones before them.
        torch.testing.assert_close(packed_logits[start:start + n], logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(padded_logits[j, :n], logits, atol=1e-4, rtol=1e-4)
        start += n


def test_cascod_joint_loss_weights_the_two_objectives(tokenizer, student):
    import torch

    table, _ = tokenize_records(records(2, kinds=("cascod_rationale", "cascod_answer")), tokenizer,
                                cfg(objective="cascod"))
    codes = {"cascod_rationale": 1, "cascod_answer": 2}
    examples = [{"input_ids": r["input_ids"], "prompt_tokens": r["prompt_tokens"], "kind": codes[r["kind"]]}
                for r in table.to_pylist()]
    collate = SFTCollator(pad_id=0, packed=True)
    with torch.no_grad():
        batch = collate(examples)
        hidden = student.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                               use_cache=False).last_hidden_state
        sums = kind_sums(hidden, student.lm_head.weight, student.lm_head.bias, batch["labels"], batch["token_kind"])
        both = {code: s / c for code, (s, c) in sums.items()}
        for code in (1, 2):  # each objective's loss equals the model's own loss on that objective's records alone
            only = collate([ex for ex in examples if ex["kind"] == code])
            expected = student(input_ids=only["input_ids"], position_ids=only["position_ids"],
                               labels=only["labels"], use_cache=False).loss
            torch.testing.assert_close(both[code], expected, atol=1e-5, rtol=1e-5)
    assert set(both) == {1, 2} and abs(float(both[1] - both[2])) > 1e-3


# --- the training order ----------------------------------------------------------------------------------------------
def test_order_is_seeded_and_covers_every_epoch(tokenizer):
    tokens, _ = tokenize_records(records(10, kinds=("cot",)), tokenizer, cfg())
    a = training_order(tokens, cfg(epochs=3, seed=1))
    assert a.equals(training_order(tokens, cfg(epochs=3, seed=1)))
    assert not a["record_id"].equals(training_order(tokens, cfg(epochs=3, seed=2))["record_id"])
    ids = a["record_id"].to_pylist()
    assert len(ids) == 30 and all(sorted(ids[e * 10:(e + 1) * 10]) == sorted(set(ids)) for e in range(3))


def test_cascod_joint_pairs_share_micro_batches_and_two_phase_orders_phases(tokenizer):
    table = records(9, kinds=("cascod_rationale", "cascod_answer"))
    joint = cfg(objective="cascod", per_device_batch_size=4)
    order, _ = prepare(table, tokenizer, joint)
    kinds = order["kind"].to_pylist()
    qs = [r.split("-")[1] for r in order["record_id"].to_pylist()]
    for s in range(0, len(kinds), 2):
        assert kinds[s:s + 2] == ["cascod_rationale", "cascod_answer"] and qs[s] == qs[s + 1]
    phased, _ = prepare(table, tokenizer, cfg(objective="cascod", cascod={"mode": "two_phase"}, epochs=2))
    assert phased["kind"].to_pylist() == ["cascod_rationale"] * 18 + ["cascod_answer"] * 18
    assert phased["phase"].to_pylist() == [0] * 18 + [1] * 18
    assert cascod_pairs(table)["cascod_rationale-4"] == "cascod_answer-4"


def test_a_cascod_pair_always_shares_a_micro_batch_when_a_partner_is_dropped(tokenizer):
    # Before: with a2 too long, [['r1','a1'], ['r2','r3'], ['a3']]: r2 was trained alone and r3/a3 split.
    rows = records(4, kinds=("cascod_rationale", "cascod_answer")).to_pylist()
    for row in rows:
        if row["record_id"] == "cascod_answer-2":
            row["messages"][-1]["content"] += " and so on" * 200
    table = pa.Table.from_pylist(rows, schema=SFT_RECORDS)
    for batching in ("plain", "grouped", "packed"):
        order, report = prepare(table, tokenizer, cfg(objective="cascod", per_device_batch_size=2, max_seq_len=200,
                                                      batching=batching, epochs=2))
        ids = order["record_id"].to_pylist()
        batches = [ids[s:s + 2] for s in range(0, len(ids), 2)]
        assert all(b[0].replace("rationale", "answer") == b[1] for b in batches), batches
        assert sorted(set(ids)) == sorted(f"cascod_{k}-{i}" for i in (0, 1, 3) for k in ("rationale", "answer"))
        assert (report.too_long, report.partner_dropped, report.used, report.examples) == (1, 1, 6, 12)
        assert "1 whose CasCoD partner was dropped" in report.lines()[0]


def test_joint_cascod_trains_records_without_a_partner_two_by_two(tokenizer):
    table = records(3, kinds=("cascod_rationale",))  # no answer records: no pairs at all
    order, report = prepare(table, tokenizer, cfg(objective="cascod", per_device_batch_size=2))
    assert (report.unpaired_dropped, report.used, order.num_rows) == (1, 2, 2)


def test_length_drops_are_counted_per_level(tokenizer):
    rows = records(8, kinds=("cot",), long_every=2).to_pylist()  # records 0, 2, 4, 6 are too long
    for i, row in enumerate(rows):
        row["level"] = ["wrong_hard", "correct"][i % 4 // 2]
    _, report = prepare(pa.Table.from_pylist(rows, schema=SFT_RECORDS), tokenizer, cfg(max_seq_len=200))
    assert report.too_long_by_level == {"wrong_hard": 2, "correct": 2}
    assert report.lines()[1] == "longer than max_seq_len by level: correct 2, wrong_hard 2"


def test_grouping_cuts_padding_and_packing_removes_it(tokenizer):
    table = records(64, kinds=("cot",), long_every=4)  # a quarter of the records are ~10x longer
    fractions = {}
    for batching in ("plain", "grouped", "packed"):
        order, report = prepare(table, tokenizer, cfg(batching=batching, max_seq_len=4096, seed=3))
        lengths = [len(x) for x in order["input_ids"].to_pylist()]
        assert report.padding_fraction == pytest.approx(padding_fraction(lengths, cfg(batching=batching)), abs=1e-4)
        fractions[batching] = report.padding_fraction
    assert fractions["plain"] > 0.4 and fractions["grouped"] < fractions["plain"] / 3 and fractions["packed"] == 0


# --- bad datasets fail before any worker starts ----------------------------------------------------------------------
def test_too_long_records_are_counted_or_fail(tokenizer):
    table = records(8, kinds=("cot",), long_every=2)
    _, report = prepare(table, tokenizer, cfg(max_seq_len=200))
    assert (report.too_long, report.used) == (4, 4)
    assert "4 longer than max_seq_len" in report.lines()[0]
    with pytest.raises(DatasetError, match="4 of 8 records are longer than max_seq_len 200"):
        prepare(table, tokenizer, cfg(max_seq_len=200, too_long="fail"))


def test_missing_columns_and_nothing_to_train_on(tokenizer):
    with pytest.raises(SchemaError, match="messages"):
        prepare(records(4).drop_columns(["messages"]), tokenizer, cfg())
    with pytest.raises(DatasetError, match="no record left to train on"):
        prepare(records(4, kinds=("cot",)), tokenizer, cfg(objective="cascod"))  # no CasCoD records
    with pytest.raises(DatasetError, match="no record left"):
        prepare(records(4, kinds=("cot",)), tokenizer, cfg(max_seq_len=16))
    with pytest.raises(DatasetError, match="fewer than one optimizer step"):
        prepare(records(3, kinds=("cot",)), tokenizer, cfg(per_device_batch_size=2, grad_accum=2))


def test_config_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="even per_device_batch_size"):
        TrainConfig(model="m", objective="cascod", per_device_batch_size=3)
    with pytest.raises(ValidationError, match="bf16 is for GPU workers"):
        TrainConfig(model="m", bf16=True)
    with pytest.raises(ValidationError, match="alpha"):
        TrainConfig(model="m", cascod={"alpha": 1.5})
    with pytest.raises(ValidationError, match="report_to"):
        TrainConfig(model="m", report_to=["comet"])


def test_the_optimizer_gets_the_configured_weight_decay_and_the_scheduler_its_warmup(tiny_models_dir, tmp_path):
    """What the workers' Trainer builds from the config, read back from its optimizer and scheduler."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, Trainer

    from adaptcot.sft.trainer import training_arguments

    config = TrainConfig(model="m", weight_decay=0.1, warmup_ratio=0.25, learning_rate=1e-3, lr_scheduler="linear",
                         per_device_batch_size=2)
    # A one-process gloo group, as Ray Train sets up in each worker before the Trainer is built.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        args = training_arguments(config, n_examples=40, output_dir=str(tmp_path))  # 20 steps, 5 of warmup
        trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_models_dir["student"]), args=args)
        trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    finally:
        dist.destroy_process_group()
    decays = {group["weight_decay"] for group in trainer.optimizer.param_groups}
    assert decays == {0.1, 0.0}  # weights decay; biases and norms (transformers' rule) do not
    lrs = []
    for _ in range(args.max_steps):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == 0.0 and all(a < b for a, b in zip(lrs[:5], lrs[1:6]))  # linear warmup over 5 steps
    assert lrs[5] == pytest.approx(1e-3) and lrs[-1] < lrs[5]  # the peak, then the decay


# --- real Ray Train runs ---------------------------------------------------------------------------------------------
def job_config(tmp_path: Path, student_dir: str, data: Path, **train) -> Path:
    config = {"run_dir": str(tmp_path / "run"), "tiny_models": {"enabled": False},
              "train": {"model": student_dir, "data": str(data), "num_workers": 2, "cpus_per_worker": 0.5,
                        "torch_threads": 1, "max_seq_len": 512, "per_device_batch_size": 4, "learning_rate": 3e-3,
                        "warmup_ratio": 0.0, "lr_scheduler": "constant", "epochs": 4, "save_steps": 100, **train}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_records(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def metrics(out: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


@pytest.mark.slow
def test_training_lowers_the_loss_and_the_export_generates_in_vllm(ray_session, tiny_models_dir, tmp_path):
    from adaptcot.job import stages
    from adaptcot.job.config import load_config

    data = write_records(records(8, kinds=("cot",)), tmp_path / "sft.parquet")
    job = load_config(job_config(tmp_path, str(tiny_models_dir["student"]), data, epochs=8, batching="packed"))
    report = stages.train(job).report
    out = tmp_path / "run" / "train"
    rows = metrics(out)
    # 8 records x 8 epochs / (4 per worker x 2 workers) = 8 optimizer steps over the same 8 records.
    assert [r["step"] for r in rows] == list(range(1, 9)) and report.global_step == 8
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8, rows
    assert all(r["tokens_per_s"] > 0 and r["padding_fraction"] == 0 for r in rows)
    assert json.loads((out / "train_report.json").read_text())["global_step"] == 8

    # Running again with the same data and settings does not train again.
    again = stages.train(job).report
    assert again.run_name == report.run_name and again.seconds == report.seconds

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(out / "model"), dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              max_num_batched_tokens=512)
    try:
        text = llm.generate(["<|im_start|>user\nWhat is 3 + 1?<|im_end|>\n<|im_start|>assistant\n"],
                            SamplingParams(max_tokens=12, temperature=0))[0].outputs[0]
        assert len(text.token_ids) > 0
    finally:
        del llm


@pytest.mark.slow
def test_cascod_joint_run_reports_both_losses(ray_session, tiny_models_dir, tmp_path):
    from adaptcot.job import stages
    from adaptcot.job.config import load_config

    data = write_records(records(8), tmp_path / "sft.parquet")  # cot records too: ignored by this objective
    job = load_config(job_config(tmp_path, str(tiny_models_dir["student"]), data, objective="cascod",
                                 cascod={"alpha": 0.5}, epochs=2, num_workers=1, cpus_per_worker=1.0))
    report = stages.train(job).report
    rows = metrics(tmp_path / "run" / "train")
    assert report.data["by_kind"] == {"cascod_rationale": 8, "cascod_answer": 8}
    assert report.data["ignored_kinds"] == {"cot": 8}
    for row in rows:
        assert row["loss"] == pytest.approx(0.5 * row["loss_rationale"] + 0.5 * row["loss_answer"], rel=0.02)
    assert rows[-1]["loss_rationale"] < rows[0]["loss_rationale"] and rows[-1]["loss_answer"] < rows[0]["loss_answer"]


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(ray_session, tiny_models_dir, tmp_path):
    from adaptcot.job import stages
    from adaptcot.job.config import load_config

    data = write_records(records(16, kinds=("cot",)), tmp_path / "sft.parquet")
    config = job_config(tmp_path, str(tiny_models_dir["student"]), data, epochs=40, save_steps=4,
                        num_workers=1, cpus_per_worker=1.0)  # 16 x 40 / 4 = 160 steps
    out = tmp_path / "run" / "train"
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "train_sft.py"), "--config", str(config),
                             "--set", f"ray.address={address}"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "wb"))
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "ray").glob("*/checkpoint_*/checkpoint/trainer_state.json")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps past the checkpoint, which the resumed run must redo
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The train worker is an actor of the shared cluster: Ray stops it soon after its driver dies, not at once.
    lines, stable_since = -1, time.time()
    while time.time() - stable_since < 3:
        now = len((out / "metrics.live.jsonl").read_text().splitlines())
        lines, stable_since = (now, time.time()) if now != lines else (lines, stable_since)
        time.sleep(0.2)
    assert not (out / "model").exists(), "the first run finished before it was killed"
    killed_at = max(r["step"] for r in metrics(out, "metrics.live.jsonl"))

    report = stages.train(load_config(config)).report
    assert report.resumed_from_step is not None and report.resumed_from_step % 4 == 0
    assert report.resumed_from_step <= killed_at < 160 and report.global_step == 160
    live = [r["step"] for r in metrics(out, "metrics.live.jsonl")]
    restart = next(i for i in range(1, len(live)) if live[i] <= live[i - 1])
    assert live[:restart] == list(range(1, killed_at + 1))
    assert live[restart:] == list(range(report.resumed_from_step + 1, 161))  # the step count continues
    assert [r["step"] for r in metrics(out)] == list(range(1, 161))  # the final log: every step exactly once


def test_cli_refuses_a_bad_dataset_before_any_worker_starts(ray_session, tiny_models_dir, tmp_path, capsys):
    from adaptcot.job.cli import main as cli

    data = write_records(records(8, kinds=("cot",), long_every=1), tmp_path / "sft.parquet")  # all too long
    config = job_config(tmp_path, str(tiny_models_dir["student"]), data, max_seq_len=128, too_long="fail")
    assert cli(["train", "--config", str(config)]) == 2
    assert "8 of 8 records are longer than max_seq_len 128" in capsys.readouterr().err
    assert not (tmp_path / "run" / "train" / "ray").exists()  # no Ray Train run was started

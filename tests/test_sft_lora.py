"""LoRA training (`train.lora`): only the adapters train, through the fused loss, with gradient checkpointing; bad
target modules fail before any worker starts; (slow) real Ray Train runs export an adapter and a merged model, and
the job's evaluation serves the adapter (from a local directory or a bucket) on its base in vLLM with the same
greedy answers as the merged model."""

import json
from pathlib import Path

import pytest
import yaml
from test_sft_train import cfg, job_config, metrics, records, write_records

from adaptcot.grade.answering import LoraAdapter, lora_adapter
from adaptcot.sft import lora
from adaptcot.sft.loss import use_fused_loss
from adaptcot.sft.order import tokenize_records
from adaptcot.sft.train_config import LoraConfig, TrainConfig
from adaptcot.sft.trainer import FINAL_MARKER, SFTCollator


def lora_student(student_dir, config: LoraConfig):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    model.config.use_cache = False
    use_fused_loss(model)  # as the worker does: the fused loss first, then peft
    return lora.wrap(model, config, seed=0)


def test_only_the_adapters_train_through_the_fused_loss_under_checkpointing(tiny_models_dir):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir["student"])
    table, _ = tokenize_records(records(4, kinds=("cot",)), tokenizer, cfg())
    batch = SFTCollator(pad_id=0, packed=False)([{"input_ids": r["input_ids"], "prompt_tokens": r["prompt_tokens"],
                                                  "kind": 0} for r in table.to_pylist()])
    model = lora_student(tiny_models_dir["student"], LoraConfig(r=8, dropout=0.0))
    # What the Trainer does with gradient_checkpointing: true. Reentrant checkpointing of frozen layers carries no
    # gradient to the adapters unless the inputs require grad (transformers turns that on here).
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = model(**{k: v for k, v in batch.items() if k != "token_kind"}, token_kind=batch["token_kind"])
        [(total, count)] = out["kind_sums"].values()
        loss = total / count + out["zero"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
    adapters = {name for name, _ in model.named_parameters() if "lora_" in name}
    assert losses[-1] < losses[0] * 0.8, losses
    assert changed == adapters and len(adapters) == 2 * 7 * 2  # A and B of 7 linear layers in each of 2 layers


def test_target_modules_that_name_no_module_fail_naming_the_field(tiny_models_dir, tmp_path):
    from adaptcot.job import stages
    from adaptcot.job.config import load_config

    student = str(tiny_models_dir["student"])
    lora.check_targets(student, LoraConfig(target_modules=["q_proj", "v_proj"]))
    lora.check_targets(student, LoraConfig())  # all-linear
    # peft alone accepts this list (q_proj matches); the typo would train fewer layers than asked for.
    with pytest.raises(ValueError, match=r"train.lora.target_modules: \['qproj'\] name no module .*'q_proj'"):
        lora.check_targets(student, LoraConfig(target_modules=["q_proj", "qproj"]))
    with pytest.raises(ValueError, match=r"train.lora.target_modules: .*Qwen2MLP.* is not supported"):
        lora.check_targets(student, LoraConfig(target_modules=["mlp"]))
    # Through the job, before any Ray Train run starts.
    data = write_records(records(4, kinds=("cot",)), tmp_path / "sft.parquet")
    job = load_config(job_config(tmp_path, student, data, lora={"target_modules": ["qproj"]}))
    with pytest.raises(ValueError, match="train.lora.target_modules"):
        stages.train(job)
    assert not (tmp_path / "run" / "train" / "ray").exists()


def test_lora_settings_are_checked_at_load():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"lora\.r\n"):
        TrainConfig(model="m", lora={"r": 0})
    with pytest.raises(ValidationError, match=r"lora\.export\n"):
        TrainConfig(model="m", lora={"export": "gguf"})


def test_an_adapter_directory_is_served_on_the_base_it_names(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    assert lora_adapter(str(tmp_path / "full")) is None
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/models/student", "r": 4, "rank_pattern": {"q_proj": 12}}))
    adapter = lora_adapter(str(tmp_path / "adapter"))
    assert (adapter.base, adapter.rank) == ("/models/student", 12)
    assert adapter.engine_kwargs() == {"enable_lora": True, "max_lora_rank": 16}  # vLLM's next allowed rank
    assert (adapter.loading_path, adapter.request_model) == (None, str(tmp_path / "adapter"))
    remote = LoraAdapter(path="s3://b/run/train/model", base="/models/student", rank=8)
    assert (remote.loading_path, remote.request_model) == ("s3://b/run/train", "model")  # ray.data.llm fetches it


# --- real Ray Train runs and the job's evaluation --------------------------------------------------------------------
def lora_job(tmp_path: Path, student: str, export: str):
    """A job that trains the student with LoRA (8 steps) and evaluates it greedily on its own training questions."""
    from adaptcot.demo.synthetic import write_jsonl
    from adaptcot.job.config import load_config

    table = records(8, kinds=("cot",))
    data = write_records(table, tmp_path / "sft.parquet")
    path = job_config(tmp_path, student, data, epochs=8, learning_rate=1e-2, batching="packed",
                      lora={"r": 8, "alpha": 16, "dropout": 0.0, "export": export})
    questions = [m[0]["content"] for m in table["messages"].to_pylist()]
    answers = [int(q.split()[2]) + int(q.split()[4].rstrip("?")) for q in questions]
    write_jsonl([{"question": q, "answer": f"#### {a}"} for q, a in zip(questions, answers)], tmp_path / "bench.jsonl")
    config = yaml.safe_load(path.read_text())
    engine = {"max_model_len": 512, "enforce_eager": True, "dtype": "float32"}
    config["grade"] = {"student": {"model": student, "math_prompt": "{question}", "engine": engine},
                       "grader": {"mode": "pass_rate", "thresholds": [0.4, 0.3, 0.2, 0.1]}}
    config["eval"] = {"benchmarks": [{"name": "trained", "source": str(tmp_path / "bench.jsonl"), "domain": "math",
                                      "preset": "gsm8k"}],
                      "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 32}, "levels": False}
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


@pytest.fixture(scope="module")
def lora_runs(ray_session, tiny_models_dir, tmp_path_factory):
    """The same LoRA training twice, exported as an adapter and merged: {export: (job config, train report)}."""
    from adaptcot.job import stages

    runs = {}
    for export in ("adapter", "merged"):
        job = lora_job(tmp_path_factory.mktemp(export), str(tiny_models_dir["student"]), export)
        runs[export] = (job, stages.train(job).report)
    return runs


@pytest.mark.slow
def test_lora_training_lowers_the_loss_and_exports_an_adapter_or_a_merged_model(lora_runs, tiny_models_dir):
    import torch
    from safetensors.torch import load_file

    student = str(tiny_models_dir["student"])
    for job, report in lora_runs.values():
        rows = metrics(Path(job.train.out))
        assert [r["step"] for r in rows] == list(range(1, 9)) and report.global_step == 8
        assert rows[-1]["loss"] < rows[0]["loss"] * 0.8, rows
    adapter = Path(lora_runs["adapter"][0].train.out) / "model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["r"], config["lora_alpha"]) == (student, 8, 16)
    assert all("lora_" in k for k in load_file(adapter / "adapter_model.safetensors"))
    assert not (adapter / "model.safetensors").exists() and (adapter / FINAL_MARKER).exists()
    assert lora_adapter(str(adapter)).base == student

    merged = Path(lora_runs["merged"][0].train.out) / "model"
    assert not (merged / "adapter_config.json").exists() and (merged / FINAL_MARKER).exists()
    assert lora_adapter(str(merged)) is None
    weights, base = load_file(merged / "model.safetensors"), load_file(Path(student) / "model.safetensors")
    assert weights.keys() == base.keys()
    moved = {k for k in base if not torch.equal(weights[k], base[k])}
    # Only the adapted linear layers moved; embeddings, norms and the LM head are the base's, bit for bit.
    assert moved and all(k.endswith("_proj.weight") for k in moved)
    # The two runs trained the same adapter (seeded): merging the adapter export gives the merged export.
    rebuilt = lora.merge(adapter, student).state_dict()
    for k in moved:
        torch.testing.assert_close(rebuilt[k], weights[k], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_the_jobs_evaluation_serves_the_adapter_with_the_merged_models_answers(lora_runs, bucket):
    from adaptcot.common import storage
    from adaptcot.evaluate.evaluation import evaluate
    from adaptcot.job import stages

    def answers(job, name: str) -> list[dict]:
        samples = storage.read_table(storage.join(job.path("eval"), name, "samples.parquet"))
        return samples.select(["question_id", "response", "num_tokens"]).sort_by("question_id").to_pylist()

    after = {}
    for export, (job, _) in lora_runs.items():
        assert stages.eval_config(job, "after").model.model == storage.join(job.train.out, "model")
        stages.evaluate_after(job)  # what `adaptcot run` does after training: nothing in between
        after[export] = answers(job, "student-after-sft")
    assert len(after["adapter"]) == 8 and all(a["response"] for a in after["adapter"])
    assert after["adapter"] == after["merged"]  # greedy: the adapter applied by vLLM = the merged weights
    job = lora_runs["adapter"][0]
    # The same adapter in a bucket (a job whose run_dir is one): ray.data.llm fetches it to the engine's node.
    storage.upload_tree(Path(job.train.out) / "model", f"{bucket}/train/model")
    config = stages.eval_config(job, "after")
    evaluate(config.model_copy(update={"model": config.model.model_copy(update={
        "model": f"{bucket}/train/model", "name": "from-bucket"})}))
    assert answers(job, "from-bucket") == after["adapter"]
    stages.evaluate_before(job)  # the student the adapter was trained on, alone
    before = answers(job, "student-before")
    changed = [a["response"] != b["response"] for a, b in zip(after["adapter"], before)]
    assert sum(changed) >= 6, (before, after["adapter"])  # the adapter is in use: the student answers differently

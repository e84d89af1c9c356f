"""The papers' setups as shipped configs: each pins what makes it the paper's, and configs/zte.yaml runs end to end
here with only its models, sources, endpoint, benchmark files, sizes and hardware replaced."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from adaptcot.job.config import load_config, token_limit_problems

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"


def test_zte_is_the_papers_setup():
    cfg = load_config(CONFIGS / "zte.yaml")
    student = cfg.grade.student
    assert student.sampling.n == 1 and cfg.grade.grader.mode == "prm"  # one answer: correct -> easy, wrong -> PRM
    assert cfg.sample.distribution.kind == "eval" and cfg.sample.n == 2000  # P_eval, ~2k questions
    calibration = [g for g in cfg.pool.imports if g.out == cfg.sample.distribution.eval_pool]
    assert calibration and cfg.sample.distribution.eval_pool != cfg.pool.out  # measured on its own split
    assert cfg.teacher.name == "deepseek-r1" and cfg.teacher.samples == 1 and cfg.teacher.endpoint is not None
    assert cfg.sft.formats == ["cot"] and cfg.train.objective == "cot"
    assert [str(b) for b in cfg.eval.benchmarks] == ["math500", "aime24", "aime25", "gpqa_diamond"]
    code = load_config(CONFIGS / "zte_code.yaml")
    assert [g.domain for g in code.pool.imports] == ["code", "code"]
    assert [str(b) for b in code.eval.benchmarks] == ["livecodebench"]


def test_cascod_is_the_papers_setup():
    cfg = load_config(CONFIGS / "cascod.yaml")
    assert cfg.sft.formats == ["cascod"] and cfg.sft.cascod_answer == "final"  # q->r, (q,r)->short answer
    assert cfg.train.objective == "cascod" and cfg.train.cascod.mode == "joint" and cfg.train.cascod.alpha == 0.5
    assert cfg.eval.cascaded is True
    assert cfg.train.per_device_batch_size % 2 == 0


def test_trace_style_is_the_papers_setup():
    cfg = load_config(CONFIGS / "trace_style.yaml")
    ts = cfg.trace_style
    assert [t.name for t in ts.teachers] == ["deepseek-r1", "gpt-oss-120b"] and ts.joint_filter
    assert all(t.samples == 1 for t in ts.teachers)
    assert ts.teachers[1].vllm is not None and "gpt-oss" in ts.teachers[1].vllm.model  # harmony, parsed
    assert cfg.filter.judge is not None and "Qwen3-30B-A3B-Thinking-2507" in cfg.filter.judge.endpoint.model
    assert cfg.grade.student.model == "nvidia/NVIDIA-Nemotron-Nano-12B-v2"
    assert [str(b) for b in cfg.eval.benchmarks] == ["gsm8k", "aime25", "math500"]
    s = cfg.eval.sampling
    assert (s.n, s.temperature, s.top_p, s.max_tokens) == (8, 0.6, 0.95, 32768)  # pass@8
    assert cfg.sample.n == 300_000 and cfg.sft.formats == ["cot"]


@pytest.mark.parametrize("name", ["zte.yaml", "zte_code.yaml", "cascod.yaml", "trace_style.yaml", "cluster.yaml",
                                  "local.yaml", "plumbing.yaml"])
def test_token_limits_agree_end_to_end(name):
    """No shipped config pays for CoTs that training drops or evaluation cuts short."""
    assert token_limit_problems(load_config(CONFIGS / name)) == []


def test_a_config_whose_limits_disagree_is_named():
    cfg = load_config(CONFIGS / "zte.yaml", ["train.max_seq_len=16384", "eval.sampling.max_tokens=8192"])
    problems = token_limit_problems(cfg)
    assert any(p.startswith("train.max_seq_len 16384 <= the teacher deepseek-r1's sampling.max_tokens 30720")
               for p in problems)
    assert any(p.startswith("eval.sampling.max_tokens 8192 <") for p in problems)


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


@pytest.mark.slow
def test_zte_runs_end_to_end_with_only_models_sources_endpoint_benchmarks_and_sizes_replaced(world_models, tmp_path):
    from teacher_fixtures import start_vllm_server

    from adaptcot.demo import world
    from adaptcot.demo.synthetic import write_jsonl

    run_dir, raw = tmp_path / "run", tmp_path / "raw"
    shutil.copytree(world_models, run_dir / "models")
    pool = world.split_rows("pool", 300, 0)
    seen = {r["question"] for r in pool}
    calibration = world.split_rows("calibration", 90, 0, exclude=seen)
    heldout = world.split_rows("eval", 40, 0, exclude=seen | {r["question"] for r in calibration})
    for name, rows in (("math", pool), ("calibration", calibration), ("eval", heldout)):
        write_jsonl(iter(rows), raw / f"{name}.jsonl")
    server, url = start_vllm_server(run_dir / "models" / "teacher", "world-teacher", tmp_path / "server.log")
    cpu_engine = "{max_model_len: 1024, dtype: float32, enforce_eager: true}"
    cpu = "{cpus_per_engine: 0.5, cpus_per_light_stage: 0.1, batch_size: 64}"
    # The world's weaker peer brackets the student from below (its teacher is too strong to fail often enough at
    # one sample for a panel of this size).
    panel = (f"{{name: peer, model: {run_dir}/models/peer, sampling: {{n: 1, temperature: 0.6, top_p: 0.95, "
             f"max_tokens: 160}}, engine: {cpu_engine}, resources: {cpu}}}")
    replaced = {
        # models
        "grade.student.model": f"{run_dir}/models/student", "grade.prm.model": f"{run_dir}/models/prm",
        "grade.panel.students": f"[{panel}]",
        # sources (the world's pool and calibration split, in GSM8K's columns; one reasoning step per line)
        "pool.out": str(run_dir / "pool"), "pool.imports.0.sources": f"[{raw / 'math.jsonl'}]",
        "pool.imports.0.preset": "gsm8k", "pool.imports.1.sources": f"[{raw / 'calibration.jsonl'}]",
        "pool.imports.1.preset": "gsm8k", "pool.imports.1.out": str(run_dir / "calibration"),
        "sample.distribution.eval_pool": str(run_dir / "calibration"), "grade.bank": str(run_dir / "bank"),
        "grade.grader.step_rule": "newline",
        # endpoint
        "teacher.endpoint.base_url": url, "teacher.endpoint.model": "world-teacher",
        "teacher.endpoint.api_key_env": "null", "teacher.endpoint.max_in_flight": "16",
        # benchmark files
        "eval.benchmarks": f"[{{name: world-heldout, source: {raw / 'eval.jsonl'}, domain: math, preset: gsm8k}}]",
        # sizes
        "run_dir": str(run_dir), "sample.n": "60", "grade.panel.questions": "90", "grade.panel.min_wrong_answers": "20",
        "grade.student.sampling.max_tokens": "160", "teacher.sampling.max_tokens": "160", "train.max_seq_len": "512",
        "eval.sampling.max_tokens": "160", "eval.sampling.n": "1", "grade.prm.max_model_len": "1024",
        "train.per_device_batch_size": "8", "train.grad_accum": "1",
        # hardware: this machine's 2 CPUs, no GPU
        "ray.address": "null", "ray.num_cpus": "2", "grade.student.engine": cpu_engine,
        "grade.student.resources": cpu, "grade.prm.dtype": "float32", "grade.prm.enforce_eager": "true",
        "grade.prm.num_gpus": "0", "grade.prm.num_cpus": "0.5", "grade.prm.concurrency": "1",
        "grade.prm.batch_size": "32", "grade.verify": "{num_cpus: 0.1}", "filter.num_cpus": "0.1",
        "filter.concurrency": "1", "train.num_workers": "1", "train.cpus_per_worker": "1", "train.use_gpu": "false",
        "train.bf16": "false", "train.gradient_checkpointing": "false", "train.fsdp": "''", "train.fsdp_config": "{}",
        "train.attn_implementation": "null", "train.torch_threads": "2",
    }
    try:
        cmd = [sys.executable, "-m", "adaptcot", "run", "--config", str(CONFIGS / "zte.yaml"),
               *[a for key, value in replaced.items() for a in ("--set", f"{key}={value}")]]
        done = subprocess.run(cmd, capture_output=True, timeout=2400, cwd=ROOT)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its engine process (a session of their own)
        server.wait()
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    assert "warning: train.max_seq_len" not in stdout + stderr  # the replaced sizes keep the limits consistent
    # Every value not replaced above is zte.yaml's.
    paper = yaml.safe_load((CONFIGS / "zte.yaml").read_text())
    used = yaml.safe_load((run_dir / "config.yaml").read_text())
    used_leaves = dict(_leaves(used))
    kept = [(key, value) for key, value in _leaves(paper)
            if not any(key == r or key.startswith(r + ".") for r in replaced)
            and not key.startswith("pool.imports")]  # lists: compared item by item below
    assert kept and all(used_leaves.get(key) == value for key, value in kept), \
        [(k, v, used_leaves.get(k)) for k, v in kept if used_leaves.get(k) != v]
    for i, group in enumerate(paper["pool"]["imports"]):
        assert used["pool"]["imports"][i]["domain"] == group["domain"]
    # The paper's pipeline ran: one sample graded into easy and five wrong levels, P_eval from the calibration split,
    # one verified CoT per drawn question, plain CoT SFT, the student evaluated before and after.
    summary = json.loads((run_dir / "run_summary.json").read_text())
    stages = summary["stages"]
    assert stages["grade"]["levels"]["easy"] > 0 and stages["grade"]["eval_set"] is not None
    cots = pq.read_table(run_dir / "teach" / "cots.parquet")
    assert cots.num_rows == stages["sample"]["drawn"] and set(cots["sample_index"].to_pylist()) == {0}
    assert 0 < stages["teach"]["kept"] <= cots.num_rows
    kinds = set(pq.read_table(run_dir / "sft" / "sft_records.parquet")["kind"].to_pylist())
    assert kinds == {"cot"} and stages["train"]["global_step"] > 0
    assert set(stages["eval-before"]) == set(stages["eval-after"]) == {"world-heldout"}


@pytest.mark.slow
def test_a_trace_style_job_trains_one_student_per_teacher_on_the_same_problems(world_models, tmp_path):
    """Seed 004's protocol on the demo world: two teachers (the world's teacher and its weaker peer, served
    in-cluster) on one sample, the joint filter, a student per teacher, the comparison."""
    run_dir = tmp_path / "run"
    shutil.copytree(world_models, run_dir / "models")
    cfg = yaml.safe_load((CONFIGS / "local.yaml").read_text())
    engine = cfg["teacher"]["vllm"]
    teachers = [{"name": name, "samples": 1, "sampling": cfg["teacher"]["sampling"],
                 "vllm": {**engine, "model": f"{run_dir}/models/{model}"}}
                for name, model in (("teacher", "teacher"), ("peer", "peer"))]
    cfg.update({"run_dir": str(run_dir), "trace_style": {"teachers": teachers}, "ablation": {}})
    del cfg["teacher"]
    cfg["synthetic_pool"].update({"math_questions": 300, "eval_questions": 30, "ood_questions": 0,
                                  "calibration_questions": 0})
    cfg["grade"] = {"student": {**cfg["grade"]["student"], "model": f"{run_dir}/models/student"},
                    "grader": {"mode": "pass_rate", "thresholds": [0.4, 0.3, 0.2, 0.1]}, "verify": {"num_cpus": 0.1}}
    cfg["sample"] = {"n": 30, "seed": 0, "distribution": {"kind": "uniform"}}
    cfg["train"].update({"epochs": 2, "logging_steps": 1})
    cfg["eval"] = {"benchmarks": [{**cfg["eval"]["benchmarks"][0], "limit": 20}],
                   "sampling": {**cfg["eval"]["sampling"], "n": 1}, "before": False}
    config = tmp_path / "trace_style.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "adaptcot", "run", "--config", str(config)], capture_output=True,
                          timeout=2400, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = run_dir / "trace_style"
    result = json.loads((out / "trace_style.json").read_text())
    kept = {}
    for side in ("teacher", "peer"):
        cots = pq.read_table(out / side / "teach" / "cots.parquet").to_pylist()
        assert len(cots) == 30  # every side answered the job's one sample
        kept[side] = {c["question_id"] for c in cots if c["drop_reason"] is None}
        assert result["sides"][side]["final_loss"] is not None and result["sides"][side]["benchmarks"]
    # The joint filter: both students train on exactly the problems both teachers got right.
    assert kept["teacher"] == kept["peer"] and len(kept["peer"]) == result["joint_questions"] > 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["shared"]["questions"] == result["joint_questions"]
    assert {r["side"] for s in comparison["sides"].values() for r in s["students"]} == {"teacher", "peer"}
    assert (out / "comparison.html").exists()

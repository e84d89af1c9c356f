"""The whole adaptcot job on Ray: tiny models (local default), raw pool, pool import, grading, sampling, teacher
CoTs and their filter, SFT records, SFT training, evaluation before and after, the report; each stage runs when its
config section is present.

Run:  python ray_jobs/pipeline.py --config configs/local.yaml [--set key=value ...]
  or: adaptcot run --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/pipeline.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)

One stage alone: ray_jobs/import_pool.py, grade.py, sample.py, teach.py, build_sft.py, train_sft.py, evaluate.py.
"""

from __future__ import annotations

import json
import time

from adaptcot import runtime
from adaptcot import grading, sft_train, storage, world
from adaptcot.config import JobConfig, resolve_eval, resolve_grade, resolve_sample
from adaptcot.evaluation import evaluate, format_metrics
from adaptcot.pool_import import ImportReport, PoolImportConfig, import_pool_remote
from adaptcot.pool_sources import open_source
from adaptcot.report import write_report
from adaptcot.synthetic import code_rows, math_rows, write_jsonl
from ray_jobs import stages
from ray_jobs.entrypoint import config_from_command_line


def pool_imports(cfg: JobConfig) -> list[PoolImportConfig]:
    """Every import the job runs: the configured ones, then the synthetic pool's (if enabled)."""
    common = {"out": cfg.path(cfg.pool.out), "max_question_chars": cfg.pool.max_question_chars}
    imports = [PoolImportConfig(**group.model_dump(), **common) for group in cfg.pool.imports]
    syn = cfg.synthetic_pool
    if syn.enabled:
        raw = cfg.path(syn.out)
        if syn.math_questions:
            imports.append(PoolImportConfig(sources=[storage.join(raw, "math.jsonl")], domain="math",
                                            preset="gsm8k", **common))
        if syn.code_questions:
            imports.append(PoolImportConfig(sources=[storage.join(raw, "code.jsonl")], domain="code",
                                            preset="apps", **common))
        if syn.kind == "world" and syn.eval_questions:  # its own pool: P_eval's eval set, never sampled from
            imports.append(PoolImportConfig(sources=[storage.join(raw, "eval.jsonl")], domain="math", preset="gsm8k",
                                            out=cfg.path(syn.eval_pool_out),
                                            max_question_chars=cfg.pool.max_question_chars))
    return imports


def preflight(cfg: JobConfig) -> None:
    """Fail before Ray starts on anything that can be checked up front (configured sources must exist)."""
    for group in cfg.pool.imports:
        for spec in group.sources:
            open_source(spec, group.hf_split, group.hf_config)


def write_synthetic_pool(cfg: JobConfig) -> None:
    syn = cfg.synthetic_pool
    raw = cfg.path(syn.out)
    if syn.kind == "world":
        pool = world.split_rows("pool", syn.math_questions, syn.seed)
        write_jsonl(iter(pool), storage.join(raw, "math.jsonl"))
        seen = {row["question"] for row in pool}  # held-out means no question of the pool
        for split, n in (("eval", syn.eval_questions), ("ood", syn.ood_questions)):
            if n:
                write_jsonl(iter(world.split_rows(split, n, syn.seed, exclude=seen)), storage.join(raw,
                                                                                                 f"{split}.jsonl"))
        return
    if syn.math_questions:
        write_jsonl(math_rows(syn.math_questions, syn.seed), storage.join(raw, "math.jsonl"))
    if syn.code_questions:
        write_jsonl(code_rows(syn.code_questions, syn.seed + 1), storage.join(raw, "code.jsonl"))


def build_models(cfg: JobConfig) -> dict[str, str]:
    import ray

    tiny = cfg.tiny_models
    out = cfg.path(tiny.out)
    if tiny.kind == "world":
        from adaptcot.world_models import build_world_models

        # Trained on one node with its torch threads (the cached build returns at once).
        task = ray.remote(num_cpus=1)(build_world_models).remote(out, tiny.seed, tiny.world)
    else:
        from adaptcot.tiny_models import build_tiny_models

        task = ray.remote(num_cpus=1)(build_tiny_models).remote(out, tiny.seed)
    return {name: str(p) for name, p in ray.get(task).items()}


def run_eval(cfg: JobConfig, which: str) -> dict:
    metrics = evaluate(resolve_eval(cfg, which))
    print(f"[eval {which}]\n" + "\n".join("  " + line for line in format_metrics(metrics)))
    return {bench: m["overall"] for bench, m in metrics["benchmarks"].items()}


def prepare(cfg: JobConfig, summary: dict) -> None:
    """Models, raw pool, pool import and grading: what every later stage (and the ablation) starts from."""
    if cfg.tiny_models.enabled:
        summary["stages"]["tiny_models"] = build_models(cfg)
        print(f"[tiny-models] {summary['stages']['tiny_models']}")
    if cfg.synthetic_pool.enabled:
        write_synthetic_pool(cfg)
    reports: list[ImportReport] = []
    for imp in pool_imports(cfg):
        report = import_pool_remote(imp)
        reports.append(report)
        print(f"[pool import] {imp.domain} {', '.join(imp.sources)}")
        print("\n".join("  " + line for line in report.lines()))
    summary["stages"]["pool_import"] = [r.as_dict() for r in reports]
    if cfg.grade is not None:
        grade_cfg = resolve_grade(cfg)
        grading.preflight(grade_cfg)  # after the stages that build the models and the pool it checks
        report = grading.grade(grade_cfg)
        print("[grade]\n" + "\n".join("  " + line for line in report.lines()))
        summary["stages"]["grade"] = grading.report_dict(report)
        if cfg.sample is not None and cfg.sample.distribution.kind == "eval":
            # P_eval is the student's level histogram on the eval set: grade it into the same bank partition.
            eval_pool = resolve_sample(cfg).distribution.eval_pool
            report = grading.grade(grade_cfg.model_copy(update={"pool": eval_pool}))
            print(f"[grade eval set {eval_pool}]\n" + "\n".join("  " + line for line in report.lines()))
            summary["stages"]["grade_eval_set"] = grading.report_dict(report)


def main(cfg: JobConfig) -> dict:
    preflight(cfg)
    started = time.time()
    runtime.init_ray(cfg.ray)
    run_dir = cfg.run_dir  # a local directory or a URI: every stage writes through adaptcot.storage
    summary: dict = {"run_dir": run_dir, "stages": {}}
    prepare(cfg, summary)
    if cfg.eval is not None and cfg.eval.before:
        summary["stages"]["eval_before"] = run_eval(cfg, "before")
    if cfg.sample is not None:
        sampled = stages.run_sample(cfg)
        print("[sample]\n" + "\n".join("  " + line for line in sampled.lines()))
        summary["stages"]["sample"] = {"drawn": sampled.drawn, "quotas": sampled.quotas}
    if cfg.teacher is not None:
        taught = stages.run_teach(cfg)
        print("[teach]\n" + "\n".join("  " + line for line in taught["teach"].lines() + taught["filter"].lines()))
        summary["stages"]["teach"] = {"requests": taught["teach"].requests_todo, "stored": taught["teach"].stored,
                                      "kept": sum(taught["filter"].kept.values()),
                                      "dropped": dict(taught["filter"].dropped)}
    if cfg.sft is not None:
        built = stages.run_build_sft(cfg)
        print("[sft]\n" + "\n".join("  " + line for line in built.lines()))
        summary["stages"]["sft"] = built.as_dict()
    if cfg.train is not None and cfg.train.data is None and cfg.sft is not None and \
            not sum(built.by_kind.get(kind, 0) for kind in cfg.train.kinds()):
        # Only here, where the job made the records itself: `adaptcot train` on an empty dataset is an error.
        print(f"[train] skipped: the SFT stage made no {cfg.train.objective} records (see [teach] for why CoTs were "
              "dropped)")
        summary["stages"]["train"] = {"skipped": "no SFT records"}
    elif cfg.train is not None:
        trained = stages.run_train(cfg)
        print("[train]\n" + "\n".join("  " + line for line in
                                        sft_train.DataReport(**trained.data).lines() + trained.lines()))
        summary["stages"]["train"] = trained.as_dict()
        if cfg.eval is not None and cfg.eval.after:
            summary["stages"]["eval_after"] = run_eval(cfg, "after")
    summary["report"] = write_report(run_dir)
    print(f"[report] {summary['report']}")
    summary["seconds"] = round(time.time() - started, 1)
    storage.write_text(cfg.path("run_summary.json"), json.dumps(summary, indent=2))
    print(f"[done] {summary['seconds']} s; summary in {cfg.path('run_summary.json')}")
    return summary


def ablate(cfg: JobConfig) -> dict:
    """`adaptcot ablate`: the shared stages (cached when `adaptcot run` did them), then every arm and seed."""
    from adaptcot.ablation import arm_config, run_ablation

    preflight(cfg)
    for arm in cfg.ablation.arms:  # a config the arms cannot be built from fails before any work
        arm_config(cfg, arm, cfg.ablation.seeds[0], cfg.ablation)
    runtime.init_ray(cfg.ray)
    prepare(cfg, {"stages": {}})
    summary = run_ablation(cfg, cfg.ablation)
    print(f"[report] {write_report(cfg.run_dir)}")
    return summary


if __name__ == "__main__":
    main(config_from_command_line(__doc__))

"""The method's central comparisons in miniature, over several seeds (`adaptcot ablate`).

Arms, each fine-tuning the job's graded student from the same weights on teacher CoTs of `n` sampled questions:
- `adaptive-cot`: questions drawn by the job's distribution (P_eval, or P_C), standard CoT SFT;
- `uniform-cot`: as many questions drawn uniformly from the graded pool (each level at its share there), CoT SFT;
- `curriculum-cot`: drawn by the curriculum prior P_C (`ablation.curriculum_weights`), CoT SFT;
- `transfer-cot`: drawn by another student's P_eval (`ablation.transfer_from`, graded on the job's eval pool into
  the same bank by the same grader, so at the same cut points), CoT SFT: the paper's 32B-to-7B transfer;
- `adaptive-cascod`: the adaptive sample, CasCoD SFT, cascaded inference at evaluation.
Comparisons (`COMPARISONS`): adaptive vs uniform, vs P_C and vs the transferred distribution, and CasCoD vs CoT,
each as per-seed paired differences on every benchmark of the job's `eval` section.

A seed changes the sample draw and the SFT data order. Each arm of each seed is one small job under
`<run_dir>/<out>/<arm>/seed=<s>/` (samples, teach/cots.parquet, sft, train, eval) that resumes like `adaptcot run`;
teacher CoTs live in one journal (`<out>/teach/`) shared by all of them, so a question two draws share is taught once.
`evaluate.ablation_stats.summarize` gives each arm's mean and a 95% t interval over seeds, and the same for each
paired difference; `summary.json` is what the report shows. Whatever comes out is reported: an interval across zero is
a null result. The arms run the same stage functions as `adaptcot run` (`job/stages.py`).
"""

from __future__ import annotations

import json

from adaptcot.common import storage, terminal
from adaptcot.evaluate.ablation_stats import METRICS, summarize, summary_lines
from adaptcot.grade import grading
from adaptcot.job import stages
from adaptcot.job.config import JobConfig
from adaptcot.sample.distributions import DistributionConfig


def check(cfg: JobConfig) -> None:
    """Fails before any work when the arms cannot be built from the config."""
    for arm in cfg.ablation.arms:
        arm_config(cfg, arm, cfg.ablation.seeds[0])


def arm_config(cfg: JobConfig, arm: str, seed: int) -> JobConfig:
    """The job config of one arm and seed: the job's bank, pool, student and teacher, its own run directory."""
    if cfg.sample is None or cfg.teacher is None or cfg.sft is None or cfg.train is None or cfg.eval is None:
        raise ValueError("adaptcot ablate needs the job's sample, teacher, sft, train and eval sections")
    ablation, sample = cfg.ablation, cfg.sample
    cascod = arm.endswith("cascod")
    if arm.startswith("adaptive"):
        distribution = sample.distribution
    elif arm == "uniform-cot":
        distribution = DistributionConfig(kind="uniform")
    elif arm == "curriculum-cot":
        distribution = DistributionConfig(kind="curriculum", weights=ablation.curriculum_weights)
    else:  # transfer-cot
        if sample.distribution.kind != "eval":
            raise ValueError("arm transfer-cot uses another student's P_eval: the job's sample.distribution must be "
                             "kind eval (its eval_pool is where both students are measured)")
        other = transfer_grade_config(cfg)
        distribution = sample.distribution.model_copy(
            update={"student": f"{other.student.display_name}@{other.grader_id()}"})
    run_dir = storage.join(ablation.out, arm, f"seed={seed}")
    # The config is resolved: the job's inputs keep their paths; the arm's own outputs move under its run_dir.
    return cfg.model_copy(update={
        "run_dir": run_dir,
        "sample": sample.model_copy(update={"seed": seed, "n": ablation.n or sample.n, "distribution": distribution}),
        "sft": cfg.sft.model_copy(update={"formats": ["cascod" if cascod else "cot"]}),
        "train": cfg.train.model_copy(update={"objective": "cascod" if cascod else "cot", "seed": seed,
                                              "epochs": ablation.epochs or cfg.train.epochs,
                                              "out": storage.join(run_dir, "train"),
                                              "data": storage.join(run_dir, "sft", "sft_records.parquet"),
                                              "model": cfg.grade.student.model}),
        "eval": cfg.eval.model_copy(update={"before": False, "after": True, "cascaded": cascod}),
    })


def transfer_grade_config(cfg: JobConfig):
    """The grading of `ablation.transfer_from` on the job's eval pool: the job's grader, bank and cut points."""
    return cfg.grade.model_copy(update={"student": cfg.ablation.transfer_from, "panel": None,
                                        "pool": cfg.sample.distribution.eval_pool})


def run_arm(cfg: JobConfig, arm: str, seed: int) -> dict:
    """Sample, teach (shared journal), filter, build SFT records, train and evaluate one arm and seed."""
    arm_cfg = arm_config(cfg, arm, seed)
    result_path = arm_cfg.path("result.json")
    if storage.exists(result_path):
        return json.loads(storage.read_text(result_path))
    sampled = stages.sample(arm_cfg)
    taught = stages.teach(arm_cfg, journal_dir=storage.join(cfg.ablation.out, "teach"))
    built = stages.build_sft_records(arm_cfg)
    trained = stages.train(arm_cfg).report
    metrics = stages.evaluate_after(arm_cfg).metrics
    result = {"arm": arm, "seed": seed, "drawn": sampled.drawn, "cots_kept": sum(taught.filter.kept.values()),
              "sft_records": built.as_dict().get("records"), "final_loss": trained.final_loss,
              "benchmarks": {b: {m: v["overall"].get(m) for m in METRICS} for b, v in metrics["benchmarks"].items()}}
    storage.write_text(result_path, json.dumps(result, indent=2))
    return result


def run_ablation(cfg: JobConfig) -> dict:
    """Every arm of every seed (finished ones are read back), then the summary with its intervals."""
    results = []
    if "transfer-cot" in cfg.ablation.arms:
        with terminal.stage("ablate transfer", f"grading {cfg.ablation.transfer_from.display_name} on the eval "
                            "pool, whose P_eval the transfer arm draws by") as shown:
            shown.lines(grading.grade(transfer_grade_config(cfg)).lines())
    for seed in cfg.ablation.seeds:
        for arm in cfg.ablation.arms:
            with terminal.stage(f"ablate {arm} seed={seed}") as shown:
                results.append(run_arm(cfg, arm, seed))
                shown.lines([", ".join(f"{b} accuracy {v['accuracy']:.3f}"
                                       for b, v in results[-1]["benchmarks"].items())])
    summary = {"config": cfg.ablation.model_dump(), "results": results, **summarize(results)}
    storage.write_text(storage.join(cfg.ablation.out, "summary.json"), json.dumps(summary, indent=2))
    for line in summary_lines(summary):
        terminal.say(f"[ablate] {line}")
    return summary

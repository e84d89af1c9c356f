"""Evaluate the job's student on the `eval` section's benchmarks: "before" is the graded student, "after" the model
ray_jobs/train_sft.py exported (cascaded inference for a CasCoD student); accuracy, pass@k, majority vote and
tokens per answer, per difficulty level of the student's bank.

Run:  python ray_jobs/evaluate.py --config configs/local.yaml [--which before|after|both] [--set key=value ...]
  or: ray job submit --working-dir . -- python ray_jobs/evaluate.py --config configs/cluster.yaml --which both
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)
  any model by flags, without a job config:
      adaptcot eval --model M --benchmarks math500 gsm8k [--n 8]

Writes <run_dir>/eval/<model>/ (metrics.json and the scored answers); an unchanged evaluation is reused. "after"
needs <run_dir>/train/model (or `train.out`/model). `--which` defaults to both; `adaptcot run` instead follows the
section's own `before`/`after` switches.
"""

from __future__ import annotations

from adaptcot import runtime
from adaptcot.config import JobConfig
from ray_jobs import pipeline
from ray_jobs.entrypoint import load, parser

WHICH = {"before": ["before"], "after": ["after"], "both": ["before", "after"]}


def main(cfg: JobConfig, which: str = "both") -> dict:
    runtime.init_ray(cfg.ray)
    return {w: pipeline.run_eval(cfg, w) for w in WHICH[which]}  # run_eval prints the metrics


if __name__ == "__main__":
    cli = parser(__doc__)
    cli.add_argument("--which", choices=list(WHICH), default="both", help="which model(s) to evaluate")
    args = cli.parse_args()
    main(load(args, section="eval"), args.which)

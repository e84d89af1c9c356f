"""Evaluate the job's student on the `eval` section's benchmarks: "before" is the graded student, "after" the model
ray_jobs/train_sft.py exported (cascaded inference for a CasCoD student); accuracy, pass@k, majority vote and
tokens per answer, per difficulty level of the student's bank.

Run:  python ray_jobs/evaluate.py --config configs/local.yaml [--which before|after|both] [--set key=value ...]
  or: adaptcot eval --config configs/local.yaml [--which before|after|both]
  or: ray job submit --working-dir . -- python ray_jobs/evaluate.py --config configs/cluster.yaml --which both
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)
  any model by flags, without a job config:
      adaptcot eval --model M --benchmarks math500 gsm8k [--n 8]

Writes <run_dir>/eval/<model>/ (metrics.json and the scored answers); an unchanged evaluation is reused. "after"
needs <run_dir>/train/model (or `train.out`/model). `--which` defaults to both; `adaptcot run` instead follows the
section's own `before`/`after` switches.
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("eval", __doc__))

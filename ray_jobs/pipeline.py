"""The whole adaptcot job on Ray: tiny models (local default), pool import, grading, sampling, teacher CoTs and
their filter, SFT records, SFT training, evaluation before and after, the report; each stage runs when its config
section is present.

Run:  python ray_jobs/pipeline.py --config configs/local.yaml [--set key=value ...] [--verbose]
  or: adaptcot run --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/pipeline.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)

One stage alone: ray_jobs/import_pool.py, grade.py, sample.py, teach.py, build_sft.py, train_sft.py, evaluate.py.
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("run", __doc__))

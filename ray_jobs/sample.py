"""Draw the job's sample: `sample.n` questions from the graded student's bank by a difficulty distribution
(curriculum prior or the student's levels on an eval set), seeded, decontaminated against `sample.exclude`.

Run:  python ray_jobs/sample.py --config configs/local.yaml [--set sample.n=100 ...]
  or: adaptcot sample --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/sample.py --config configs/cluster.yaml
      (on a running cluster; auth: cluster/README.md)

Reads the bank ray_jobs/grade.py wrote; writes <run_dir>/samples/ (samples.parquet, distribution.json,
sample_report.json). A small bank is drawn in this process, a large one on Ray Data (adaptcot/sample/draw.py).
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("sample", __doc__))

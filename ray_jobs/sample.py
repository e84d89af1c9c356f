"""Draw the job's sample: `sample.n` questions from the graded student's bank by a difficulty distribution
(curriculum prior or the student's levels on an eval set), seeded, decontaminated against `sample.exclude`.

Run:  python ray_jobs/sample.py --config configs/local.yaml [--set sample.n=100 ...]
  or: adaptcot sample --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/sample.py --config configs/cluster.yaml
      (on a running cluster; auth: cluster/README.md)

Reads the bank ray_jobs/grade.py wrote; writes <run_dir>/samples/ (samples.parquet, distribution.json,
sample_report.json). A small bank is drawn in this process, a large one on Ray Data (adaptcot/sampling.py).
"""

from __future__ import annotations

from adaptcot import runtime
from adaptcot.config import JobConfig
from adaptcot.sampling import SampleReport
from ray_jobs import stages
from ray_jobs.entrypoint import config_from_command_line, reported


def main(cfg: JobConfig) -> SampleReport:
    runtime.init_ray(cfg.ray)  # a large bank is drawn on Ray Data
    return reported("[sample]", stages.run_sample(cfg))


if __name__ == "__main__":
    main(config_from_command_line(__doc__, section="sample"))

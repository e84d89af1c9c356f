"""The method's central comparisons in miniature: SFT on adaptive-sampled against uniformly sampled teacher CoTs
of the same size, and CasCoD against standard CoT, over the seeds of the config's `ablation` section, with 95%
intervals (adaptcot/job/ablation.py).

Run:  python ray_jobs/ablate.py --config configs/local.yaml [--set ablation.seeds=[0,1] ...]
  or: adaptcot ablate --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/ablate.py --config configs/cluster.yaml
      (on a running cluster; auth: cluster/README.md)

Runs what the whole job shares first (models, pool, grading; read back when ray_jobs/pipeline.py did them), then
every arm and seed under <run_dir>/ablation/; writes ablation/summary.json and the report.
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("ablate", __doc__))

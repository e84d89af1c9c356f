"""Build the job's SFT records from the kept teacher CoTs: standard CoT and/or CasCoD's rationale and answer steps
(`sft.formats`), in chat format, with `<think>` blocks kept, stripped or capped (`sft.trace`).

Run:  python ray_jobs/build_sft.py --config configs/local.yaml [--set sft.trace=strip ...]
  or: adaptcot build-sft --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/build_sft.py --config configs/cluster.yaml
      (on a running cluster; auth: cluster/README.md)

Reads <run_dir>/teach/cots.parquet (ray_jobs/teach.py) and the sample; writes <run_dir>/sft/ (sft_records.parquet,
sft_report.json). Runs in this process: it needs no Ray.
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("build-sft", __doc__))

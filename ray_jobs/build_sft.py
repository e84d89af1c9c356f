"""Build the job's SFT records from the kept teacher CoTs: standard CoT and/or CasCoD's rationale and answer steps
(`sft.formats`), in chat format, with `<think>` blocks kept, stripped or capped (`sft.trace`).

Run:  python ray_jobs/build_sft.py --config configs/local.yaml [--set sft.trace=strip ...]
  or: adaptcot build-sft --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/build_sft.py --config configs/cluster.yaml
      (on a running cluster; auth: cluster/README.md)

Reads <run_dir>/teach/cots.parquet (ray_jobs/teach.py) and the sample; writes <run_dir>/sft/ (sft_records.parquet,
sft_report.json). Runs in this process: it needs no Ray.
"""

from __future__ import annotations

from adaptcot.config import JobConfig
from adaptcot.sft_data import SFTReport
from ray_jobs import stages
from ray_jobs.entrypoint import config_from_command_line, reported


def main(cfg: JobConfig) -> SFTReport:
    return reported("[sft]", stages.run_build_sft(cfg))


if __name__ == "__main__":
    main(config_from_command_line(__doc__, section="sft"))

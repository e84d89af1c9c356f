"""Fine-tune the student on the job's SFT records with Ray Train (standard CoT or CasCoD), export the model.

Run:  python ray_jobs/train_sft.py --config configs/local.yaml [--set train.epochs=1 ...]
  or: adaptcot train --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/train_sft.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)

Reads <run_dir>/sft/sft_records.parquet (or `train.data`), writes <run_dir>/train/ (or `train.out`, a path or URI):
model/, metrics.jsonl, train_report.json, ray/ (checkpoints). Running it again with the same data and settings
resumes a killed run from its latest checkpoint, or returns at once when the run is finished.
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("train", __doc__))

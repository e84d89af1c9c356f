"""Fine-tune the student on the job's SFT records with Ray Train (standard CoT or CasCoD), export the model.

Run:  python ray_jobs/train_sft.py --config configs/local.yaml [--set train.epochs=1 ...]
  or: adaptcot train --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/train_sft.py --config configs/local.yaml

Reads <run_dir>/sft/sft_records.parquet (or `train.data`), writes <run_dir>/train/ (or `train.out`, a path or URI):
model/, metrics.jsonl, train_report.json, ray/ (checkpoints). Running it again with the same data and settings
resumes a killed run from its latest checkpoint, or returns at once when the run is finished.
"""

from __future__ import annotations

import argparse

from adaptcot import runtime
from adaptcot.config import load_config
from adaptcot.sft_train import DataReport
from ray_jobs import stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.train is None:
        raise SystemExit(f"{args.config} has no `train` section")
    runtime.init_ray(cfg.ray)
    report = stages.run_train(cfg)
    print("\n".join(DataReport(**report.data).lines() + report.lines()))


if __name__ == "__main__":
    main()

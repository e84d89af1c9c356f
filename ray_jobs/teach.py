"""Ask the job's teacher for `teacher.samples` CoTs per sampled question (an OpenAI-compatible API, or an in-cluster
vLLM model), then verify every stored CoT and keep only the correct ones, with drop reasons.

Run:  python ray_jobs/teach.py --config configs/local.yaml [--set teacher.samples=4 ...]
  or: adaptcot teach --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/teach.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)

Reads <run_dir>/samples/samples.parquet (ray_jobs/sample.py); writes <run_dir>/teach/ (journal/, parts/,
cots.parquet, filter_report.json). A killed run resumes from its journal without asking twice. An API teacher's
key is read from the environment variable `teacher.endpoint.api_key_env` names, on the node the job runs on.
"""

from __future__ import annotations

from adaptcot import runtime
from adaptcot.config import JobConfig
from ray_jobs import stages
from ray_jobs.entrypoint import config_from_command_line, print_report


def main(cfg: JobConfig) -> dict:
    runtime.init_ray(cfg.ray)  # filter actors (and an in-cluster teacher) run on Ray
    result = stages.run_teach(cfg)
    print_report("[teach]", result["teach"].lines() + result["filter"].lines())
    return result


if __name__ == "__main__":
    main(config_from_command_line(__doc__, section="teacher"))

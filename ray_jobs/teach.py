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

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("teach", __doc__))

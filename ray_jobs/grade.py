"""Grade the job's pool for its student: answer (vLLM through `ray.data.llm`), verify, score wrong answers with the
PRM, and store one difficulty level per question in the question bank (<run_dir>/bank, or `grade.bank`).

Run:  python ray_jobs/grade.py --config configs/local.yaml [--set key=value ...]
  or: adaptcot grade --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/grade.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)

Reads the pool that ray_jobs/import_pool.py wrote; the models must exist (local directories or hub ids: the job does
not build the tiny ones, ray_jobs/pipeline.py does). Reruns generate only the samples not yet in the bank.
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("grade", __doc__))

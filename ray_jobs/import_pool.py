"""Import the job's question pool: every `pool.imports` group, then the generated synthetic pool when
`synthetic_pool.enabled`, into <run_dir>/pool (or `pool.out`), de-duplicated by question id, as Ray tasks.

Run:  python ray_jobs/import_pool.py --config configs/local.yaml [--set key=value ...]
  or: adaptcot import --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/import_pool.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)
  one source group by flags, without a job config:
      adaptcot pool import SRC... --domain {math,code} --out DIR [--preset P]

Rerunning adds only questions not yet in the pool. Configured sources are opened before Ray starts, so a missing
file or dataset fails first. Does not build models or grade (ray_jobs/grade.py).
"""

import sys

from adaptcot.job.cli import job_command

if __name__ == "__main__":
    sys.exit(job_command("import", __doc__))

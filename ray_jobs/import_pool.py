"""Import the job's question pool: every `pool.imports` group, then the generated synthetic pool when
`synthetic_pool.enabled`, into <run_dir>/pool (or `pool.out`), de-duplicated by question id, as Ray tasks.

Run:  python ray_jobs/import_pool.py --config configs/local.yaml [--set key=value ...]
  or: ray job submit --working-dir . -- python ray_jobs/import_pool.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)
  one source group by flags, without a job config:
      adaptcot pool import SRC... --domain {math,code} --out DIR [--preset P]

Rerunning adds only questions not yet in the pool. Configured sources are opened before Ray starts, so a missing
file or dataset fails first. Does not build models or grade (ray_jobs/grade.py).
"""

from __future__ import annotations

from adaptcot import runtime
from adaptcot.config import JobConfig
from adaptcot.pool_import import ImportReport, import_pool_remote
from ray_jobs import pipeline
from ray_jobs.entrypoint import config_from_command_line, print_report


def main(cfg: JobConfig) -> list[ImportReport]:
    imports = pipeline.pool_imports(cfg)
    if not imports:
        raise SystemExit("error: nothing to import (no `pool.imports`, and `synthetic_pool` is disabled)")
    pipeline.preflight(cfg)
    runtime.init_ray(cfg.ray)
    if cfg.synthetic_pool.enabled:
        pipeline.write_synthetic_pool(cfg)
    reports = []
    for imp in imports:
        reports.append(import_pool_remote(imp))
        print_report(f"[pool import] {imp.domain} {', '.join(imp.sources)}", reports[-1].lines())
    return reports


if __name__ == "__main__":
    main(config_from_command_line(__doc__))

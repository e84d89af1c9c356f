"""Grade the job's pool for its student: answer (vLLM through `ray.data.llm`), verify, score wrong answers with the
PRM, and store one difficulty level per question in the question bank (<run_dir>/bank, or `grade.bank`).

Run:  python ray_jobs/grade.py --config configs/local.yaml [--set key=value ...]
  or: adaptcot grade --config configs/local.yaml
  or: ray job submit --working-dir . -- python ray_jobs/grade.py --config configs/cluster.yaml
      (on a running cluster; configs/local.yaml there needs --set ray.address=auto; auth: cluster/README.md)

Reads the pool that ray_jobs/import_pool.py wrote; the models must exist (local directories or hub ids: the job does
not build the tiny ones, ray_jobs/pipeline.py does). Reruns generate only the samples not yet in the bank.
"""

from __future__ import annotations

from adaptcot import grading, runtime
from adaptcot.config import JobConfig, resolve_grade
from ray_jobs.entrypoint import config_from_command_line, reported


def main(cfg: JobConfig) -> grading.GradeReport:
    grade_cfg = resolve_grade(cfg)
    grading.preflight(grade_cfg)  # paths, the PRM's step token, the sandbox: before Ray starts
    runtime.init_ray(cfg.ray)
    return reported("[grade]", grading.grade(grade_cfg))


if __name__ == "__main__":
    main(config_from_command_line(__doc__, section="grade"))

"""Job configuration: one frozen pydantic model per stage, composed into `JobConfig`, loaded from YAML.

`load_config(path, overrides)` validates everything before any work starts; a bad value fails with a `ConfigError`
naming the file and the dotted field (`pool.imports.0.domain: ...`). Overrides are `dotted.key=value` strings whose
values are parsed as YAML (`--set pool.max_question_chars=5000`). Each stage receives only its own part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adaptcot import storage
from adaptcot.ablation import AblationConfig
from adaptcot.cot_filter import FilterConfig
from adaptcot.evaluation import EvalConfig, JobEvalConfig, LevelsConfig
from adaptcot.grading import GradeConfig
from adaptcot.pool_presets import resolve_mapping
from adaptcot.sampling import SampleConfig
from adaptcot.sft_data import SFTConfig
from adaptcot.sft_train import TrainConfig
from adaptcot.teacher import TeacherConfig
from adaptcot.world import WorldModelsConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayConfig(Strict):
    address: str | None = None      # None: start a local Ray cluster; "auto" or ray://... to join one
    num_cpus: int | None = Field(default=None, gt=0)  # only for a local cluster


class TinyModelsConfig(Strict):
    """Student, teacher and PRM built on the spot: random weights (plumbing), or trained on the arithmetic world."""

    enabled: bool = True
    kind: Literal["random", "world"] = "random"
    out: str = "models"             # relative paths are under run_dir
    seed: int = 0
    world: WorldModelsConfig = WorldModelsConfig()  # training budgets, for kind "world"


class SyntheticPoolConfig(Strict):
    """A generated raw question pool, for runs with no dataset at hand (the local default)."""

    enabled: bool = False
    # "templated": GSM8K- and APPS-shaped rows (math.jsonl, code.jsonl); "world": the arithmetic ladder of
    # adaptcot.world: the pool (math.jsonl), a held-out eval split (eval.jsonl, also imported as the pool
    # `eval_pool_out`, which a `kind: eval` distribution can name) and an out-of-distribution split (ood.jsonl).
    kind: Literal["templated", "world"] = "templated"
    math_questions: int = Field(default=200, ge=0)
    code_questions: int = Field(default=50, ge=0)
    eval_questions: int = Field(default=0, ge=0)   # world only
    ood_questions: int = Field(default=0, ge=0)    # world only
    eval_pool_out: str = "eval_pool"               # world only, relative to run_dir
    seed: int = 0
    out: str = "raw"

    @model_validator(mode="after")
    def _world_has_no_code(self):
        if self.kind == "world" and self.code_questions:
            raise ValueError("kind 'world' has no code tasks: set code_questions to 0")
        if self.kind == "templated" and (self.eval_questions or self.ood_questions):
            raise ValueError("eval_questions and ood_questions need kind 'world'")
        return self


class PoolSourceGroup(Strict):
    sources: list[str] = Field(min_length=1)
    domain: Literal["math", "code"]
    preset: str | None = None
    mapping: dict[str, str] = {}
    hf_split: str = "train"
    hf_config: str | None = None

    @model_validator(mode="after")
    def _usable_mapping(self):
        resolve_mapping(self.preset, self.mapping)  # unknown preset or mapping field -> error naming it
        return self


class PoolConfig(Strict):
    out: str = "pool"
    max_question_chars: int = Field(default=32_000, gt=0)
    imports: list[PoolSourceGroup] = []


class JobConfig(Strict):
    run_dir: str
    ray: RayConfig = RayConfig()
    tiny_models: TinyModelsConfig = TinyModelsConfig()
    synthetic_pool: SyntheticPoolConfig = SyntheticPoolConfig()
    pool: PoolConfig = PoolConfig()
    grade: GradeConfig | None = None
    sample: SampleConfig | None = None      # draws from the graded student's bank partition
    teacher: TeacherConfig | None = None
    filter: FilterConfig = FilterConfig()
    sft: SFTConfig | None = None
    train: TrainConfig | None = None  # fine-tunes the student on the SFT records (Ray Train)
    eval: JobEvalConfig | None = None  # evaluates the graded student before SFT and the trained model after
    ablation: AblationConfig = AblationConfig()  # `adaptcot ablate`: adaptive vs uniform, CasCoD vs CoT, by seed

    @model_validator(mode="after")
    def _stages_have_their_inputs(self):
        for stage, needs in (("sample", "grade"), ("teacher", "sample"), ("sft", "teacher")):
            if getattr(self, stage) is not None and getattr(self, needs) is None:
                raise ValueError(f"a `{stage}` section needs a `{needs}` section (it reads that stage's output)")
        if self.eval is not None and self.grade is None:
            raise ValueError("an `eval` section needs a `grade` section (it evaluates that student)")
        if self.tiny_models.enabled and storage.is_remote(self.path(self.tiny_models.out)):
            raise ValueError(f"tiny_models.out: {self.path(self.tiny_models.out)} is not on this machine's disk; vLLM "
                             "loads the tiny models from one (with a cloud run_dir, set tiny_models.out to a local "
                             "directory, e.g. /tmp/adaptcot-models, and point the model paths at it)")
        if self.train is not None:
            if self.train.data is None and self.sft is None:
                raise ValueError("a `train` section needs `train.data` or an `sft` section (it reads its records)")
            if self.train.model is None and self.grade is None:
                raise ValueError("a `train` section needs `train.model` or a `grade` section (whose student it trains)")
        return self

    def path(self, relative: str, *more: str) -> str:
        """A config path: absolute, a URI (s3://, gs://, ...), or relative to run_dir (which may be a URI)."""
        return storage.join(self.run_dir, relative, *more)


class ConfigError(ValueError):
    pass


def resolve_grade(cfg: JobConfig) -> GradeConfig:
    """The job's grade section with `{run_dir}` filled in and pool/bank defaulting to the job's own."""
    grade = cfg.grade
    if grade is None:
        raise ConfigError("the config has no `grade` section")

    def fill(value: str) -> str:
        return value.replace("{run_dir}", cfg.run_dir)

    updates = {"pool": fill(grade.pool) if grade.pool else cfg.path(cfg.pool.out),
               "bank": fill(grade.bank) if grade.bank else cfg.path("bank"),
               "student": grade.student.model_copy(update={"model": fill(grade.student.model)})}
    if grade.prm is not None:
        updates["prm"] = grade.prm.model_copy(update={"model": fill(grade.prm.model)})
    return grade.model_copy(update=updates)


def resolve_sample(cfg: JobConfig) -> SampleConfig:
    """The job's sample section with `{run_dir}` filled in its paths (the eval pool, exclusion lists)."""
    if cfg.sample is None:
        raise ConfigError("the config has no `sample` section")

    def fill(value: str) -> str:
        return value.replace("{run_dir}", cfg.run_dir)

    dist = cfg.sample.distribution
    if dist.eval_pool is not None:
        dist = dist.model_copy(update={"eval_pool": fill(dist.eval_pool)})
    return cfg.sample.model_copy(update={"distribution": dist, "exclude": [fill(p) for p in cfg.sample.exclude],
                                         "exclude_previous": [fill(p) for p in cfg.sample.exclude_previous]})


def resolve_teacher(cfg: JobConfig) -> TeacherConfig:
    """The job's teacher with `{run_dir}` filled in (an in-cluster model built by the job lives there)."""
    if cfg.teacher is None:
        raise ConfigError("the config has no `teacher` section")
    if cfg.teacher.vllm is None:
        return cfg.teacher
    model = cfg.teacher.vllm.model.replace("{run_dir}", cfg.run_dir)
    return cfg.teacher.model_copy(update={"vllm": cfg.teacher.vllm.model_copy(update={"model": model})})


def resolve_train(cfg: JobConfig) -> tuple[TrainConfig, str, str]:
    """(train section with the model filled in, SFT records path, output dir): the job's own by default."""
    if cfg.train is None:
        raise ConfigError("the config has no `train` section")
    model = cfg.train.model if cfg.train.model is not None else resolve_grade(cfg).student.model
    data = cfg.train.data.replace("{run_dir}", cfg.run_dir) if cfg.train.data else \
        cfg.path("sft", "sft_records.parquet")
    return (cfg.train.model_copy(update={"model": model.replace("{run_dir}", cfg.run_dir)}), data,
            cfg.path(cfg.train.out))


def resolve_eval(cfg: JobConfig, which: str) -> EvalConfig:
    """The evaluation of the graded student ("before") or of the model trained from it ("after")."""
    if cfg.eval is None:
        raise ConfigError("the config has no `eval` section")
    student = resolve_grade(cfg).student
    benchmarks = [b if isinstance(b, str) else b.model_copy(update={"source": b.source.replace("{run_dir}",
                                                                                               cfg.run_dir)})
                  for b in cfg.eval.benchmarks]
    if which == "before":
        model, cascaded = student.model_copy(update={"name": f"{student.display_name}-before",
                                                     "sampling": cfg.eval.sampling}), False
    else:
        train_cfg, _, out = resolve_train(cfg)
        model = student.model_copy(update={"model": storage.join(out, "model"), "sampling": cfg.eval.sampling,
                                           "name": f"{student.display_name}-after-sft"})
        cascaded = cfg.eval.cascaded if cfg.eval.cascaded is not None else train_cfg.objective == "cascod"
    levels = LevelsConfig(bank=resolve_grade(cfg).bank, student=f"{student.display_name}@"
                          f"{resolve_grade(cfg).grader_id()}") if cfg.eval.levels else None
    return EvalConfig(model=model, benchmarks=benchmarks, out=cfg.path("eval"), cascaded=cascaded,
                      levels=levels, verify=resolve_grade(cfg).verify)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        value: Any = yaml.safe_load(raw) if raw != "" else None
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return data


def _explain(e: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None, model: type[BaseModel] = JobConfig):
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, str(path))) from None

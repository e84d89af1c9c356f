"""Job configuration: one frozen pydantic model per stage, composed into `JobConfig`, loaded from YAML.

`load_config(path, overrides)` validates everything before any work starts; a bad value fails with a `ConfigError`
naming the file and the dotted field (`pool.imports.0.domain: ...`). Overrides are `dotted.key=value` strings whose
values are parsed as YAML (`--set pool.max_question_chars=5000`).

Paths are resolved once, when the config is built (`JobConfig._resolve_paths`): `{run_dir}` in any string is the run
directory; the run's own folders (`pool.out`, `tiny_models.out`, `synthetic_pool.out`, `train.out`, ...) are under
`run_dir` unless absolute or a URI; and the defaults that point one stage at another's output are filled in
(`grade.pool` and `grade.bank`, `train.model` and `train.data`). Stages read finished paths and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from adaptcot.common import storage
from adaptcot.common.settings import Strict
from adaptcot.demo.world import WorldModelsConfig
from adaptcot.evaluate.evaluation import JobEvalConfig
from adaptcot.grade.answering import StudentConfig
from adaptcot.grade.grading import GradeConfig
from adaptcot.pool.near_duplicates import NearDuplicateConfig
from adaptcot.pool.presets import resolve_mapping
from adaptcot.sample.distributions import curriculum_distribution
from adaptcot.sample.draw import SampleConfig
from adaptcot.sft.records import SFTConfig
from adaptcot.sft.train_config import TrainConfig
from adaptcot.teach.config import TeacherConfig
from adaptcot.teach.cot_filter import FilterConfig


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
    # adaptcot.demo.world: the pool (math.jsonl), a held-out eval split (eval.jsonl), an out-of-distribution split
    # (ood.jsonl) and a calibration split (calibration.jsonl, imported as the pool `eval_pool_out`, which a
    # `kind: eval` distribution names: P_eval is measured on it, never on a split the job reports).
    kind: Literal["templated", "world"] = "templated"
    math_questions: int = Field(default=200, ge=0)
    code_questions: int = Field(default=50, ge=0)
    eval_questions: int = Field(default=0, ge=0)   # world only
    ood_questions: int = Field(default=0, ge=0)    # world only
    calibration_questions: int = Field(default=0, ge=0)  # world only
    eval_pool_out: str = "eval_pool"               # world only, relative to run_dir
    seed: int = 0
    out: str = "raw"

    @model_validator(mode="after")
    def _world_has_no_code(self):
        if self.kind == "world" and self.code_questions:
            raise ValueError("kind 'world' has no code tasks: set code_questions to 0")
        if self.kind == "templated" and (self.eval_questions or self.ood_questions or self.calibration_questions):
            raise ValueError("eval_questions, ood_questions and calibration_questions need kind 'world'")
        return self


class PoolSourceGroup(Strict):
    sources: list[str] = Field(min_length=1)
    domain: Literal["math", "code"]
    preset: str | None = None
    mapping: dict[str, str] = {}
    hf_split: str = "train"
    hf_config: str | None = None
    # Where these questions go (default `pool.out`): e.g. a calibration split, imported as its own pool that
    # `sample.distribution.eval_pool` names, so P_eval is measured on it and nothing is ever drawn from it.
    out: str | None = None

    @model_validator(mode="after")
    def _usable_mapping(self):
        resolve_mapping(self.preset, self.mapping)  # unknown preset or mapping field -> error naming it
        return self


class PoolConfig(Strict):
    out: str = "pool"
    max_question_chars: int = Field(default=32_000, gt=0)
    near_duplicates: NearDuplicateConfig = NearDuplicateConfig()  # MinHash near-duplicate removal of every import
    imports: list[PoolSourceGroup] = []


class AblationConfig(Strict):
    """`adaptcot ablate`: adaptive against uniform sampling and CasCoD against CoT, by seed (`job/ablation.py`)."""

    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    arms: list[Literal["adaptive-cot", "uniform-cot", "curriculum-cot", "transfer-cot", "adaptive-cascod"]] = \
        ["adaptive-cot", "uniform-cot", "adaptive-cascod"]
    n: int | None = Field(default=None, ge=1)  # questions per sample (default: the job's sample.n)
    epochs: int | None = Field(default=None, ge=1)  # SFT epochs of each arm (default: the job's train.epochs)
    out: str = "ablation"  # under run_dir
    # curriculum-cot: P_C's weights (default the seeds' form: five wrong levels, falling with difficulty)
    curriculum_weights: dict[str, float] = {"wrong_near": 5, "wrong_mild": 4, "wrong_mid": 3, "wrong_hard": 2,
                                            "wrong_hardest": 1}
    # transfer-cot: the other student whose P_eval (graded on the job's eval pool into the same bank, by the same
    # grader) draws the job student's sample; the paper applies a 32B student's distribution to a 7B student.
    transfer_from: StudentConfig | None = None

    @model_validator(mode="after")
    def _transfer_needs_a_student(self):
        if "transfer-cot" in self.arms and self.transfer_from is None:
            raise ValueError("arm transfer-cot needs ablation.transfer_from (the student whose P_eval is used)")
        curriculum_distribution(self.curriculum_weights)  # the error names the offending levels
        return self

    @field_validator("seeds", "arms")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"repeated entries: {value}")
        return value


class TraceStyleConfig(Strict):
    """Seed 004 (METHOD.md §3): the same sampled questions taught by two or more teachers; each teacher's CoTs, cut
    to the questions every teacher got right (`joint_filter`), train a copy of the student; then `compare`.
    Each teacher is a side under `<run_dir>/<out>/<name>/` (teach, sft, train, eval); the job's `teacher` is unused."""

    teachers: list[TeacherConfig] = Field(min_length=2)
    joint_filter: bool = True  # the paper's protocol; false: each student trains on all its teacher's kept CoTs
    out: str = "trace_style"   # under run_dir

    @field_validator("teachers")
    @classmethod
    def _distinct_names(cls, value):
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names repeat: {names} (each names a side's directory)")
        return value


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
    trace_style: TraceStyleConfig | None = None  # seed 004: one student per teacher on the same problems, compared

    @model_validator(mode="before")
    @classmethod
    def _fill_run_dir(cls, data: Any) -> Any:
        """`{run_dir}` in any string of the config is the run directory, made absolute (so the resolved config that
        a run writes, `config.yaml`, loads again to the same paths, from any working directory)."""
        if isinstance(data, dict) and isinstance(data.get("run_dir"), str):
            run_dir = data["run_dir"] if storage.is_remote(data["run_dir"]) else os.path.abspath(data["run_dir"])
            return _substitute({**data, "run_dir": run_dir}, "{run_dir}", run_dir)
        return data

    @model_validator(mode="after")
    def _stages_have_their_inputs(self):  # runs before _resolve_paths fills the defaults it checks
        for stage, needs in (("sample", "grade"), ("teacher", "sample"), ("trace_style", "sample")):
            if getattr(self, stage) is not None and getattr(self, needs) is None:
                raise ValueError(f"a `{stage}` section needs a `{needs}` section (it reads that stage's output)")
        if self.sft is not None and self.teacher is None and self.trace_style is None:
            raise ValueError("a `sft` section needs a `teacher` (or `trace_style`) section (it reads the CoTs)")
        if self.trace_style is not None:
            if self.teacher is not None:
                raise ValueError("trace_style.teachers replaces `teacher`: remove the `teacher` section")
            missing = [s for s in ("sft", "train", "eval") if getattr(self, s) is None]
            if missing:
                raise ValueError(f"trace_style trains and evaluates a student per teacher: it needs {missing}")
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

    @model_validator(mode="after")
    def _resolve_paths(self):
        """The run's folders under run_dir, and each stage's inputs defaulting to the stage before it."""
        def under(section, **fields):
            return section.model_copy(update={k: self.path(v) for k, v in fields.items()})

        fields: dict[str, Any] = {
            "tiny_models": under(self.tiny_models, out=self.tiny_models.out),
            "synthetic_pool": under(self.synthetic_pool, out=self.synthetic_pool.out,
                                    eval_pool_out=self.synthetic_pool.eval_pool_out),
            "pool": under(self.pool, out=self.pool.out).model_copy(update={"imports": [
                under(group, out=group.out) if group.out else group for group in self.pool.imports]}),
            "ablation": under(self.ablation, out=self.ablation.out)}
        if self.trace_style is not None:
            fields["trace_style"] = under(self.trace_style, out=self.trace_style.out)
        if self.grade is not None:
            fields["grade"] = self.grade.model_copy(update={"pool": self.grade.pool or fields["pool"].out,
                                                            "bank": self.grade.bank or self.path("bank")})
        if self.train is not None:
            fields["train"] = self.train.model_copy(update={
                "out": self.path(self.train.out), "data": self.train.data or self.path("sft", "sft_records.parquet"),
                "model": self.train.model or fields["grade"].student.model})
        for name, value in fields.items():
            object.__setattr__(self, name, value)  # frozen for everyone else; this runs once, as the config is built
        return self

    def path(self, relative: str, *more: str) -> str:
        """A config path: absolute, a URI (s3://, gs://, ...), or relative to run_dir (which may be a URI)."""
        return storage.join(self.run_dir, relative, *more)


class ConfigError(ValueError):
    pass


def token_limit_problems(cfg: JobConfig) -> list[str]:
    """Where the token limits of teacher, CoT filter, SFT and evaluation disagree, so that paid CoTs would be
    dropped at training, or the trained student cut off at evaluation (the job warns; shipped configs have none)."""
    teachers = cfg.trace_style.teachers if cfg.trace_style else [cfg.teacher] if cfg.teacher else []
    problems = []
    for teacher in teachers:
        cap = cfg.filter.max_completion_tokens
        limit, where = (cap, "filter.max_completion_tokens") if cap and cap < teacher.sampling.max_tokens else \
            (teacher.sampling.max_tokens, f"the teacher {teacher.name}'s sampling.max_tokens")
        if cfg.train is not None and cfg.train.max_seq_len <= limit:
            problems.append(f"train.max_seq_len {cfg.train.max_seq_len} <= {where} {limit}: kept CoTs longer than "
                            "max_seq_len minus the prompt are paid for, then dropped at training (counted per level); "
                            "raise train.max_seq_len above it by the prompt's length, or lower the teacher's limit")
        if cfg.eval is not None and cfg.eval.after and cfg.eval.sampling.max_tokens < limit:
            problems.append(f"eval.sampling.max_tokens {cfg.eval.sampling.max_tokens} < {where} {limit}: the "
                            "trained student learns CoTs as long as the teacher's and is cut off before their end")
    if cfg.eval is not None and cfg.grade is not None and \
            cfg.grade.student.engine.max_model_len <= cfg.eval.sampling.max_tokens:
        problems.append(f"grade.student.engine.max_model_len {cfg.grade.student.engine.max_model_len} <= "
                        f"eval.sampling.max_tokens {cfg.eval.sampling.max_tokens}: no room for the prompt at "
                        "evaluation")
    return problems


def _substitute(node: Any, placeholder: str, value: str) -> Any:
    if isinstance(node, str):
        return node.replace(placeholder, value)
    if isinstance(node, dict):
        return {k: _substitute(v, placeholder, value) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, placeholder, value) for v in node]
    return node


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

"""Configs are validated data: every shipped YAML loads, and a bad value fails naming the field."""

from pathlib import Path

import pytest

from adaptcot.job.cli import main as cli
from adaptcot.job.config import ConfigError, JobConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert any(p.name == "local.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, JobConfig)
    # The header comment gives the command that runs it.
    assert "adaptcot run --config configs/" + path.name in path.read_text().split("\n\n")[0]


def test_actor_pools_take_min_and_max_sizes():
    cfg = load_config(CONFIGS[0].parent / "plumbing.yaml", ["grade.student.resources.concurrency=[1, 4]",
                                                        "grade.verify.concurrency=[1, 3]", "filter.concurrency=2"])
    assert cfg.grade.student.resources.concurrency == (1, 4) and cfg.grade.verify.concurrency == (1, 3)


def test_overrides_reach_nested_fields():
    cfg = load_config(CONFIGS[0].parent / "plumbing.yaml", ["pool.max_question_chars=500", "ray.num_cpus=1",
                                                        "synthetic_pool.enabled=false"])
    assert (cfg.pool.max_question_chars, cfg.ray.num_cpus, cfg.synthetic_pool.enabled) == (500, 1, False)


@pytest.mark.parametrize("override,field", [
    ("pool.max_question_chars=-3", "pool.max_question_chars"),
    ("tiny_models.sed=1", "tiny_models.sed"),
    ("pool.imports=[{sources: [a.jsonl], domain: maths}]", "pool.imports.0.domain"),
    ("pool.imports=[{sources: [a.jsonl], domain: math, preset: gsm9k}]", "pool.imports.0"),
    ("train.per_device_batch_size=3", "train"),  # joint CasCoD pairs need an even micro-batch
    ("train.cascod.alpha=2", "train.cascod.alpha"),
    ("train.batching=bucketed", "train.batching"),
    ("grade.student.resources.concurrency=[3, 1]", "grade.student.resources.concurrency"),  # min above max
    ("grade.prm.concurrency=0", "grade.prm.concurrency"),
    ("grade.verify.concurrency=[0, 2]", "grade.verify.concurrency"),
    ("filter.concurrency=[2, 1]", "filter.concurrency"),
    ("tiny_models.out=s3://bucket/models", "tiny_models.out"),  # vLLM loads the tiny models from a local disk
    ("grade.student.sampling.ignore_eoss=true", "sampling.ignore_eoss"),  # not a vLLM SamplingParams field
    ("grade.student.sampling.seed=1", "sampling.seed"),  # the engine is seeded, not requests
    ("grade.student.sampling.top_k=many", "sampling.top_k"),
    ("grade.student.engine.extra={max_num_seqs: 1024}", "max_num_seqs"),  # more than batches in flight can fill
])
def test_bad_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS[0].parent / "plumbing.yaml", [override])
    assert field in str(e.value)


def test_cli_run_reports_a_bad_config_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run_dir: {tmp_path / 'run'}\npool:\n  imports:\n    - sources: [{tmp_path / 'missing.jsonl'}]\n"
                   "      domain: math\n      preset: gsm8k\n")
    assert cli(["run", "--config", str(bad)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert cli(["run", "--config", str(tmp_path / "nope.yaml")]) == 2


def test_cli_grade_flags_reach_the_config_and_bad_models_fail_before_ray(tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    rc = cli(["grade", "--config", str(CONFIGS[0].parent / "plumbing.yaml"), "--pool", str(pool),
              "--student", str(tmp_path / "no-such-student"), "--set", f"run_dir={tmp_path / 'run'}"])
    assert rc == 2
    assert "student model not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_stage_sections_need_the_stage_they_read(tmp_path):
    import yaml

    from adaptcot.job.config import ConfigError, load_config

    local = Path(__file__).parents[1] / "configs" / "plumbing.yaml"
    data = yaml.safe_load(local.read_text())
    del data["grade"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="`sample` section needs a `grade` section"):
        load_config(path)
    with pytest.raises(ConfigError, match="distribution"):
        load_config(local, ["sample.distribution.weights.easy=0.5"])  # no longer decreasing


def test_train_section_needs_records_and_a_model(tmp_path):
    import yaml

    from adaptcot.job.config import ConfigError, load_config

    data = {"run_dir": str(tmp_path / "run"), "train": {"model": "m"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="`train` section needs `train.data` or an `sft` section"):
        load_config(path)
    path.write_text(yaml.safe_dump({**data, "train": {"data": "x.parquet"}}))
    with pytest.raises(ConfigError, match="`train.model` or a `grade` section"):
        load_config(path)


def test_the_command_says_its_version(capsys):
    from adaptcot.common.provenance import version

    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"adaptcot {version()}" != "adaptcot unknown"


def test_the_resolved_config_a_run_writes_loads_again_to_the_same_paths(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS[0].parent / "local.yaml", ["run_dir=runs/r1"])
    assert cfg.run_dir == str(tmp_path / "runs" / "r1")
    assert cfg.grade.student.model == str(tmp_path / "runs" / "r1" / "models" / "student")  # {run_dir} filled in
    assert (cfg.grade.pool, cfg.train.data) == (cfg.path("pool"), cfg.path("sft", "sft_records.parquet"))
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # nothing in it is relative any more
    assert load_config(written) == cfg

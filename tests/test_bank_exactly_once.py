"""Every sample stored exactly once: leases, commits named by content, de-duplication on read, layout checks, and
two real graders (separate processes, each with its own Ray and vLLM) racing on one bank, or one losing a worker
mid-commit."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.common import schemas, storage
from adaptcot.common.lease import Lease, LeaseHeld
from adaptcot.grade import bank, manifest
from adaptcot.grade.finalize import finalize_bank
from adaptcot.grade.levels import GraderConfig
from adaptcot.grade.migrate import migrate_bank

PRM = GraderConfig(mode="prm", easy_min_pass_rate=0.5, thresholds=(0.8, 0.6, 0.4, 0.2))


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("bucket") + "/root"


def attempts(rows: list[tuple[str, int, bool | None]]) -> pa.Table:
    return pa.Table.from_pylist([{"question_id": q, "domain": "math", "student": "s", "sample_index": i,
                                  "response": "r", "num_tokens": 1, "finish_reason": "stop",
                                  "verdict": "passed" if c else "wrong_answer", "correct": c} for q, i, c in rows],
                                schema=schemas.ATTEMPTS)


# --- leases -------------------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_while_the_first_holds_the_lease(root):
    first = Lease(storage.join(root, "leases"), "partition p", ttl=30).acquire()
    with pytest.raises(LeaseHeld, match=r"partition p is being written by another run \(host .*pid"):
        Lease(storage.join(root, "leases"), "partition p", ttl=30).acquire()
    first.release()
    with Lease(storage.join(root, "leases"), "partition p", ttl=30) as second:
        assert second.generation == 2  # the next generation, created only-if-absent


def test_an_expired_lease_is_taken_over_and_its_old_holder_knows(root):
    stale = Lease(storage.join(root, "leases"), "p", ttl=0.6).acquire()
    stale._stop.set()  # a holder that stopped renewing (paused, or its machine is gone)
    time.sleep(1.0)
    other = Lease(storage.join(root, "leases"), "p", ttl=0.6)
    other.holder["host"] = "another-machine"  # not this machine's dead-process shortcut: expiry alone
    assert other.try_acquire() is None and other.generation == 2
    stale._stop.clear()
    stale._renew_once()
    assert stale.lost
    with pytest.raises(Exception, match="took over the lease"):
        stale.check()
    other.release()


def test_a_killed_holder_on_this_machine_frees_its_lease_at_once(tmp_path):
    directory = str(tmp_path / "leases")
    child = subprocess.run([sys.executable, "-c", f"from adaptcot.common.lease import Lease; "
                            f"Lease({directory!r}, 'p').acquire(); import os; os._exit(9)"], timeout=60)
    assert child.returncode == 9  # died holding it, never released
    with Lease(directory, "p") as lease:
        assert lease.generation == 2


def test_exclusive_create_has_one_winner(root):
    path = storage.join(root, "x", "lease-1.json")
    assert storage.create_exclusive(path, b"a") is True
    assert storage.create_exclusive(path, b"b") is False
    assert storage.read_text(path) == "a"


# --- commits and reads --------------------------------------------------------------------------------------------
def test_a_sample_committed_twice_counts_once(tmp_path):
    root = str(tmp_path / "bank")
    rows = [("q1", 0, True), ("q1", 1, False), ("q2", 0, False), ("q2", 1, False)]
    bank.add_rows(root, "attempts", "s", "g", attempts(rows))
    bank.add_rows(root, "attempts", "s", "g", attempts(rows))  # the same batch again: same names, no new file
    bank.add_rows(root, "attempts", "s", "g", attempts(rows[1:3]))  # other batch boundaries: a new file
    files = bank.part_files(root, "attempts", "s", "g")
    raw = storage.dataset(files, schemas.ATTEMPTS).to_table()
    assert raw.num_rows == 6  # stored twice on disk ...
    assert bank.read_partition(root, "attempts", "s", "g").num_rows == 4  # ... read once
    assert finalize_bank(root, "s", "g", 2, GraderConfig(mode="pass_rate", easy_min_pass_rate=0.5,
                                                          thresholds=(0.4, 0.3, 0.2, 0.1))) == (2, 0)
    levels = dict(zip(*bank.read_partition(root, "bank", "s", "g", ["question_id", "pass_rate"]).to_pydict()
                      .values()))
    assert levels == {"q1": 0.5, "q2": 0.0}  # q1: one right of two, not two of four


def test_uncommitted_parts_are_swept_and_committed_ones_kept(tmp_path):
    root = str(tmp_path / "bank")
    bank.add_rows(root, "attempts", "s", "g", attempts([("q1", 0, True)]))
    kept = bank.part_files(root, "attempts", "s", "g")
    orphan = Path(kept[0]).parent / "part-orphan.parquet"  # a killed writer's part: no commit names it
    pq.write_table(attempts([("q9", 0, True)]), orphan)
    assert bank.remove_uncommitted(root, "s", "g") == 1
    assert not orphan.exists() and all(Path(f).exists() for f in kept)


def test_a_bank_written_by_a_newer_adaptcot_is_refused(tmp_path):
    root = str(tmp_path / "bank")
    rows = bank.add_rows(root, "attempts", "s", "g", attempts([("q1", 0, True)]))
    newer = rows.set_column(rows.schema.get_field_index("schema_version"), "schema_version",
                            pa.array([schemas.SCHEMA_VERSION + 1], pa.int32()))
    storage.write_table(newer, storage.join(manifest.partition_path(root, "manifests", "s", "g"), "commits",
                                            "commit-newer.parquet"))
    with pytest.raises(manifest.LayoutError, match="newer adaptcot"):
        bank.read_partition(root, "attempts", "s", "g")


def test_a_bank_of_the_first_layout_is_refused_then_migrated_with_every_row_once(tmp_path):
    root = tmp_path / "bank"
    old = root / "attempts" / "student=s" / "grader=g"
    old.mkdir(parents=True)
    pq.write_table(attempts([("q1", 0, True), ("q2", 0, False)]), old / "part-a.parquet")
    scores = old.parent.parent.parent / "step_scores" / "student=s" / "grader=g"
    scores.mkdir(parents=True)
    pq.write_table(pa.table({"question_id": ["q2"], "student": ["s"], "sample_index": pa.array([0], pa.int32()),
                             "prm": ["p"], "prm_score": pa.array([0.3], pa.float32())}), scores / "part-a.parquet")
    pq.write_table(pa.table({"question_id": ["q3"], "student": ["s"], "sample_index": pa.array([0], pa.int32()),
                             "prm": ["p"], "prm_score": pa.array([0.9], pa.float32())}),
                   scores / "part-uncommitted.parquet")  # no attempts part of its name: never committed
    with pytest.raises(manifest.LayoutError, match=f"adaptcot bank migrate {root}"):
        manifest.check_layout(str(root))
    moved = migrate_bank(str(root))
    assert moved["rows"] == {"attempts": 2, "step_scores": 1, "bank": 0} and moved["old_files_removed"] == 3
    assert manifest.check_layout(str(root)) >= 1
    assert finalize_bank(str(root), "s", "g", 1, PRM) == (2, 0)
    got = bank.read_partition(root, "bank", "s", "g", ["question_id", "level"]).to_pydict()
    assert dict(zip(got["question_id"], got["level"])) == {"q1": "easy", "q2": "wrong_hard"}


# --- real graders racing ------------------------------------------------------------------------------------------
def grader_script(cfg_json: str) -> str:
    return (
        "import json, sys, ray\n"
        "from adaptcot.common.lease import LeaseHeld\n"
        "from adaptcot.common.runtime import configure_ray_data\n"
        "from adaptcot.grade import grading\n"
        "configure_ray_data(progress_bars=False)\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        f"cfg = grading.GradeConfig.model_validate(json.loads({cfg_json!r}))\n"
        "try:\n"
        "    report = grading.grade(cfg)\n"
        "except LeaseHeld as e:\n"
        "    print('LEASE', e, flush=True); sys.exit(3)\n"
        "print('REPORT', json.dumps({'generated': report.generated, 'graded': report.newly_graded}), flush=True)\n")


def start_grader(cfg, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-c", grader_script(cfg.model_dump_json())], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stored_once(cfg) -> tuple[int, int]:
    """(attempt rows stored in committed files, distinct samples among them)."""
    files = bank.part_files(cfg.bank, "attempts", cfg.student.display_name, cfg.grader_id())
    raw = storage.dataset(files, schemas.ATTEMPTS).to_table(columns=["question_id", "sample_index"])
    return raw.num_rows, len(set(zip(raw["question_id"].to_pylist(), raw["sample_index"].to_pylist())))


@pytest.fixture(scope="module")
def grading_world(tmp_path_factory, tiny_models_dir):
    """A pool of 11 math questions and one code question; returns a maker of grade configs with a fresh bank."""
    from adaptcot.demo.synthetic import math_rows, write_jsonl
    from adaptcot.grade.answering import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig
    from adaptcot.grade.grading import GradeConfig
    from adaptcot.grade.prm import PRMConfig
    from adaptcot.pool.importer import PoolImportConfig, import_pool
    from adaptcot.verify.attempts import VerifyConfig

    root = tmp_path_factory.mktemp("race")
    write_jsonl(iter(list(math_rows(11, seed=3))), root / "math.jsonl")
    write_jsonl(iter([{"question": "Print hello.", "input_output": json.dumps({"inputs": [""],
                                                                            "outputs": ["hello\n"]})}]),
                root / "code.jsonl")
    import_pool(PoolImportConfig(sources=[str(root / "math.jsonl")], domain="math", out=str(root / "pool"),
                                 preset="gsm8k"))
    import_pool(PoolImportConfig(sources=[str(root / "code.jsonl")], domain="code", out=str(root / "pool"),
                                 preset="apps"))
    models = tiny_models_dir

    def make(tmp: Path) -> GradeConfig:
        student = StudentConfig(model=str(models["student"]), name="tiny-student",
                                engine=EngineConfig(max_model_len=512, dtype="float32", enforce_eager=True),
                                resources=ResourcesConfig(cpus_per_engine=0.5, cpus_per_light_stage=0.1,
                                                          batch_size=4),
                                sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=32))
        prm = PRMConfig(model=str(models["prm"]), dtype="float32", enforce_eager=True, max_model_len=2048,
                        num_cpus=0.5)
        return GradeConfig(pool=str(root / "pool"), bank=str(tmp / "bank"), student=student, prm=prm,
                           verify=VerifyConfig(num_cpus=0.1))

    return make


@pytest.mark.slow
def test_two_graders_at_once_one_losing_a_worker_mid_commit_store_every_sample_once(tmp_path, grading_world):
    """Both faults in one run (each grader is a process with its own Ray and engines: minutes apiece): a second
    grader starts 2 s after the first, and a worker of the one that grades dies between writing its parts and its
    commit record."""
    cfg = grading_world(tmp_path)
    marker = tmp_path / "killed"
    fault = {manifest.KILL_AFTER_PARTS: str(marker)}  # whichever grades loses one worker, once
    first = start_grader(cfg, tmp_path / "first.log", fault)
    time.sleep(2)
    second = start_grader(cfg, tmp_path / "second.log", fault)
    codes = [p.wait(timeout=900) for p in (first, second)]
    logs = [(tmp_path / f"{n}.log").read_text() for n in ("first", "second")]
    assert sorted(codes) in ([0, 0], [0, 3]), logs
    assert marker.exists()  # a worker did die mid-commit
    reports = [json.loads(line.split(" ", 1)[1]) for log in logs for line in log.splitlines()
               if line.startswith("REPORT")]
    assert sum(r["generated"] for r in reports) == 24  # 12 questions x 2 samples, generated once between them
    if 3 in codes:  # the one that found the lease held said who holds it
        assert "is being written by another run" in logs[codes.index(3)]
    assert stored_once(cfg) == (24, 24)
    assert len(bank.read_partition(cfg.bank, "bank", "tiny-student", cfg.grader_id())) == 12  # every question
    # Nothing uncommitted is left to mislead a reader.
    assert bank.remove_uncommitted(cfg.bank, "tiny-student", cfg.grader_id()) == 0

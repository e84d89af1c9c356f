"""Grading end to end on Ray with real vLLM and the tiny models: bank contents, reruns, kills, two students."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.demo.synthetic import math_rows, write_jsonl
from adaptcot.demo.tiny_models import build_tiny_models
from adaptcot.grade import bank, grading, manifest
from adaptcot.grade.answering import EngineConfig, ResourcesConfig, SamplingConfig, StudentConfig
from adaptcot.grade.grading import GradeConfig
from adaptcot.grade.levels import GraderConfig
from adaptcot.grade.prm import PRMConfig
from adaptcot.pool.importer import PoolImportConfig, import_pool, read_pool
from adaptcot.verify.attempts import VerifyConfig
from adaptcot.verify.code_tests import VERDICTS

pytestmark = pytest.mark.slow
SMALL = ResourcesConfig(cpus_per_engine=0.5, cpus_per_light_stage=0.1, batch_size=8)
ENGINE = EngineConfig(max_model_len=512, dtype="float32", enforce_eager=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    models = build_tiny_models(root / "models")
    rows = list(math_rows(10, seed=3))
    rows.append({"question": "Count the words. " + "word " * 700, "answer": "#### 700"})  # longer than the context
    write_jsonl(iter(rows), root / "math.jsonl")
    write_jsonl(iter([{"question": "Print hello.", "input_output": json.dumps({"inputs": [""],
                                                                            "outputs": ["hello\n"]})}]),
                root / "code.jsonl")
    pool = root / "pool"
    import_pool(PoolImportConfig(sources=[str(root / "math.jsonl")], domain="math", out=str(pool), preset="gsm8k"))
    import_pool(PoolImportConfig(sources=[str(root / "code.jsonl")], domain="code", out=str(pool), preset="apps"))
    return {"root": root, "models": models, "pool": str(pool), "bank": str(root / "bank")}


def prm_config(world, **kw) -> GradeConfig:
    student = StudentConfig(model=str(world["models"]["student"]), name="tiny-student", engine=ENGINE,
                            resources=SMALL, sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=48))
    prm = PRMConfig(model=str(world["models"]["prm"]), dtype="float32", enforce_eager=True, max_model_len=2048,
                    num_cpus=0.5)
    return GradeConfig(pool=world["pool"], bank=world["bank"], student=student, prm=prm,
                       verify=VerifyConfig(num_cpus=0.1), **kw)


def bank_ids(world, cfg):
    return bank.read_partition(world["bank"], "bank", cfg.student.display_name, cfg.grader_id())["question_id"]


def test_grading_fills_the_bank_once_and_reruns_generate_nothing(world, ray_session):
    cfg = prm_config(world)
    first = grading.grade(cfg)
    pool_ids = set(read_pool(world["pool"])["question_id"].to_pylist())
    assert (first.math_questions, first.code_questions, first.samples_todo, first.generated) == (11, 1, 24, 24)
    # The over-long prompt is an error row, not a crash, and not a level.
    assert (first.generation_errors, first.ungradable, first.newly_graded) == (2, 1, 11)
    ids = bank_ids(world, cfg).to_pylist()
    assert len(ids) == len(set(ids)) == 11 and set(ids) < pool_ids
    attempts = bank.read_partition(world["bank"], "attempts", "tiny-student", cfg.grader_id())
    code = attempts.filter(pa.compute.equal(attempts["domain"], "code"))
    assert code.num_rows == 2 and set(code["verdict"].to_pylist()) <= set(VERDICTS) - {"passed", "sandbox_error"}
    errors = attempts.filter(pa.compute.equal(attempts["verdict"], "error"))
    assert "maximum context length" in errors["error"][0].as_py()
    rows = bank.read_partition(world["bank"], "bank", "tiny-student", cfg.grader_id()).to_pylist()
    assert all(r["level"] != "easy" or r["prm_score"] is None for r in rows)
    assert {r["num_samples"] for r in rows} == {2}
    scores = bank.read_partition(world["bank"], "step_scores", "tiny-student", cfg.grader_id())
    assert scores.num_rows > 0 and all(0.0 <= s <= 1.0 for s in scores["prm_score"].to_pylist() if s is not None)

    again = grading.grade(cfg)
    assert (again.samples_todo, again.generated, again.newly_graded) == (0, 0, 0)
    assert bank_ids(world, cfg).to_pylist() == ids


def test_a_killed_run_resumes_with_only_the_missing_samples(world, ray_session):
    cfg = prm_config(world)
    if not bank_ids(world, cfg).to_pylist():
        grading.grade(cfg)
    # A run killed after some batches were committed, before the bank rows: drop one committed attempts part (and
    # its rows from the manifest) and every bank row, as if that batch and the finalize never happened.
    root, student, gid = world["bank"], "tiny-student", cfg.grader_id()
    current = manifest.read_manifest(root, student, gid)
    part = current.files("attempts")[0]
    lost = pq.read_table(part).num_rows
    rows = current.rows.filter(pa.compute.invert(pa.compute.or_(
        pa.compute.is_in(current.rows["table"], pa.array(["bank", "ungradable"])),
        pa.compute.equal(current.rows["file"], manifest.relative(root, part)))))
    rows = rows.set_column(rows.schema.get_field_index("finalized"), "finalized", pa.array([False] * rows.num_rows))
    for path in current.files("bank") + [part]:
        Path(path).unlink()
    manifest.fold(current, student, gid, rows)
    resumed = grading.grade(cfg)
    assert resumed.samples_todo == resumed.generated == lost
    ids = bank_ids(world, cfg).to_pylist()
    assert len(ids) == len(set(ids)) == 11
    keys = bank.read_partition(world["bank"], "attempts", "tiny-student", cfg.grader_id(),
                               ["question_id", "sample_index"])
    pairs = list(zip(keys["question_id"].to_pylist(), keys["sample_index"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == 24


def test_a_second_student_shares_the_bank_graded_by_pass_rate(world, ray_session):
    first = prm_config(world)
    if not bank_ids(world, first).to_pylist():
        grading.grade(first)
    teacher = StudentConfig(model=str(world["models"]["teacher"]), name="tiny-teacher", engine=ENGINE,
                            resources=SMALL, sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=32))
    second = GradeConfig(pool=world["pool"], bank=world["bank"], student=teacher, verify=VerifyConfig(num_cpus=0.1),
                         grader=GraderConfig(mode="pass_rate", easy_min_pass_rate=0.5,
                                             thresholds=(0.4, 0.3, 0.2, 0.1)))
    report = grading.grade(second)
    assert report.newly_graded == 11
    summary = {(r["student"], r["grader_id"]): r for r in bank.summary(world["bank"])}
    assert set(summary) == {("tiny-student", first.grader_id()), ("tiny-teacher", second.grader_id())}
    # Random tiny models answer nothing right: by pass rate every question is the hardest.
    assert summary[("tiny-teacher", second.grader_id())]["levels"]["wrong_hardest"] == 11
    assert bank.compare(world["bank"], "tiny-student", "tiny-teacher")["shared_questions"] == 11


def test_bad_models_fail_before_ray_starts(world):
    cfg = prm_config(world)
    with pytest.raises(FileNotFoundError, match="student model not found"):
        grading.preflight(cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": "/no/model"})}))
    with pytest.raises(ValueError, match="step token '<step>' is not a single token"):
        grading.preflight(cfg.model_copy(update={"prm": cfg.prm.model_copy(update={"step_token": "<step>"})}))
    with pytest.raises(ValueError, match="no prm model"):
        GradeConfig(pool=world["pool"], bank=world["bank"], student=cfg.student)


def test_calibrated_cut_points_are_fitted_once_on_the_panel_and_shared_by_two_students(world, ray_session):
    panel = {"students": [StudentConfig(model=str(world["models"]["teacher"]), name="panel-teacher", engine=ENGINE,
                                        resources=SMALL, sampling=SamplingConfig(n=2, temperature=1.0,
                                                                                 max_tokens=48))],
             "questions": 6, "min_wrong_answers": 4}
    bank_root = str(world["root"] / "calibrated-bank")
    calibrated = GraderConfig(thresholds="calibrated")
    first = prm_config(world, grader=calibrated, panel=panel).model_copy(update={"bank": bank_root})
    report = grading.grade(first)
    assert report.cut_points_from.startswith("calibrated on panel-teacher")
    (member,) = report.panel
    assert member["student"] == "panel-teacher" and 0 < member["samples_todo"] < 2 * 12  # a share of the pool
    assert member["cut_points"] == report.cut_points
    # A second student graded by the same scorer reuses the record: no panel run, the same cut points.
    second_student = first.student.model_copy(update={"name": "tiny-student-2", "sampling": SamplingConfig(
        n=1, temperature=0.7, max_tokens=48)})
    second = grading.grade(first.model_copy(update={"student": second_student, "panel": None}))
    assert second.panel == [] and second.cut_points == report.cut_points
    assert second.cut_points_from == report.cut_points_from
    assert bank.grader_cut_points(bank_root, first.grader_id()) == bank.grader_cut_points(
        bank_root, first.model_copy(update={"student": second_student}).grader_id()) == report.cut_points


def test_the_prm_stage_scores_the_first_steps_of_a_long_answer_and_skips_a_batch_with_no_wrong_one(world,
                                                                                                  ray_session):
    import ray

    from adaptcot.grade.prm import PRMScorer

    prm = PRMConfig(model=str(world["models"]["prm"]), dtype="float32", enforce_eager=True, max_model_len=256,
                    max_steps=8, num_cpus=0.5)
    long_answer = "\n\n".join(f"Step {i}: add {i}." for i in range(1, 40))
    batches = [pa.table({"question": ["Add them."] * 2, "response": [long_answer, "Step 1: done."],
                         "correct": [False, True]}),
               pa.table({"question": ["Add them."], "response": ["All right."], "correct": [True]})]
    ds = ray.data.from_arrow(batches).map_batches(
        PRMScorer, fn_constructor_kwargs={"cfg": prm, "aggregation": "progress", "step_rule": "double_newline"},
        concurrency=1, num_cpus=0.5, batch_size=None, batch_format="pyarrow")
    rows = {r["response"]: r for r in ds.take_all()}
    long_row = rows[long_answer]
    assert long_row["steps_total"] == 39 and long_row["steps_scored"] == 8 and len(long_row["step_scores"]) == 8
    assert long_row["prm_error"] is None and 0.0 <= long_row["prm_score"] <= 8 / 39
    assert rows["Step 1: done."]["step_scores"] is None and rows["All right."]["prm_score"] is None

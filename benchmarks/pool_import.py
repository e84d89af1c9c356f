"""Pool import at scale: rows/s and peak RSS for generated pools of 100k and 1M questions.

Run: .venv/bin/python benchmarks/pool_import.py [--sizes 100000 1000000] [--smoke]
Each import runs in its own process so its peak RSS is its own: the process's high-water mark (VmHWM), not
`ru_maxrss`, which on Linux a child inherits from its parent through fork and exec (here the parent's peak from
writing the source file, ~700 MB at 1M rows, showed as the peak of both sides). Baseline, in the same script: a
bare loop that only json-parses the same file (no mapping, normalisation, de-duplication or writing), for the cost
of the rest.
Prints the 1M/100k peak-RSS ratio (target: about 2x or less, i.e. memory stays flat as the pool grows).
Agreement (exit 1 with the disagreements listed): both sides read every row of the source; the import accounts for
each (imported + duplicates + already in the pool + near duplicates + rejected = read), rejects exactly the malformed
rows planted (one in a thousand) and writes as many pool and reject rows (near duplicates included) as it reports.
The generated questions come from templates, so the MinHash near-duplicate pass (on, as by default) has many to find.
--smoke: sizes 2,000 and 20,000 (seconds): checks that it runs and agrees, not its memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from adaptcot.common import storage
from adaptcot.demo.synthetic import math_rows, write_jsonl
from adaptcot.pool.importer import pool_files, read_rejects

SMOKE_SIZES = [2_000, 20_000]

CHILD = r"""
import json, resource, sys, time
from adaptcot.pool.importer import PoolImportConfig, import_pool
mode, src, out = sys.argv[1:4]
t = time.perf_counter()
if mode == "import":
    report = import_pool(PoolImportConfig(sources=[src], domain="math", out=out, preset="gsm8k"))
    rows, extra = report.read, report.as_dict()
else:  # baseline: parse every line and nothing else
    rows, extra = 0, {}
    with open(src, "rb") as f:
        for line in f:
            json.loads(line)
            rows += 1
seconds = time.perf_counter() - t
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # includes the parent's peak: only a fallback
try:
    with open("/proc/self/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak_kb / 1024, **extra}))
"""


def make_source(path: Path, n: int) -> Path:
    def rows():
        for i, row in enumerate(math_rows(n, seed=1)):
            # One row in a thousand is malformed, as in real dumps.
            yield {"question": row["question"], "answer": "no answer line"} if i % 1000 == 999 else row

    return write_jsonl(rows(), path)


def run(mode: str, src: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"pool_import: the {mode} side failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def disagreements(n: int, base: dict, imp: dict, out: Path) -> list[str]:
    """What the two sides do not agree on for a source of n rows, and what the import does not account for."""
    problems = []
    if not base["rows"] == imp["read"] == n:
        problems.append(f"{n} rows: the bare parse read {base['rows']}, the import {imp['read']}")
    rejected = sum(imp["rejected"].values())
    near = imp["near_duplicates"]
    accounted = imp["imported"] + imp["duplicates"] + imp["already_in_pool"] + near + rejected
    if accounted != imp["read"]:
        problems.append(f"{n} rows: imported + duplicates + already in pool + near duplicates + rejected = "
                        f"{accounted}, read {imp['read']}")
    if rejected != n // 1000:
        problems.append(f"{n} rows: {rejected} rejected ({imp['rejected']}), {n // 1000} malformed rows were planted")
    written = storage.row_count(pool_files(out))
    if written != imp["imported"]:
        problems.append(f"{n} rows: the pool holds {written} rows, the import reports {imp['imported']} imported")
    if read_rejects(out).num_rows != rejected + near:
        problems.append(f"{n} rows: the rejects table holds {read_rejects(out).num_rows} rows, the import reports "
                        f"{rejected} rejected and {near} near duplicates")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}: checks the sides agree")
    args = parser.parse_args()
    if args.smoke:
        args.sizes = SMOKE_SIZES
    results, problems = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            src = make_source(Path(tmp) / f"pool_{n}.jsonl", n)
            base = run("baseline", src, Path(tmp) / "unused")
            imp = run("import", src, Path(tmp) / f"out_{n}")
            results[n] = imp
            problems += disagreements(n, base, imp, Path(tmp) / f"out_{n}")
            print(f"{n:>9} rows  import: {imp['rows'] / imp['seconds']:>9.0f} rows/s  "
                  f"peak RSS {imp['peak_rss_mb']:7.1f} MB"
                  f"  (imported {imp['imported']}, duplicates {imp['duplicates']}, near duplicates "
                  f"{imp['near_duplicates']}, rejected {sum(imp['rejected'].values())})")
            print(f"{'':>9}       bare json parse: {base['rows'] / base['seconds']:>9.0f} rows/s  peak RSS "
                  f"{base['peak_rss_mb']:7.1f} MB   import/bare speed ratio "
                  f"{(imp['rows'] / imp['seconds']) / (base['rows'] / base['seconds']):.2f}")
    if len(args.sizes) >= 2:
        small, large = results[min(args.sizes)], results[max(args.sizes)]
        print(f"peak RSS ratio {max(args.sizes)}/{min(args.sizes)}: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
              f"(target <= ~2)")
    if problems:
        sys.exit("pool_import: the import and the bare parse disagree:\n  " + "\n  ".join(problems))
    print("agreement: both sides read every row; the import accounts for each and wrote what it reports")


if __name__ == "__main__":
    main()

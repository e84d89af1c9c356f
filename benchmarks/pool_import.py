"""Pool import at scale: rows/s and peak RSS for generated pools of 100k and 1M questions.

Run: .venv/bin/python benchmarks/pool_import.py [--sizes 100000 1000000]
Each import runs in its own process so its peak RSS is its own. Baseline, in the same script: a bare loop that only
json-parses the same file (no mapping, normalisation, de-duplication or writing), for the cost of the rest.
Prints the 1M/100k peak-RSS ratio (target: about 2x or less, i.e. memory stays flat as the pool grows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adaptcot.synthetic import math_rows, write_jsonl

CHILD = r"""
import json, resource, sys, time
from adaptcot.pool_import import PoolImportConfig, import_pool
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
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def make_source(path: Path, n: int) -> Path:
    def rows():
        for i, row in enumerate(math_rows(n, seed=1)):
            # One row in a thousand is malformed, as in real dumps.
            yield {"question": row["question"], "answer": "no answer line"} if i % 1000 == 999 else row

    return write_jsonl(rows(), path)


def run(mode: str, src: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            src = make_source(Path(tmp) / f"pool_{n}.jsonl", n)
            base = run("baseline", src, Path(tmp) / "unused")
            imp = run("import", src, Path(tmp) / f"out_{n}")
            results[n] = imp
            print(f"{n:>9} rows  import: {imp['rows'] / imp['seconds']:>9.0f} rows/s  peak RSS {imp['peak_rss_mb']:7.1f} MB"
                  f"  (imported {imp['imported']}, duplicates {imp['duplicates']}, rejected {sum(imp['rejected'].values())})")
            print(f"{'':>9}       bare json parse: {base['rows'] / base['seconds']:>9.0f} rows/s  peak RSS "
                  f"{base['peak_rss_mb']:7.1f} MB   import/bare speed ratio "
                  f"{(imp['rows'] / imp['seconds']) / (base['rows'] / base['seconds']):.2f}")
    if len(args.sizes) >= 2:
        small, large = results[min(args.sizes)], results[max(args.sizes)]
        print(f"peak RSS ratio {max(args.sizes)}/{min(args.sizes)}: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
              f"(target <= ~2)")


if __name__ == "__main__":
    main()

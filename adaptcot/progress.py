"""Progress bars for the steps that run in this process (Ray Data draws its own for the distributed stages).

`bar(total, desc, unit)` is a tqdm bar on stderr. On a terminal it redraws twice a second; in a log (a Ray job, CI)
it writes a line at most every 30 s, so long steps still show they move without flooding the log.
`ADAPTCOT_PROGRESS=0` turns the bars off.
"""

from __future__ import annotations

import os
import sys


def bar(total: int | None = None, desc: str = "", unit: str = "it"):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 30.0, disable=os.environ.get("ADAPTCOT_PROGRESS") == "0")

"""How every job command runs, from the CLI or from `ray_jobs/*.py`: load and check the config, write provenance,
start Ray, run the work with the terminal kept quiet, and end with one line that says how it went.

    adaptcot grade: configs/local.yaml -> runs/local
      logs: runs/local/logs/20261204-203011-grade/adaptcot.log
    [grade] ...                     stage lines and progress bars (`common/terminal.py`)
    adaptcot grade: done in 1 min 32 s

Everything else the process and Ray's workers print goes to the log folder: `adaptcot.log` (this process, the
worker output Ray forwards, tracebacks), `ray/` (the local Ray session's own logs), `provenance.json` and
`config.yaml` (also written to the run directory). The folder is `<run_dir>/logs/<time>-<command>/` for a local
run directory; for a cloud one it is `./logs/<time>-<command>/` (or under `$ADAPTCOT_LOGS`), copied to
`<run_dir>/logs/` at the end. A failure
prints one line naming the stage and the log, and the command exits 1; a bad config exits 2 before any work.
`--verbose` leaves everything on the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from adaptcot.common import provenance, runtime, storage, terminal
from adaptcot.job.config import JobConfig

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
# What a stage raises when its input is wrong (a missing file, a bad dataset or value): exit 2, like a bad config.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def log_folder(cfg: JobConfig, command: str) -> Path:
    name = f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{command}"
    # A cloud run directory cannot be appended to: the logs are written here, then copied there at the end.
    base = Path(os.environ.get("ADAPTCOT_LOGS", "logs")) if storage.is_remote(cfg.run_dir) else \
        Path(cfg.run_dir) / "logs"
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _keep_ray_logs(session_dir: str | None, folder: Path) -> None:
    """The local Ray session's log files (raylet, GCS, workers), for a look after the run."""
    if session_dir and (Path(session_dir) / "logs").is_dir():
        shutil.copytree(Path(session_dir) / "logs", folder / "ray", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.sock", "events", "old"))


def launch(command: str, cfg: JobConfig, work: Callable[[JobConfig], object],
           checks: dict[str, Callable[[JobConfig], None]] | None = None, verbose: bool = False,
           config: dict | None = None, uses_ray: bool = True) -> int:
    """Run `work(cfg)` as the command `command` (see the module docstring); the exit code. `checks` (stage name ->
    check) run first, before the run directory or Ray exist: a refused input creates nothing. `config` is what the
    provenance records (default: the job config)."""
    started = time.monotonic()
    for name, check in (checks or {}).items():
        try:
            check(cfg)
        except Exception as e:  # a check's message names what is wrong; the stage names where
            terminal.say(f"adaptcot: error: [{name}] {e}", error=True)
            return EXIT_BAD_INPUT
    folder = log_folder(cfg, command)
    log = folder / "adaptcot.log"
    record = provenance.record(command, list(sys.argv), config or cfg.model_dump(mode="json"))
    provenance.write(record, cfg.run_dir, str(folder))
    terminal.say(f"adaptcot {command}: {cfg.run_dir}")
    terminal.say(f"  logs: {log}")
    session = None
    with terminal.quiet(str(log)) if not verbose else contextlib.nullcontext():
        try:
            session = runtime.init_ray(cfg.ray, progress_bars=verbose) if uses_ray else None
            result = work(cfg)
            code, ending = 0, f"done in {terminal.duration(time.monotonic() - started)}"
            if isinstance(result, dict) and result.get("report"):
                ending += f"; report: {result['report']}"
        except terminal.StageFailed as e:
            traceback.print_exc()
            bad_input = isinstance(e.__cause__, USER_ERRORS)  # the data or a path, not the code: exit 2
            code, ending = EXIT_BAD_INPUT if bad_input else EXIT_FAILED, f"[{e.stage}] failed: {e} (log: {log})"
        except Exception as e:
            traceback.print_exc()
            code, ending = EXIT_FAILED, f"failed: {type(e).__name__}: {e} (log: {log})"
        except KeyboardInterrupt:
            traceback.print_exc()
            code, ending = EXIT_INTERRUPTED, "interrupted (running it again resumes: finished work is kept)"
        finally:
            if session is not None:  # a cluster of our own: stop it while its output still goes to the log
                import ray

                ray.shutdown()
                _keep_ray_logs(session, folder)
    if storage.is_remote(cfg.run_dir):
        storage.upload_tree(str(folder), storage.join(cfg.run_dir, "logs", folder.name))
    terminal.say(f"adaptcot {command}: {ending}", error=code != 0)
    return code


def add_job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a job YAML, e.g. configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run_dir=runs/r2 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="Ray's, vLLM's and every library's output on the terminal")

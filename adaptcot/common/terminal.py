"""What a person sees while adaptcot runs: a line per stage start and end, progress bars, the summary. Everything else
(Ray's and vLLM's logs, library warnings, the worker output Ray forwards, tracebacks) goes to a log file.

- `say(line)`: a line on the terminal (stdout; stderr for an error).
- `bar(total, desc, unit)`: a tqdm bar with rate and ETA on the terminal (stderr). On a terminal it redraws twice a
  second; in a log (a Ray job, CI) at most every 30 s, so long steps show they move without flooding the log.
  `ADAPTCOT_PROGRESS=0` turns the bars off.
- `stage(name)`: `[name] ...` when a stage starts, `[name] done in 12 s` and its report lines when it ends; an
  exception inside comes out as `StageFailed`, which names the stage.
- `quiet(log_file)`: while it is open, file descriptors 1 and 2 (this process and every process it starts, Ray's
  workers included) write to `log_file`; `say` and `bar` keep the terminal. Only the descriptors move, not
  `sys.stdout`/`sys.stderr`, so logging handlers that libraries bound to those objects keep working afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time

_out = None  # where say() writes while quiet() is open (None: sys.stdout)
_err = None  # where bars draw while quiet() is open (None: sys.stderr)


def say(line: str = "", error: bool = False) -> None:
    """A line on the terminal: stdout, or stderr for an error. While quiet, the log gets it too (what was running
    when something was logged)."""
    print(line, file=(_err or sys.stderr) if error else (_out or sys.stdout), flush=True)
    if _out is not None:
        os.write(1, f"{line}\n".encode())


def bar(total: int | None = None, desc: str = "", unit: str = "it"):
    from tqdm import tqdm

    stream = _err or sys.stderr
    interactive = stream.isatty()
    return tqdm(total=total, desc=f"  {desc}", unit=unit, file=stream, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 30.0, disable=os.environ.get("ADAPTCOT_PROGRESS") == "0")


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class StageFailed(RuntimeError):
    """A stage raised: `stage` names it, `__cause__` is what it raised."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(_one_line(cause))
        self.stage = stage


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S")  # "ValueError: ...", "adaptcot.x.SomeError: ..."


def _one_line(error: BaseException) -> str:
    """`Type: message` on one line. An error that crossed a Ray worker carries the remote traceback as its message:
    its last `Type: message` line that is not Ray's own wrapper is the original error (the whole text goes to the
    log); Ray Data appends advice about retries after it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1:
        errors = [line for line in lines if _ERROR_LINE.match(line) and not line.startswith("ray.")]
        return errors[-1] if errors else lines[-1]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class _Shown:
    def __init__(self):
        self.report: list[str] = []

    def lines(self, lines: list[str]) -> None:
        self.report = list(lines)


@contextlib.contextmanager
def stage(name: str, what: str = ""):
    """Start and end lines of one stage; `shown.lines(...)` sets the report lines printed under its end line."""
    say(f"[{name}] {what}".rstrip())
    started, shown = time.monotonic(), _Shown()
    try:
        yield shown
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(name, e) from e
    say(f"[{name}] done in {duration(time.monotonic() - started)}")
    for line in shown.report:
        say(f"  {line}")


def _terminal(stream, fd: int):
    """A stream on the terminal that survives `dup2(log, fd)`: a duplicate of `fd` when `stream` writes to it (a
    real process); else `stream` itself (pytest's capture, which does not write to fd 1 or 2)."""
    try:
        if stream.fileno() != fd:
            return stream, False
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream, False
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8"), True


@contextlib.contextmanager
def quiet(log_file: str):
    """Send fds 1 and 2 to `log_file` (appended) while the block runs; `say` and `bar` keep the terminal."""
    global _out, _err
    if _out is not None:  # already quiet (a command inside a command): one log is enough
        yield
        return
    out, own_out = _terminal(sys.stdout, 1)
    err, own_err = _terminal(sys.stderr, 2)
    saved = (os.dup(1), os.dup(2))
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    _out, _err = out, err
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        _out = _err = None
        for stream, own in ((out, own_out), (err, own_err)):
            if own:
                stream.close()

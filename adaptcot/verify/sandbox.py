"""Run untrusted programs in an isolated, warm sandbox: `Sandbox(config).execute(request)`.

One `Sandbox` is one long-lived runner process (`sandbox_runner.py`) inside bubblewrap, reused for many programs:
- namespaces: new user, PID, network, mount, IPC and UTS namespaces; no network but loopback; the runner is PID 1, so
  programs cannot kill it, and everything they start is killed after each program;
- filesystem: a fresh tmpfs root holding read-only /usr (and /lib*, /bin), the Python install, a small writable /tmp
  (size-capped, wiped after every program); nothing of the host's /root, /home, /work or /etc;
- environment: cleared, then PATH, HOME, LANG only;
- privileges: started as root, the sandbox drops to uid/gid 65534 before bubblewrap (`setpriv`), so uid 65534
  inside maps to an unprivileged host uid, not to root; no capabilities; a seccomp filter (`seccomp.py`) that denies
  ptrace, new namespaces (nested user namespaces included, as does bwrap's `--disable-userns` where it has it),
  keyrings, BPF, io_uring, mounts;
- limits per test process: CPU seconds (the verdict "timeout"), address space, file size, open files, processes; a
  wall-clock backstop and output size enforced by the runner; `pids` and `memory` cgroups around the whole sandbox
  (needed as root: RLIMIT_NPROC does not bind uid 0) and a CPU quota where the host delegates the cpu controller
  (`cgroups.py`).

Fails closed: `isolation: namespaces` (the default) raises `SandboxUnavailable`, naming the host, wherever any of
this cannot be had. There is no automatic fallback. `isolation: none` is for trusted code only: a plain subprocess
with the same rlimits and cgroups, a cleared environment and a temporary directory, as the caller's own uid; it CAN
open network connections and read this machine's files, and it logs a loud warning.

The runner reports what it observed; verdicts are decided by the caller (`code_tests.py`), which keeps the
expected outputs: they never enter the sandbox.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from adaptcot.common.settings import Strict
from adaptcot.verify.cgroups import SandboxCgroups
from adaptcot.verify.sandbox_runner import wall_backstop  # the runner's own rule, on this side of the pipe
from adaptcot.verify.seccomp import seccomp_filter

log = logging.getLogger(__name__)
RUNNER_SOURCE = (Path(__file__).parent / "sandbox_runner.py").read_text()
_SANDBOX_UID = 65534  # "nobody": inside the user namespace, and on the host when started as root
_NO_ISOLATION_WARNING = ("SANDBOX ISOLATION IS OFF (sandbox.isolation: none): generated code runs as a plain "
                         "subprocess with rlimits, a pids cgroup and a cleared environment, but it CAN open network "
                         "connections and read this machine's files. Use it for trusted code only.")


class SandboxConfig(Strict):
    isolation: Literal["namespaces", "none"] = "namespaces"
    timeout_s: float = Field(default=4.0, gt=0)  # CPU time per test case (APPS and TACO judges use 4 s); the wall
    # clock stops a case only at 3 x timeout_s + 1 s (a sleeper), and that program is run once more before it counts
    memory_mb: int = Field(default=1024, ge=64)  # address space per test process; the cgroup allows twice that
    processes: int = Field(default=32, ge=1)  # processes and threads a program may run at once
    output_kb: int = Field(default=1024, ge=1)  # stdout per test case; more is a runtime error
    file_kb: int = Field(default=10240, ge=0)  # largest file a program may write
    open_files: int = Field(default=64, ge=8)
    tmpfs_mb: int = Field(default=64, ge=1)  # writable scratch space (counts against memory)
    cpus: float = Field(default=1.0, gt=0)  # CPU quota of one sandbox (cgroup cpu.max), where the host allows it
    python: str | None = None  # interpreter for programs; default: this one (run with -I -S: standard library only)

    @field_validator("isolation", mode="before")
    @classmethod
    def _no_fallback(cls, value):
        if value == "auto":
            raise ValueError("'auto' was removed: it fell back to an unisolated subprocess wherever isolation "
                             "failed. Use 'namespaces' (the default: the job stops if a node cannot isolate) or "
                             "'none' (trusted code only)")
        return value


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start here with the isolation asked for."""


# --- Isolation probe ----------------------------------------------------------------------------------------------
_probe_cache: dict[str, str | None] = {}


def namespaces_problem(python: str | None = None) -> str | None:
    """None if bubblewrap can start a namespaced Python here exactly as the sandbox does (privileges dropped, no
    nested user namespaces, the seccomp filter); else why not. Cached per process and PATH."""
    python = python or sys.executable
    key = f"{python}:{os.environ.get('PATH', '')}"
    if key not in _probe_cache:
        _probe_cache[key] = _probe(python)
    return _probe_cache[key]


def _probe(python: str) -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not on PATH (apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root, the sandbox drops privileges with setpriv (util-linux), which is not on PATH"
    try:
        with _seccomp_file() as seccomp:
            cmd = _isolated_command(python, SandboxConfig(), seccomp.fileno()) + ["-c", "print('ok')"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, pass_fds=(seccomp.fileno(),))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed: {exc}"
    if done.returncode == 0 and done.stdout.strip() == "ok":
        return None
    return f"bwrap failed: {done.stderr.strip()[-300:]}"


def _seccomp_file():
    """The seccomp filter in an unlinked file, to hand to bwrap as a descriptor."""
    f = tempfile.TemporaryFile()
    f.write(seccomp_filter())
    f.flush()
    f.seek(0)
    return f


_PYTHON_STAGING = "/run/adaptcot-python"
# bwrap --die-with-parent kills the runner when the *thread* that started it exits (PR_SET_PDEATHSIG is per thread),
# and callers verify from short-lived threads: every runner is started from this one thread, which lives as long
# as the process.
_LAUNCHER = ThreadPoolExecutor(1, thread_name_prefix="sandbox-launcher")


def _isolated_command(python: str, config: SandboxConfig, seccomp_fd: int) -> list[str]:
    """The command that starts `python` in the sandbox. Started as root, it drops to uid/gid 65534 (no
    supplementary groups) before bubblewrap. That uid may not reach the interpreter (a pyenv install under /root,
    mode 700), so an outer mount namespace, still root, first shows the install at a path it can read."""
    exe, prefix = _interpreter(config.model_copy(update={"python": python}))
    if os.geteuid() != 0:
        return _bwrap_command(exe, prefix, prefix, config, seccomp_fd)
    stage = ["bwrap", "--bind", "/", "/", "--dev-bind", "/dev", "/dev", "--tmpfs", "/run",
             "--ro-bind", prefix, _PYTHON_STAGING, "--die-with-parent", "--"]
    drop = ["setpriv", f"--reuid={_SANDBOX_UID}", f"--regid={_SANDBOX_UID}", "--clear-groups", "--"]
    return stage + drop + _bwrap_command(exe, prefix, _PYTHON_STAGING, config, seccomp_fd)


def _interpreter(config: SandboxConfig) -> tuple[str, str]:
    """(executable, install prefix) of the Python that runs programs."""
    exe = os.path.realpath(config.python or sys.executable)
    prefix = Path(exe).parent.parent
    if not os.access(exe, os.X_OK):
        raise SandboxUnavailable(f"sandbox.python {exe} is not an executable")
    return exe, str(prefix)


@functools.cache
def _bwrap_can_disable_userns() -> bool:
    try:
        return "--disable-userns" in subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout
    except OSError:
        return False


def _bwrap_command(exe: str, prefix: str, prefix_source: str, config: SandboxConfig, seccomp_fd: int) -> list[str]:
    no_nested_userns = ["--disable-userns"] if _bwrap_can_disable_userns() else []  # else the seccomp filter's job
    cmd = ["bwrap", "--unshare-all", "--unshare-user", *no_nested_userns, "--die-with-parent", "--new-session",
           "--as-pid-1", "--cap-drop", "ALL", "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID),
           "--seccomp", str(seccomp_fd), "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / top
        if path.is_symlink():
            cmd += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            cmd += ["--ro-bind", str(path), str(path)]
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix_source, prefix]
    cmd += ["--dev", "/dev", "--proc", "/proc",
            "--size", str(config.tmpfs_mb << 20), "--tmpfs", "/tmp",
            "--size", str(1 << 20), "--tmpfs", "/dev/shm",
            "--remount-ro", "/", "--chdir", "/tmp", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--", exe, "-I", "-S"]
    return cmd


# --- The sandbox --------------------------------------------------------------------------------------------------
class Sandbox:
    """A warm, isolated runner for one program at a time. Not thread-safe: use one per worker thread."""

    def __init__(self, config: SandboxConfig = SandboxConfig()):
        self.config = config
        self.isolated = self._choose_isolation()
        self.starts = 0  # how often a runner was started (restarts follow programs that broke one)
        self._proc: subprocess.Popen | None = None
        self._cgroups: SandboxCgroups | None = None
        self._scratch: str | None = None
        self._pending = b""
        self._stderr = None

    def _choose_isolation(self) -> bool:
        if self.config.isolation == "none":
            log.warning(_NO_ISOLATION_WARNING)
            return False
        problem = namespaces_problem(self.config.python)
        if problem is not None:
            raise SandboxUnavailable(f"host {socket.gethostname()} cannot isolate generated code: {problem}. "
                                     "Nothing was verified. Give the node what the sandbox needs (docs/verification.md"
                                     ", 'Where it runs'), or set sandbox.isolation: none for trusted code only")
        return True

    # -- lifecycle
    def start(self) -> None:
        cfg = self.config
        self._cgroups = SandboxCgroups(f"adaptcot-sandbox-{uuid.uuid4().hex[:12]}", pids_max=cfg.processes + 8,
                                       memory_bytes=(2 * cfg.memory_mb + cfg.tmpfs_mb + 64) << 20, cpus=cfg.cpus)
        if self._cgroups.problem and (os.geteuid() == 0 or not self.isolated):
            # RLIMIT_NPROC never binds uid 0, and without a user namespace it counts the user's whole session:
            # only a pids cgroup stops a fork bomb there.
            self._stop()
            raise SandboxUnavailable(f"host {socket.gethostname()}: the sandbox needs a pids cgroup to limit "
                                     f"processes (as root, or with isolation: none), but {self._cgroups.problem}")
        seccomp = _seccomp_file() if self.isolated else None
        if self.isolated:
            settings = {"scratch": "/tmp", "wipe": ["/tmp", "/dev/shm"]}
            cmd = _isolated_command(cfg.python or sys.executable, cfg, seccomp.fileno())
            env, cwd = None, None
        else:
            self._scratch = tempfile.mkdtemp(prefix="adaptcot-sandbox-")
            settings = {"scratch": self._scratch, "wipe": [self._scratch]}
            cmd = [_interpreter(cfg)[0], "-I", "-S"]
            env = {"PATH": "/usr/bin:/bin", "HOME": self._scratch, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
            cwd = self._scratch
        cmd = self._cgroups.enter_command() + cmd + ["-c", RUNNER_SOURCE, json.dumps(settings)]
        self._stderr = tempfile.TemporaryFile()  # the runner's own tracebacks, for sandbox errors
        self._pending = b""
        try:
            self._proc = _LAUNCHER.submit(
                subprocess.Popen, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                cwd=cwd, start_new_session=True, close_fds=True,
                pass_fds=(seccomp.fileno(),) if seccomp else ()).result()
        finally:
            if seccomp:
                seccomp.close()  # bwrap has read it, or holds its own copy of the descriptor
        self.starts += 1
        ready = self._read_reply(deadline=time.monotonic() + 30)
        if ready is None or ready.get("status") != "ready":
            stderr = self._stop()
            raise SandboxUnavailable(f"the sandbox runner did not start: {ready} {stderr[-500:]}")

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop(self) -> str:
        stderr = ""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self._proc.kill()
            try:
                self._proc.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass
            self._proc = None
        if self._stderr is not None:
            self._stderr.seek(0)
            stderr = self._stderr.read()[-4000:].decode("utf-8", "replace")
            self._stderr.close()
            self._stderr = None
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        return stderr

    # -- one program
    def execute(self, request: dict) -> dict:
        """Run one program's cases; returns the runner's report plus `oom_kills`, `runner_lost` and `runner_problem`.

        `request`: kind, code, cases (stdin texts or JSON argument arrays), fn_name / test_code + sites.
        The runner enforces the time limits itself. A runner that misbehaves is replaced, not trusted: one that
        does not answer within its wall-clock backstops (plus slack), dies, answers with a line that is unreadable
        or does not echo this request's nonce, or fails itself, is stopped, and the report says `runner_lost` (the
        caller re-runs the program once before blaming it). One whose wipe left something behind (`leftovers`:
        files, SysV IPC objects) is replaced before the next program.
        """
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self.start()
        cfg = self.config
        nonce = uuid.uuid4().hex  # a line written by anyone but the runner, or a stale one, cannot answer this request
        request = dict(request, nonce=nonce, limits={
            "timeout_s": cfg.timeout_s, "memory_mb": cfg.memory_mb, "output_kb": cfg.output_kb,
            "file_kb": cfg.file_kb, "open_files": cfg.open_files,
            # RLIMIT_NPROC counts every process of the real uid; outside a user namespace that is the user's
            # whole session, so only the cgroup limits processes there.
            "rlimit_processes": cfg.processes if self.isolated and os.geteuid() != 0 else None})
        oom_before = self._cgroups.oom_kills() if self._cgroups else 0
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            reply = self._read_reply(deadline=time.monotonic() + self._reply_budget(request))
        except (BrokenPipeError, OSError):
            reply = None
        oom = (self._cgroups.oom_kills() if self._cgroups else 0) - oom_before
        problem = _reply_problem(reply, nonce)
        if problem:
            self._stop()
            return {"status": "ok", "results": [], "runner_lost": True, "runner_problem": problem, "oom_kills": oom}
        if reply.get("leftovers"):
            log.info("replacing a sandbox runner: after a program it still held %s", reply["leftovers"])
            self._stop()  # the next execute starts a fresh one: nothing of this program reaches the next
        reply.update(runner_lost=False, runner_problem=None, oom_kills=oom)
        return reply

    def _reply_budget(self, request: dict) -> float:
        """Seconds to wait for the runner: every case may run to the runner's wall-clock backstop, plus the wipe."""
        units = max(1, len(request.get("cases") or ()), request.get("sites", 1))
        return wall_backstop(self.config.timeout_s) * units + 10

    def _read_reply(self, deadline: float) -> dict | None:
        """The runner's next line as a JSON object; None if none came in time or it is not one."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._pending:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return reply if isinstance(reply, dict) else None


def _reply_problem(reply: dict | None, nonce: str) -> str | None:
    """Why a runner's reply cannot be trusted as the answer to the request with `nonce`, or None."""
    if reply is None:
        return "no readable reply in time (or the runner died)"
    if reply.get("nonce") != nonce:
        return "a reply that does not echo this request's nonce"
    if reply.get("status") != "ok" or not isinstance(reply.get("results"), list) or not reply["results"]:
        return f"the runner failed: {str(reply.get('detail'))[:300]}"
    return None

"""Run untrusted programs in an isolated, warm sandbox: `Sandbox(config).execute(request)`.

One `Sandbox` is one long-lived runner process (`sandbox_runner.py`) inside bubblewrap, reused for many programs:
- namespaces: new user, PID, network, mount, IPC and UTS namespaces; no network but loopback; the runner is PID 1, so
  programs cannot kill it, and everything they start is killed after each program;
- filesystem: a fresh tmpfs root holding read-only /usr (and /lib*, /bin), the Python install, a small writable /tmp
  (size-capped, wiped after every program); nothing of the host's /root, /home, /work or /etc;
- environment: cleared, then PATH, HOME, LANG only;
- limits per test process: CPU seconds, address space, file size, open files, processes; wall time and output
  size enforced by the runner; a `pids` and a `memory` cgroup around the whole sandbox when the host lets us create
  them (always needed as root: RLIMIT_NPROC does not bind uid 0, even behind a user namespace).

Where bubblewrap or user namespaces are unavailable, `isolation: auto` falls back to a plain subprocess with the same
rlimits, a scrubbed environment, a temporary directory and process groups, and logs a loud warning: that fallback
does not stop network access or reads of the host's files. `isolation: namespaces` refuses to run instead.

The runner reports what it observed; verdicts are decided by the caller (`code_tests.py`), which keeps the
expected outputs: they never enter the sandbox.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field

from adaptcot.common.settings import Strict

log = logging.getLogger(__name__)
RUNNER_SOURCE = (Path(__file__).parent / "sandbox_runner.py").read_text()
_SANDBOX_UID = 65534  # "nobody" inside the user namespace
_FALLBACK_WARNING = ("SANDBOX ISOLATION IS OFF: {why}. Generated code now runs as a plain subprocess with rlimits, "
                     "a scrubbed environment and a temporary directory, but it CAN open network connections and "
                     "read this machine's files. Install bubblewrap (apt-get install bubblewrap) and allow user "
                     "namespaces, or set sandbox.isolation: namespaces to refuse to run without them.")


class SandboxConfig(Strict):
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    timeout_s: float = Field(default=4.0, gt=0)  # wall time per test case (APPS and TACO judges use 4 s)
    memory_mb: int = Field(default=1024, ge=64)  # address space per test process; the cgroup allows twice that
    processes: int = Field(default=32, ge=1)  # processes and threads a program may run at once
    output_kb: int = Field(default=1024, ge=1)  # stdout per test case; more is a runtime error
    file_kb: int = Field(default=10240, ge=0)  # largest file a program may write
    open_files: int = Field(default=64, ge=8)
    tmpfs_mb: int = Field(default=64, ge=1)  # writable scratch space (counts against memory)
    python: str | None = None  # interpreter for programs; default: this one (run with -I -S: standard library only)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start here with the isolation asked for."""


# --- Isolation probe ----------------------------------------------------------------------------------------------
_probe_cache: dict[str, str | None] = {}


def namespaces_problem(python: str | None = None) -> str | None:
    """None if bubblewrap can start a namespaced Python here; else why not (cached per process)."""
    python = python or sys.executable
    if python not in _probe_cache:
        if shutil.which("bwrap") is None:
            _probe_cache[python] = "bubblewrap (bwrap) is not installed"
        else:
            cmd = _bwrap_command(python, SandboxConfig()) + ["-c", "print('ok')"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                ok = done.returncode == 0 and done.stdout.strip() == "ok"
                _probe_cache[python] = None if ok else f"bwrap failed: {done.stderr.strip()[-300:]}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                _probe_cache[python] = f"bwrap failed: {exc}"
    return _probe_cache[python]


def _interpreter(config: SandboxConfig) -> tuple[str, str]:
    """(executable, install prefix) of the Python that runs programs."""
    exe = os.path.realpath(config.python or sys.executable)
    prefix = Path(exe).parent.parent
    if not os.access(exe, os.X_OK):
        raise SandboxUnavailable(f"sandbox.python {exe} is not an executable")
    return exe, str(prefix)


def _bwrap_command(python: str, config: SandboxConfig) -> list[str]:
    exe, prefix = _interpreter(config.model_copy(update={"python": python}))
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--as-pid-1",
           "--cap-drop", "ALL", "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / top
        if path.is_symlink():
            cmd += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            cmd += ["--ro-bind", str(path), str(path)]
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--dev", "/dev", "--proc", "/proc",
            "--size", str(config.tmpfs_mb << 20), "--tmpfs", "/tmp",
            "--size", str(1 << 20), "--tmpfs", "/dev/shm",
            "--remount-ro", "/", "--chdir", "/tmp", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--", exe, "-I", "-S"]
    return cmd


# --- cgroups ------------------------------------------------------------------------------------------------------
class _Cgroups:
    """A pids and a memory cgroup around one sandbox (cgroup v1 or v2), or none where the host does not allow it."""

    def __init__(self, name: str, pids_max: int, memory_bytes: int):
        self.dirs: list[Path] = []
        self.memory_dir: Path | None = None
        try:
            for controller, settings in (("pids", {"pids.max": pids_max}),
                                         ("memory", {"memory.limit_in_bytes": memory_bytes,
                                                     "memory.memsw.limit_in_bytes": memory_bytes,
                                                     "memory.max": memory_bytes, "memory.swap.max": 0})):
                parent = _cgroup_parent(controller)
                _remove_stale(parent)
                path = parent / name
                path.mkdir()
                self.dirs.append(path)
                for key, value in settings.items():
                    if (path / key).exists():
                        (path / key).write_text(str(value))
                if controller == "memory":
                    self.memory_dir = path
        except OSError as exc:
            self.remove()
            self.dirs, self.problem = [], f"cannot create cgroups: {exc}"
        else:
            self.problem = None

    def enter_command(self) -> list[str]:
        """A shell prefix that moves itself into the cgroups, then execs the rest: children are born inside."""
        moves = " && ".join(f"echo $$ > {shlex_quote(str(d / 'cgroup.procs'))}" for d in dict.fromkeys(self.dirs))
        return ["sh", "-c", f"{moves} && exec \"$0\" \"$@\""] if moves else []

    def oom_kills(self) -> int:
        if self.memory_dir is None:
            return 0
        for name in ("memory.events", "memory.oom_control"):
            path = self.memory_dir / name
            if path.exists():
                for line in path.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def kill_all(self) -> None:
        for _ in range(50):
            pids = {int(p) for d in self.dirs if (d / "cgroup.procs").exists()
                    for p in (d / "cgroup.procs").read_text().split()}
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill_all()
        for path in self.dirs:
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _remove_stale(parent: Path) -> None:
    """Remove empty cgroups of sandboxes whose process was killed before it could (rmdir refuses a busy one).

    Only old ones: a sandbox starting right now has an empty cgroup until its runner moves in."""
    for stale in parent.glob("adaptcot-sandbox-*"):
        try:
            if stale.stat().st_mtime < time.time() - 300:
                stale.rmdir()
        except OSError:
            pass


def shlex_quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


def _cgroup_parent(controller: str) -> Path:
    """Where to create a child cgroup for `controller`: under this process's own cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        v1 = Path("/sys/fs/cgroup") / controller
        if controller in controllers.split(",") and v1.is_dir():
            return v1 / path.lstrip("/")
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            unified = Path("/sys/fs/cgroup") / path.lstrip("/")
            if controller in (unified / "cgroup.subtree_control").read_text().split():
                return unified
    raise OSError(f"no writable {controller} cgroup hierarchy")


# --- The sandbox --------------------------------------------------------------------------------------------------
class Sandbox:
    """A warm, isolated runner for one program at a time. Not thread-safe: use one per worker thread."""

    def __init__(self, config: SandboxConfig = SandboxConfig()):
        self.config = config
        self.isolated = self._choose_isolation()
        self.starts = 0  # how often a runner was started (restarts follow programs that broke one)
        self._proc: subprocess.Popen | None = None
        self._cgroups: _Cgroups | None = None
        self._scratch: str | None = None
        self._pending = b""
        self._stderr = None

    def _choose_isolation(self) -> bool:
        if self.config.isolation == "none":
            log.warning(_FALLBACK_WARNING.format(why="sandbox.isolation is 'none'"))
            return False
        problem = namespaces_problem(self.config.python)
        if problem is None:
            return True
        if self.config.isolation == "namespaces":
            raise SandboxUnavailable(f"sandbox.isolation is 'namespaces' but {problem}")
        log.warning(_FALLBACK_WARNING.format(why=problem))
        return False

    # -- lifecycle
    def start(self) -> None:
        cfg = self.config
        self._cgroups = _Cgroups(f"adaptcot-sandbox-{uuid.uuid4().hex[:12]}", pids_max=cfg.processes + 8,
                                 memory_bytes=(2 * cfg.memory_mb + cfg.tmpfs_mb + 64) << 20)
        if self._cgroups.problem and os.geteuid() == 0:
            # RLIMIT_NPROC never binds uid 0, so only a pids cgroup stops a fork bomb here.
            raise SandboxUnavailable(f"running as root, the sandbox needs a pids cgroup to limit processes, but "
                                     f"{self._cgroups.problem}; run as a normal user or give the job cgroup access")
        if self.isolated:
            settings = {"scratch": "/tmp", "wipe": ["/tmp", "/dev/shm"]}
            cmd = _bwrap_command(cfg.python or sys.executable, cfg)
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
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=env, cwd=cwd, start_new_session=True, close_fds=True)
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
        """Run one program's cases; returns the runner's report plus `oom_kills` and `runner_lost`.

        `request`: kind, code, cases (stdin texts or JSON argument arrays), fn_name / test_code + sites.
        The runner enforces the time limits itself; if it does not answer within them (plus slack), or dies,
        the sandbox is restarted and the report says `runner_lost` (the program is blamed: it was running).
        """
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self.start()
        cfg = self.config
        request = dict(request, limits={
            "timeout_s": cfg.timeout_s, "memory_mb": cfg.memory_mb, "output_kb": cfg.output_kb,
            "file_kb": cfg.file_kb, "open_files": cfg.open_files,
            # RLIMIT_NPROC counts every process of the real uid; outside a user namespace that is the user's
            # whole session, so only the cgroup limits processes there.
            "rlimit_processes": cfg.processes if self.isolated and os.geteuid() != 0 else None})
        oom_before = self._cgroups.oom_kills() if self._cgroups else 0
        n_units = max(1, len(request.get("cases") or ()), request.get("sites", 1))
        budget = cfg.timeout_s * n_units + 10
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            reply = self._read_reply(deadline=time.monotonic() + budget)
        except (BrokenPipeError, OSError):
            reply = None
        oom = (self._cgroups.oom_kills() if self._cgroups else 0) - oom_before
        if reply is None:
            self._stop()
            return {"status": "ok", "results": [], "runner_lost": True, "oom_kills": oom}
        reply.update(runner_lost=False, oom_kills=oom)
        return reply

    def _read_reply(self, deadline: float) -> dict | None:
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
            return json.loads(line)
        except ValueError:
            return None

"""The cgroups around one sandbox: a pids limit (the only process limit that binds root), a memory limit (what all of
a sandbox's processes hold together, tmpfs included) and a CPU quota (one sandbox cannot take another's share).

cgroup v1 or v2, created under this process's own cgroup. pids and memory are required where the caller says so
(`SandboxCgroups.problem` says why they could not be made); the CPU quota is best effort: verdicts are on CPU time
(RLIMIT_CPU), so a missing quota makes a run slower under load, never a verdict wrong.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

CPU_PERIOD_US = 100_000


class SandboxCgroups:
    """pids and memory cgroups (required) and a cpu cgroup (best effort) named `name`."""

    def __init__(self, name: str, pids_max: int, memory_bytes: int, cpus: float):
        self.dirs: list[Path] = []
        self.memory_dir: Path | None = None
        self.cpu_limited = False
        try:
            for controller, settings in (("pids", {"pids.max": pids_max}),
                                         ("memory", {"memory.limit_in_bytes": memory_bytes,
                                                     "memory.memsw.limit_in_bytes": memory_bytes,
                                                     "memory.max": memory_bytes, "memory.swap.max": 0})):
                path = self._make(controller, name, settings)
                if controller == "memory":
                    self.memory_dir = path
        except OSError as exc:
            self.remove()
            self.dirs, self.problem = [], f"cannot create cgroups: {exc}"
            return
        self.problem = None
        quota = max(1000, int(cpus * CPU_PERIOD_US))
        try:
            self._make("cpu", name, {"cpu.cfs_period_us": CPU_PERIOD_US, "cpu.cfs_quota_us": quota,
                                     "cpu.max": f"{quota} {CPU_PERIOD_US}"})
            self.cpu_limited = True
        except OSError:
            pass  # no cpu controller delegated to us: see the module docstring

    def _make(self, controller: str, name: str, settings: dict) -> Path:
        parent = _cgroup_parent(controller)
        _remove_stale(parent)
        path = parent / name
        if path not in self.dirs:  # cgroup v2: one directory holds every controller
            path.mkdir()
            self.dirs.append(path)
        for key, value in settings.items():
            if (path / key).exists():
                (path / key).write_text(str(value))
        return path

    def enter_command(self) -> list[str]:
        """A shell prefix that moves itself into the cgroups, then execs the rest: children are born inside."""
        moves = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in self.dirs)
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

"""A lease: at most one live writer of a directory (a bank partition, a teacher's output) at a time.

A lease is a numbered file, `<dir>/lease-<generation>.json`, created with `storage.create_exclusive` (a hard link
on a local disk, a conditional PUT on S3): of two writers that try the same generation, exactly one creates it. The
holder renews it (rewrites its expiry) from a thread every `ttl / 3` seconds and marks it released when done. A
newcomer that finds the latest generation released, or expired (its holder was killed and stopped renewing), takes
the next generation; otherwise it stops with `LeaseHeld`, naming the holder, or waits up to `wait` seconds.

Where no lease can be had (a store without conditional create) `storage.ExclusiveCreateUnsupported` is raised:
the job stops rather than write unguarded. A holder that finds a newer generation than its own has lost the lease
(it was paused longer than the TTL): `Lease.lost` is then set and `check()` raises.
Expiry compares wall clocks of machines: keep the TTL well above their skew (default 2 minutes).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from adaptcot.common import storage

# Two minutes: a resubmitted job on another machine waits at most that long for a killed holder's lease; renewals
# every 40 s leave room for a slow store. A holder on this machine whose process is gone frees its lease at once.
DEFAULT_TTL = 120.0


class LeaseHeld(RuntimeError):
    """Another live writer holds the lease."""


class LeaseLost(RuntimeError):
    """This writer's lease was taken over (it stopped renewing for longer than the TTL)."""


def _generation(path: str) -> int:
    return int(storage.name(path)[len("lease-"):-len(".json")])


def _dead_here(record: dict) -> bool:
    """The holder ran on this machine and its process is gone (killed): its lease need not wait to expire."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    def __init__(self, directory: str, what: str, ttl: float = DEFAULT_TTL):
        self.directory, self.what, self.ttl = str(directory), what, ttl
        self.holder = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.generation: int | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, generation: int) -> str:
        return storage.join(self.directory, f"lease-{generation:08d}.json")

    def _record(self, released: bool = False) -> bytes:
        now = time.time()
        return json.dumps({**self.holder, "what": self.what, "renewed_at": now, "expires_at": now + self.ttl,
                           "released": released}).encode()

    def _latest(self) -> tuple[int, dict | None]:
        files = storage.list_files(self.directory, "lease-*.json")
        if not files:
            return 0, None
        latest = max(files, key=_generation)
        try:
            return _generation(latest), json.loads(storage.read_text(latest))
        except (FileNotFoundError, json.JSONDecodeError):
            return _generation(latest), {"expires_at": float("inf"), "released": False}

    def try_acquire(self) -> dict | None:
        """Take the lease if it is free; None when taken, else the live holder's record."""
        generation, record = self._latest()
        if record is not None and not record.get("released") and record.get("expires_at", 0) > time.time() \
                and not _dead_here(record):
            return record
        if not storage.create_exclusive(self._path(generation + 1), self._record()):
            return self._latest()[1] or {}
        self.generation = generation + 1
        self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease {self.what}")
        self._thread.start()
        return None

    def acquire(self, wait: float = 0.0, poll: float = 2.0) -> "Lease":
        deadline = time.time() + wait
        while True:
            holder = self.try_acquire()
            if holder is None:
                return self
            if time.time() >= deadline:
                raise LeaseHeld(
                    f"{self.what} is being written by another run (host {holder.get('host')}, pid {holder.get('pid')}"
                    f", lease renewed {time.time() - holder.get('renewed_at', time.time()):.0f} s ago, in "
                    f"{self.directory}). Wait for it to finish, or stop it; a lease of a killed run expires "
                    f"{self.ttl:.0f} s after its last renewal.")
            time.sleep(poll)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3) and not self.lost:
            self._renew_once()

    def _renew_once(self) -> None:
        """Extend the lease, unless a newer generation shows it was taken over (then `lost`)."""
        if self._latest()[0] != self.generation:
            self.lost = True
            return
        storage.write_bytes(self._path(self.generation), self._record())

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"{self.what}: another run took over the lease in {self.directory} (this one stopped "
                            f"renewing it for over {self.ttl:.0f} s); stopping before writing more")

    def release(self) -> None:
        if self.generation is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self._latest()[0] == self.generation:
            storage.write_bytes(self._path(self.generation), self._record(released=True))
            for older in storage.list_files(self.directory, "lease-*.json"):
                if _generation(older) < self.generation:  # history beyond the last one is of no use
                    storage.remove(older)
        self.generation = None

    def __enter__(self) -> "Lease":
        return self.acquire() if self.generation is None else self

    def __exit__(self, *exc) -> None:
        self.release()

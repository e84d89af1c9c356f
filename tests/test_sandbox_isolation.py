"""The sandbox fails closed and holds its privileges down: no fallback to an unisolated subprocess, a node that cannot
isolate stops the job (named), programs run as an unprivileged host uid, cannot make namespaces or trace processes,
and get one CPU's worth of time at most (real bubblewrap, real Ray actors)."""

import os
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
from pydantic import ValidationError

from adaptcot.common.terminal import StageFailed
from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
from adaptcot.verify.sandbox import SandboxConfig, SandboxUnavailable

TESTS = {"kind": "stdin_stdout", "cases": [{"input": "", "output": "SAFE"}]}
CONFIG = CodeVerifyConfig(sandbox=SandboxConfig(timeout_s=2.0, memory_mb=256), workers=1)
NO_BWRAP_PATH = "/nonexistent-bin"


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(CONFIG) as v:
        yield v


def printed(verifier, program: str) -> str:
    """What the program printed (the verdict's detail quotes it when it is not SAFE)."""
    verdict = verifier.run_tests(program, TESTS)
    return "SAFE" if verdict.verdict == "passed" else verdict.detail


# --- fail closed ----------------------------------------------------------------------------------------------------
def test_namespaces_is_the_default_and_auto_is_refused_naming_the_field():
    assert SandboxConfig().isolation == "namespaces"
    with pytest.raises(ValidationError, match="(?s)isolation.*'auto' was removed"):
        SandboxConfig(isolation="auto")


def test_without_bubblewrap_nothing_runs_and_the_error_names_the_host(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", NO_BWRAP_PATH)
    planted = tmp_path / "planted"
    with pytest.raises(SandboxUnavailable, match=f"host {os.uname().nodename} cannot isolate.*bwrap"):
        with CodeVerifier(CONFIG) as v:
            v.run_tests(f"open({str(planted)!r}, 'w').write('x')\nprint('SAFE')\n", TESTS)
    assert not planted.exists()


def path_without_bwrap(where: Path) -> str:
    """A PATH with every program of this one but bubblewrap (a Ray worker needs its Python, sh, ...)."""
    where.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            if program.name != "bwrap" and not (where / program.name).exists():
                (where / program.name).symlink_to(program)
    return str(where)


def test_a_verifier_actor_on_a_node_that_cannot_isolate_stops_the_job_naming_the_node(ray_session, tmp_path):
    import ray

    from adaptcot.verify.attempts import AttemptVerifier, VerifyConfig

    rows = pa.table({"domain": ["code"], "response": ["```python\nprint('SAFE')\n```"], "reference_answer": [None],
                     "tests_json": ['{"kind": "stdin_stdout", "cases": [{"input": "", "output": "SAFE"}]}'],
                     "error": pa.array([None], pa.string())})
    hidden = {"env_vars": {"PATH": path_without_bwrap(tmp_path / "bin")}}
    ds = ray.data.from_arrow(rows).map_batches(
        AttemptVerifier, fn_constructor_kwargs={"config": VerifyConfig(code=CONFIG), "expect_code": True},
        concurrency=1, num_cpus=0.1, batch_format="pyarrow", runtime_env=hidden)
    with pytest.raises(Exception) as failure:
        ds.materialize()
    # What the run prints on its one failure line (the actor's traceback goes to the log).
    line = str(StageFailed("grade", failure.value))
    assert "SandboxUnavailable: Ray node " + ray.util.get_node_ip_address() in line, line
    assert "cannot isolate generated code: bubblewrap (bwrap) is not on PATH" in line and "\n" not in line


# --- privileges -----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop happens only when started as root")
def test_started_as_root_programs_run_as_an_unprivileged_host_uid(verifier):
    seen = []

    def watch():
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            seen.extend(p.uids().real for p in psutil.process_iter(["cmdline"])
                        if p.info["cmdline"] == ["sleep", "1.4242"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    verifier.run_tests("import os\nos.execvp('sleep', ['sleep', '1.4242'])\n", TESTS)
    watcher.join()
    assert seen and set(seen) == {65534}


def test_no_nested_user_namespaces(verifier):
    program = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "print('SAFE' if libc.unshare(0x10000000) != 0 else 'NEW USER NAMESPACE')\n")  # CLONE_NEWUSER
    assert printed(verifier, program) == "SAFE"


def test_with_a_bubblewrap_older_than_0_8_the_filter_still_stops_nested_user_namespaces(monkeypatch):
    from adaptcot.verify import sandbox

    if os.uname().machine != "x86_64":
        pytest.skip("the syscall numbers in this program are x86_64's")
    monkeypatch.setattr(sandbox, "_bwrap_can_disable_userns", lambda: False)  # bwrap 0.6 (Ubuntu 22.04)
    program = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "unshared = libc.unshare(0x10000000)\n"
               "cloned = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\n"  # clone(CLONE_NEWUSER | SIGCHLD)
               "cloned3 = libc.syscall(435, 0, 0)\n"  # clone3: its flags are out of the filter's reach
               "print('SAFE' if (unshared, cloned, cloned3) == (-1, -1, -1) else (unshared, cloned, cloned3))\n")
    with CodeVerifier(CONFIG) as fresh:
        assert printed(fresh, program) == "SAFE"


def test_the_seccomp_filter_denies_ptrace_and_io_uring(verifier):
    program = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "traced = libc.syscall(101, 0, 0, 0, 0)\n"  # ptrace(PTRACE_TRACEME)
               "ring = libc.syscall(425, 1, ctypes.create_string_buffer(120))\n"  # io_uring_setup
               "mode = [l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0].split()[1]\n"
               "print('SAFE' if traced == -1 and ring == -1 and mode == '2' else f'{traced} {ring} {mode}')\n")
    if os.uname().machine != "x86_64":
        pytest.skip("the syscall numbers in this program are x86_64's")
    assert printed(verifier, program) == "SAFE"


# --- CPU share ------------------------------------------------------------------------------------------------------
def test_a_sandbox_gets_one_cpu_at_most(verifier):
    """Four spinning threads for 1.5 s of wall time use at most one CPU's worth (the cgroup's cpu.max)."""
    verifier.run_tests("print('SAFE')\n", TESTS)  # the sandbox (and its cgroups) start with a first program
    if not verifier._all[0]._cgroups.cpu_limited:
        pytest.skip("this host does not delegate the cpu controller")
    program = ("import os, threading, time\nend = time.monotonic() + 1.5\n"
               "def spin():\n    while time.monotonic() < end:\n        pass\n"
               "threads = [threading.Thread(target=spin) for _ in range(4)]\n"
               "[t.start() for t in threads]\n[t.join() for t in threads]\n"
               "t = os.times()\nprint(round((t.user + t.system) / 1.5, 2))\n")
    verdict = verifier.run_tests(program, TESTS)
    share = float(verdict.detail.split("got '")[1].rstrip("'"))
    assert share <= CONFIG.sandbox.cpus * 1.25, verdict.detail

"""Each isolation property of the sandbox, attacked by a hostile program (real bubblewrap, real processes).

The sandboxes here use `isolation: namespaces`, so these tests fail loudly (instead of silently falling back) on a
machine where the project's setup did not install bubblewrap. Fork and memory bombs run only after the sandbox has
put itself in its pids and memory cgroups (`Sandbox.start`), which is what keeps them from stalling the machine.
"""

import os
import socket
import threading

import psutil
import pytest

from adaptcot.verify.code_tests import CodeVerifier, CodeVerifyConfig
from adaptcot.verify.sandbox import Sandbox, SandboxConfig, SandboxUnavailable

SUM_TESTS = {"kind": "stdin_stdout", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12"}]}
SUM_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
LIMITS = SandboxConfig(isolation="namespaces", timeout_s=1.0, memory_mb=256, processes=16, output_kb=64)


@pytest.fixture(scope="module")
def verifier():
    with CodeVerifier(CodeVerifyConfig(sandbox=LIMITS, workers=1)) as v:
        yield v


def run(verifier, program, tests=SUM_TESTS):
    """Run a hostile program, then check the same sandbox still grades a correct one."""
    verdict = verifier.run_tests(program, tests)
    assert verifier.run_tests(SUM_PROGRAM, SUM_TESTS).verdict == "passed", "the sandbox did not recover"
    return verdict


def output_of(verifier, program):
    """What a program printed (it passes iff it prints exactly `expected`)."""
    tests = {"kind": "stdin_stdout", "cases": [{"input": "", "output": "SAFE"}]}
    return verifier.run_tests(program, tests)


# --- time -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(3600)\n",
                                     "import threading\nthreading.Event().wait()\n"])
def test_a_program_that_never_ends_is_a_timeout(verifier, program):
    assert run(verifier, program).verdict == "timeout"


def test_a_busy_loop_in_one_call_case_times_out_without_hanging_the_others(verifier):
    tests = {"kind": "call", "fn_name": "f", "cases": [{"input": "[1]", "output": "1"}, {"input": "[0]", "output": "0"}]}
    verdict = run(verifier, "def f(x):\n    while x:\n        pass\n    return x\n", tests)
    assert verdict.verdict == "timeout" and "case 1" in verdict.detail


# --- memory ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("program", ["x = bytearray(16 << 30)\n",
                                     "chunks = []\nwhile True:\n    chunks.append(bytearray(10 << 20))\n",
                                     "s = 'x'\nwhile True:\n    s += s\n"])
def test_a_program_that_allocates_without_end_gets_memory_limit(verifier, program):
    assert run(verifier, program).verdict == "memory_limit"


def test_memory_spread_over_many_processes_is_stopped_by_the_cgroup(verifier):
    program = ("import os, time\n"
               "for _ in range(12):\n"
               "    if os.fork() == 0:\n"
               "        x = bytearray(200 << 20)\n"
               "        for i in range(0, len(x), 4096): x[i] = 1\n"
               "        time.sleep(60)\n"
               "time.sleep(60)\n")
    host_available = psutil.virtual_memory().available
    verdict = run(verifier, program)
    assert verdict.verdict in ("memory_limit", "timeout", "runtime_error")
    assert psutil.virtual_memory().available > host_available - (1 << 30)


# --- processes ------------------------------------------------------------------------------------------------------
def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(verifier):
    before = len(psutil.pids())
    peak = [before]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(psutil.pids()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        verdict = run(verifier, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                                "        pass\n")
    finally:
        stop.set()
        watcher.join()
    assert verdict.verdict in ("timeout", "runtime_error")
    assert peak[0] - before <= LIMITS.processes + 16  # the pids cgroup: the sandbox's processes, plus slack
    assert len(psutil.pids()) <= before + 2


def test_a_daemon_left_behind_is_killed(verifier):
    program = ("import os\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               "    if os.fork() == 0:\n"
               "        os.execvp('sleep', ['sleep', '4242.5'])\n"
               "    os._exit(0)\n"
               "print(3)\n")
    run(verifier, program)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "4242.5"]]
    assert leftovers == []


# --- the parent process ---------------------------------------------------------------------------------------------
def test_a_program_cannot_kill_its_runner_or_the_harness(verifier):
    me = os.getpid()
    program = ("import os, signal\n"
               f"for pid in (os.getppid(), 1, {me}):\n"
               "    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
               "        try:\n"
               "            os.kill(pid, sig)\n"
               "        except OSError:\n"
               "            pass\n"
               "try:\n"
               "    os.kill(-1, signal.SIGKILL)\n"
               "except OSError:\n"
               "    pass\n"
               "print(3)\n")
    starts = verifier._all[0].starts
    verdict = run(verifier, program)
    assert verdict.verdict == "wrong_answer"  # it ran on, printed 3 for "1 2", then 3 for "5 7"
    assert verifier._all[0].starts == starts  # the runner survived: no restart was needed


# --- files ----------------------------------------------------------------------------------------------------------
def test_host_files_can_be_neither_read_nor_written_nor_deleted(verifier, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    target = tmp_path / "planted.txt"
    program = ("import os, shutil\n"
               f"for action in (lambda: print(open({str(secret)!r}).read()),\n"
               f"               lambda: open({str(target)!r}, 'w').write('x'),\n"
               f"               lambda: os.remove({str(secret)!r}),\n"
               "               lambda: open('/usr/planted', 'w'),\n"
               "               lambda: open('/planted', 'w'),\n"
               "               lambda: open('/proc/sys/kernel/hostname', 'w').write('x'),\n"
               "               lambda: print(open('/etc/hostname').read()),\n"
               f"               lambda: print(open({__file__!r}).read()),\n"
               "               lambda: print(os.listdir('/work'))):\n"
               "    try:\n"
               "        action()\n"
               "    except OSError:\n"
               "        pass\n"
               "print('SAFE')\n")
    verdict = output_of(verifier, program)
    assert verdict.verdict == "passed", verdict.detail  # it printed SAFE and nothing else
    assert secret.read_text() == "TOP-SECRET" and not target.exists()
    assert not os.path.exists("/usr/planted") and not os.path.exists("/planted")


def test_files_from_one_program_are_gone_for_the_next(verifier):
    output_of(verifier, "for p in ('/tmp/left.txt', 'left.txt', '/dev/shm/left'):\n    open(p, 'w').write('x')\n")
    verdict = output_of(verifier, "import os\nprint('SAFE' if not any(map(os.path.exists, "
                                  "('/tmp/left.txt', 'left.txt', '/dev/shm/left'))) else 'FOUND')\n")
    assert verdict.verdict == "passed", verdict.detail


def test_a_huge_file_is_cut_off(verifier):
    verdict = run(verifier, "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))\n")
    assert verdict.verdict in ("runtime_error", "memory_limit")


# --- environment and network ----------------------------------------------------------------------------------------
def test_the_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("ADAPTCOT_TEST_SECRET", "hunter2")
    with CodeVerifier(CodeVerifyConfig(sandbox=LIMITS, workers=1)) as fresh:  # started after the secret was set
        verdict = output_of(fresh, "import os\nprint('FOUND' if 'hunter2' in str(os.environ) else 'SAFE')\n")
    assert verdict.verdict == "passed", verdict.detail


def test_no_network_not_even_to_the_hosts_loopback(verifier):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(0.2)
    program = ("import socket\n"
               f"for host in ('127.0.0.1', '1.1.1.1'):\n"
               "    try:\n"
               f"        socket.create_connection((host, {port}), timeout=0.5).sendall(b'leak')\n"
               "        print('CONNECTED')\n"
               "    except OSError:\n"
               "        pass\n"
               "print('SAFE')\n")
    verdict = output_of(verifier, program)
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    assert verdict.verdict == "passed", verdict.detail


# --- output, and faked success --------------------------------------------------------------------------------------
def test_a_stdout_flood_is_cut_off(verifier):
    verdict = run(verifier, "while True:\n    print('x' * 1000)\n")
    assert verdict.verdict == "runtime_error" and "output limit" in verdict.detail


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)\n",  # exits 0 before doing anything
    "import os\nos._exit(0)\n",
    "print('All tests passed')\nprint('OK')\n",  # prints what a checker might look for
    "import os\nos.write(3, b'{\"event\": \"finished\"}\\n')\nos._exit(0)\n",  # forges the runner's report
])
def test_faked_success_is_not_a_pass(verifier, program):
    call = {"kind": "call", "fn_name": "add", "cases": [{"input": "[1, 2]", "output": "3"}]}
    asserts = {"kind": "assert", "entry_point": "add", "test_code": "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"}
    for tests in (SUM_TESTS, call, asserts):
        assert verifier.run_tests(program, tests).verdict != "passed"


def test_objects_that_equal_anything_do_not_pass(verifier):
    always = "class Same:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
    call = {"kind": "call", "fn_name": "add", "cases": [{"input": "[1, 2]", "output": "3"}]}
    asserts = {"kind": "assert", "entry_point": "add", "test_code": "def check(candidate):\n"
               "    assert candidate(1, 2) == 3\n    assert 4 == candidate(2, 2)\n    x = [1]\n"
               "    assert candidate(0, 1) == x[0]\ncheck(add)\n"}
    for code in (always + "def add(a, b):\n    return Same()\n",
                 always + "class Num(int):\n    __eq__ = Same.__eq__\ndef add(a, b):\n    return Num(0)\n"):
        for tests in (call, asserts):
            verdict = verifier.run_tests(code, tests)
            assert verdict.verdict == "wrong_answer", (tests["kind"], verdict)


# --- sandbox errors and the fallback --------------------------------------------------------------------------------
def test_a_broken_harness_is_a_sandbox_error_never_charged_to_the_model():
    config = CodeVerifyConfig(sandbox=LIMITS.model_copy(update={"python": "/nonexistent/python3"}), workers=1)
    with pytest.raises(SandboxUnavailable):
        Sandbox(config.sandbox).start()
    with CodeVerifier(config.model_copy(update={"sandbox": LIMITS})) as v:
        v._all[0].config = config.sandbox  # the interpreter disappears after the verifier was built
        verdict = v.run_tests(SUM_PROGRAM, SUM_TESTS)
    assert verdict.verdict == "sandbox_error" and verdict.correct is None


def test_without_namespaces_the_fallback_runs_and_warns_loudly(caplog):
    config = LIMITS.model_copy(update={"isolation": "none"})
    with caplog.at_level("WARNING"), CodeVerifier(CodeVerifyConfig(sandbox=config, workers=1)) as v:
        assert v.run_tests(SUM_PROGRAM, SUM_TESTS).verdict == "passed"
        assert v.run_tests("while True:\n    pass\n", SUM_TESTS).verdict == "timeout"
    assert "SANDBOX ISOLATION IS OFF" in caplog.text

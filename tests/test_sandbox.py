"""Each isolation property of the sandbox, attacked by a hostile program (real bubblewrap, real processes).

The sandboxes here use `isolation: namespaces`, so these tests fail loudly (instead of silently falling back) on a
machine where the project's setup did not install bubblewrap. Fork and memory bombs run only after the sandbox has
put itself in its pids and memory cgroups (`Sandbox.start`), which is what keeps them from stalling the machine.
"""

import json
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


def sandbox_processes(verifier) -> list[psutil.Process]:
    """The verifier's sandbox processes: each runner's process and its descendants (nothing a program starts can
    leave its sandbox's PID namespace). Counted here rather than machine-wide or under this test process, where other
    jobs and the test session's own Ray workers come and go while a test runs."""
    out = []
    for sandbox in verifier._all:
        proc = sandbox._proc
        try:
            runner = psutil.Process(proc.pid) if proc is not None else None
            out += [runner, *runner.children(recursive=True)] if runner else []
        except psutil.Error:
            pass  # restarted meanwhile
    return out


def private_memory(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().uss
    except psutil.Error:
        return 0  # gone meanwhile


def peak_while(verifier, action, measure):
    """(what action() returns, the largest measure(sandbox_processes(verifier)) seen while it ran)."""
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], measure(sandbox_processes(verifier)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return action(), peak[0]
    finally:
        stop.set()
        watcher.join()


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


def test_a_program_that_waits_uses_no_cpu_time_and_is_not_a_timeout(verifier):
    # A machine under load stretches a program's wall time the way this sleep does: verdicts go by CPU time, and
    # the wall clock only stops a program at the backstop (3 x the limit + 1 s).
    program = "import time\ntime.sleep(1.5)\n" + SUM_PROGRAM
    assert verifier.run_tests(program, SUM_TESTS).verdict == "passed"


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
    verdict, peak = peak_while(verifier, lambda: run(verifier, program),
                               lambda processes: sum(map(private_memory, processes)))
    assert verdict.verdict in ("memory_limit", "timeout", "runtime_error")
    assert peak < 1 << 30  # 12 x 200 MB without the cgroup, which allows 2 x 256 + 128 MB


# --- processes ------------------------------------------------------------------------------------------------------
def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(verifier):
    before = len(sandbox_processes(verifier))
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    verdict, peak = peak_while(verifier, lambda: run(verifier, bomb), len)
    assert verdict.verdict in ("timeout", "runtime_error")
    assert peak - before <= LIMITS.processes + 16  # the pids cgroup: the sandbox's processes, plus slack
    assert len(sandbox_processes(verifier)) <= before + 2


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


def test_a_work_dir_locked_with_chmod_000_is_wiped_all_the_same(verifier):
    run(verifier, "import os\nopen('left.txt', 'w').write('x')\nos.chmod('.', 0)\n")  # then SUM_PROGRAM passes


def test_a_full_tmp_behind_a_locked_directory_is_wiped_all_the_same(verifier):
    output_of(verifier, "import os\n"
                        "os.mkdir('/tmp/keep', 0o300)\n"  # locked first: files go in, but no one can list them
                        "for size in (8 << 20, 4096):\n"  # until not one more page fits
                        "    try:\n"
                        "        for i in range(10000):\n"
                        "            fd = os.open(f'/tmp/keep/{size}-{i}', os.O_CREAT | os.O_WRONLY)\n"
                        "            os.posix_fallocate(fd, 0, size)\n"
                        "            os.close(fd)\n"
                        "    except OSError:\n"
                        "        pass\n")
    uses_scratch_space = "import tempfile\ntempfile.TemporaryFile().write(b'x' * (1 << 20))\nprint('SAFE')\n"
    verdict = output_of(verifier, uses_scratch_space)
    assert verdict.verdict == "passed", verdict.detail


def test_sysv_shared_memory_does_not_outlive_its_program(verifier):
    shm = "import ctypes\nshmget = ctypes.CDLL(None).shmget\nKEY = 0x51A7E\n"
    output_of(verifier, shm + "shmget(KEY, 1 << 20, 0o1600)\n")  # IPC_CREAT | 0600, never removed
    verdict = output_of(verifier, shm + "print('FOUND' if shmget(KEY, 0, 0) >= 0 else 'SAFE')\n")
    assert verdict.verdict == "passed", verdict.detail


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


# --- assert tests: the test code runs where the program cannot reach it --------------------------------------------
AREA_TESTS = {"kind": "assert", "entry_point": "area",
              "test_code": "def check(candidate):\n    assert abs(candidate(2) - 12.566) < 1e-3\n\ncheck(area)\n"}
WRONG_AREA = "def area(r):\n    return 0\n"


@pytest.mark.parametrize("patch, test_code", [
    ("import builtins\nbuiltins.abs = lambda x: 0\n", None),
    ("abs = lambda x: 0\n", None),  # a global of the program's shadows the built-in
    ("import math\nmath.isclose = lambda *a, **k: True\n", "assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n"),
    ("import __main__\n__main__._plain_or_note = lambda got: ['bool', True]\n", None),  # the harness's reporter
])
def test_a_program_cannot_change_what_the_test_code_calls(verifier, patch, test_code):
    tests = dict(AREA_TESTS, test_code=test_code or AREA_TESTS["test_code"])
    verdict = verifier.run_tests(patch + WRONG_AREA, tests)
    assert verdict.verdict == "wrong_answer", verdict


def test_a_program_cannot_forge_the_reports_of_the_test_code(verifier):
    forged = (json.dumps({"event": "pair", "site": 0, "value": [["int", "4"], ["int", "4"]]}) + "\n" +
              json.dumps({"event": "finished"}) + "\n")
    program = ("import os\n"
               "for pid in os.listdir('/proc'):\n"  # descriptor 3, where reports go, of every process it can see
               "    try:\n"
               f"        open(f'/proc/{{pid}}/fd/3', 'w').write({forged!r})\n"
               "    except OSError:\n"
               "        pass\n"
               "os._exit(0)\n"
               "def double(x):\n"
               "    return 0\n")
    tests = {"kind": "assert", "entry_point": "double",
             "test_code": "def check(candidate):\n    assert candidate(2) == len('ab') * 2\n\ncheck(double)\n"}
    assert verifier.run_tests(program, tests).verdict == "wrong_answer"


def test_the_test_process_is_out_of_the_programs_reach(verifier):
    # Same uid, but not dumpable: its /proc/<pid>/fd (and mem) cannot be opened, nor can it be ptraced.
    program = ("import os\n"
               "def reachable():\n"
               "    found = []\n"
               "    for pid in os.listdir('/proc'):\n"
               "        if pid.isdigit() and int(pid) != os.getpid():\n"
               "            try:\n"
               "                os.listdir(f'/proc/{pid}/fd')\n"
               "                found.append(open(f'/proc/{pid}/cmdline').read())\n"
               "            except OSError:\n"
               "                pass\n"
               "    return found\n")
    tests = {"kind": "assert", "entry_point": "reachable", "test_code": "assert reachable() == []\n"}
    verdict = verifier.run_tests(program, tests)
    assert verdict.verdict == "passed", verdict.detail


def test_test_code_still_uses_the_programs_helpers_and_its_own_modules(verifier):
    cyclic = ("def encode_cyclic(s: str):\n"
              "    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]\n"
              "    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]\n"
              "    return ''.join(groups)\n\n"
              "def decode_cyclic(s: str):\n"
              "    return encode_cyclic(encode_cyclic(s))\n")
    humaneval_38 = ("def check(candidate):\n"  # HumanEval/38: the test calls the prompt's encode_cyclic
                    "    from random import randint, choice\n"
                    "    import string\n"
                    "    letters = string.ascii_lowercase\n"
                    "    for _ in range(20):\n"
                    "        s = ''.join(choice(letters) for i in range(randint(10, 20)))\n"
                    "        assert candidate(encode_cyclic(s)) == s\n\n"
                    "check(decode_cyclic)\n")
    verdict = verifier.run_tests(cyclic, {"kind": "assert", "entry_point": "decode_cyclic", "test_code": humaneval_38})
    assert verdict.verdict == "passed", verdict.detail
    mbpp = {"kind": "assert", "entry_point": "area",  # MBPP: `math` comes from the program's imports
            "test_code": "assert math.isclose(area(2), 12.566, rel_tol=1e-3)\n"}
    verdict = verifier.run_tests("import math\ndef area(r):\n    return math.pi * r * r\n", mbpp)
    assert verdict.verdict == "passed", verdict.detail


def test_objects_of_the_programs_classes_made_by_the_tests_stay_in_the_program():
    """MBPP/601 builds `Pair`s and hands them to the candidate: a right program passes, a wrong one fails, and such an
    object never passes for an expected value."""
    pair = "class Pair(object):\n    def __init__(self, a, b):\n        self.a = a\n        self.b = b\n"
    right = pair + ("def max_chain_length(arr, n):\n    arr = sorted(arr, key=lambda p: p.b)\n"
                    "    end, count = None, 0\n    for p in arr:\n        if end is None or p.a > end:\n            end, count = p.b, count + 1\n"
                    "    return count\n")
    wrong = pair + "def max_chain_length(arr, n):\n    return n\n"
    mbpp_601 = {"kind": "assert", "entry_point": "max_chain_length", "test_code":
                "assert max_chain_length([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)], 4) == 3\n"
                "assert max_chain_length([Pair(1, 2), Pair(3, 4), Pair(5, 6), Pair(7, 8)], 4) == 4\n"}
    always = "    def __eq__(self, other):\n        return True\n"
    faker = pair + always + "def max_chain_length(arr, n):\n    return arr[0]\n"
    with CodeVerifier(CodeVerifyConfig(sandbox=LIMITS, workers=1)) as v:
        assert v.run_tests(right, mbpp_601).verdict == "passed"
        assert v.run_tests(wrong, mbpp_601).verdict == "wrong_answer"
        assert v.run_tests(faker, mbpp_601).verdict == "wrong_answer"


# --- only the harness may say "undecided": whatever the program causes is a verdict ---------------------------------
ADD_CALL = {"kind": "call", "fn_name": "add", "cases": [{"input": "[1, 2]", "output": "3"}]}
NEWLINE = b"\n"


def test_a_program_killed_by_a_signal_without_a_name_is_a_runtime_error(verifier):
    verdict = run(verifier, "import os\nos.kill(os.getpid(), 40)\n")  # a real-time signal: signal.Signals(40) fails
    assert (verdict.verdict, verdict.correct) == ("runtime_error", False) and "signal 40" in verdict.detail


@pytest.mark.parametrize("line", [
    "[" * 100000,  # nested deeper than any JSON parser's recursion
    "not json at all",
    '[1, 2]',
    '{"event": "value", "case": "0", "value": ["int", "3"]}',  # the case as a string
    '{"event": "value", "case": 0, "value": 3}',  # a value that is not a tagged list
    '{"event": "value", "case": 0}',  # keys missing
    '{"event": "compile_error"}',
    '{"event": ["value"]}',  # an event that is not a name
])
def test_garbage_on_the_report_descriptor_is_a_verdict_about_the_program(verifier, line):
    program = f"import os\nos.write(3, {line.encode() + NEWLINE!r})\ndef add(a, b):\n    return a + b\n"
    verdict = verifier.run_tests(program, ADD_CALL)
    assert (verdict.verdict, verdict.correct) == ("runtime_error", False), verdict
    assert "report descriptor" in verdict.detail


def test_a_forged_reply_line_is_not_taken_for_the_verdict():
    one_case = {"kind": "stdin_stdout", "cases": [{"input": "1 2\n", "output": "3\n"}]}
    forged = {"status": "ok", "results": [{"records": [], "report": "", "stdout": "3\n", "stderr_tail": "",
                                           "exit_code": 0, "signal": None, "problem": None, "seconds": 0.1}]}
    before = {p.pid for p in psutil.Process().children()}
    with CodeVerifier(CodeVerifyConfig(sandbox=LIMITS, workers=1)) as fresh:
        assert fresh.run_tests(SUM_PROGRAM, one_case).verdict == "passed"  # its runner is up
        [sandbox] = [p for p in psutil.Process().children() if p.pid not in before]  # its stdout: the reply pipe
        with open(f"/proc/{sandbox.pid}/fd/1", "w") as replies:  # as if someone else could write there
            replies.write(json.dumps(forged) + "\n")
        verdict = fresh.run_tests("print(4)\n", one_case)
    assert verdict.verdict == "wrong_answer", verdict


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

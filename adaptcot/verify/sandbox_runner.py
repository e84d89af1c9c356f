"""The process that runs inside the sandbox: a warm fork server for untrusted programs (standard library only).

`adaptcot.sandbox.Sandbox` starts this file's source with `python -I -S -c` inside bubblewrap, as PID 1 of a fresh
PID namespace, and talks to it over stdin/stdout, one JSON line per program. For each program it forks a test
process (fork is ~1 ms; a fresh interpreter is ~20 ms): one per stdin/stdout case, one for all call or assert
cases. The test process sets its own rlimits, compiles and runs the program, and sends what it observed (stdout,
return values, the exception) back over a pipe. This process only supervises: wall-clock deadlines, output caps,
then it kills every other process in the namespace and wipes the scratch space before the next program.

It never sees an expected output: the harness outside compares. A program that kills this process cannot, because
the kernel ignores signals sent to a namespace's PID 1 from inside it; a program that kills its own supervisor
loses its own results. Without namespaces (the fallback) the same code runs with process groups instead.
"""

import json
import os
import resource
import select
import shutil
import signal
import sys
import time

STDERR_TAIL = 2000
EXIT_MEMORY = 71  # a test process that could not even report its MemoryError
EXIT_HARNESS_FAILED = 70
_CASE_STARTED = b'{"event": "case"'
_MIB = 1 << 20


def _set_dumpable(flag):
    # Non-dumpable: other processes of the same uid cannot ptrace this one or open /proc/<pid>/fd or mem.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, int(flag), 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


# --- Inside the test process ------------------------------------------------------------------------------------
def _encode(value, depth=0):
    """Plain data only, tagged by exact type: an object with a custom __eq__ cannot pass for an expected value."""
    if depth > 100:
        raise TypeError("value nested more than 100 levels deep")
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:
        return ["bool", value]
    if kind is int:
        return ["int", str(value)]
    if kind is float:
        return ["float", repr(value)]
    if kind is complex:
        return ["complex", repr(value.real), repr(value.imag)]
    if kind is str:
        return ["str", value]
    if kind is bytes or kind is bytearray:
        return ["bytes", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [_encode(v, depth + 1) for v in value]]
    if kind is dict:
        return ["dict", [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]]
    raise TypeError("returned a %s, which is not plain data" % kind.__name__)


class _Reporter:
    def __init__(self, fd):
        self.write = os.write  # bound now: the program under test may replace os.write later
        self.dumps = json.dumps
        self.fd = fd

    def __call__(self, record):
        data = (self.dumps(record) + "\n").encode()
        while data:
            data = data[self.write(self.fd, data):]


def _set_limits(limits, cpu_seconds):
    cpu = max(1, int(cpu_seconds + 0.999))
    plan = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, limits["memory_mb"] * _MIB, None),
            (resource.RLIMIT_FSIZE, limits["file_kb"] * 1024, None), (resource.RLIMIT_NOFILE, limits["open_files"], None),
            (resource.RLIMIT_CORE, 0, None), (resource.RLIMIT_NPROC, limits["rlimit_processes"], None)]
    for which, soft, hard in plan:
        if soft is None:
            continue  # processes: None where RLIMIT_NPROC would count the user's own processes (fallback mode)
        resource.setrlimit(which, (soft, soft if hard is None else hard))


def _exception_record(exc):
    import traceback
    kind = "memory" if isinstance(exc, MemoryError) else "error"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"event": kind, "error_type": type(exc).__name__, "detail": text[-STDERR_TAIL:]}


def _test_process(request, case_input, report_fd, out_fd, err_fd):
    """Runs in the forked child: never returns."""
    status = 1
    try:
        report = _Reporter(report_fd)
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        in_path = os.path.join(os.getcwd(), ".stdin")
        with open(in_path, "w") as f:
            f.write(case_input or "")
        in_fd = os.open(in_path, os.O_RDONLY)
        for src, dst in ((in_fd, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(src, dst)
        if report_fd != 3:
            os.dup2(report_fd, 3)
            report.fd = 3
        os.closerange(4, 1 << 16)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        sys.argv = ["solution.py"]
        _set_dumpable(1)  # a program may open /dev/stdin (-> /proc/self/fd/0)
        _set_limits(request["limits"], _time_budget(request))
        status = _run_program(request, report)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MemoryError:
        status = EXIT_MEMORY
    except BaseException:
        status = EXIT_HARNESS_FAILED
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    os._exit(status & 0xFF)


CALL_PRELUDE = ("from typing import *\nfrom collections import *\nfrom heapq import *\nfrom bisect import *\n"
                "from itertools import *\nfrom functools import *\n"
                "import math, collections, heapq, bisect, itertools, functools, re, string\n")


def _run_program(request, report):
    try:
        code = compile(request["code"], "solution.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as exc:
        report({"event": "compile_error", "error_type": type(exc).__name__, "detail": str(exc)[-STDERR_TAIL:]})
        return 0
    kind = request["kind"]
    namespace = {"__name__": "__main__" if kind == "stdin_stdout" else "solution", "__builtins__": __builtins__}
    report({"event": "start"})
    try:
        if kind == "call":  # LeetCode's judge pre-imports these; its starter code uses List[int] without an import
            exec(CALL_PRELUDE, namespace)
        exec(code, namespace)
        if kind == "call":
            _run_calls(request, namespace, report)
        elif kind == "assert":
            _run_asserts(request, namespace, report)
    except SystemExit as exc:
        if kind != "stdin_stdout":
            report({"event": "error", "error_type": "SystemExit", "detail": "the program exited: %r" % (exc.code,)})
        raise
    except BaseException as exc:
        namespace.clear()  # after a MemoryError, free the program's data so that the report can be written
        report(_exception_record(exc))
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # without this harness's frame
        return 1
    report({"event": "finished"})
    return 0


def _run_calls(request, namespace, report):
    name = request["fn_name"]
    fn = namespace.get(name)
    if fn is None and isinstance(namespace.get("Solution"), type):  # LeetCode style: a method of class Solution
        fn = getattr(namespace["Solution"](), name, None)
    if not callable(fn):
        raise NameError("the program does not define %s()" % name)
    for index, args_json in enumerate(request["cases"]):
        args = json.loads(args_json)
        report({"event": "case", "case": index})
        try:
            value = fn(*args) if isinstance(args, list) else fn(args)
            report({"event": "value", "case": index, "value": _encode(value)})
        except TypeError as exc:
            if "plain data" not in str(exc):
                raise
            report({"event": "not_plain", "case": index, "detail": str(exc)})


def _run_asserts(request, namespace, report):
    def value(site, got):
        report({"event": "value", "site": site, "value": _plain_or_note(got)})
        return got

    def pair(site, left, right):
        report({"event": "pair", "site": site, "value": [_plain_or_note(left), _plain_or_note(right)]})

    def truth(site, got):
        report({"event": "truth", "site": site, "value": _plain_or_note(got)})

    def result(got):
        _encode(got)  # raises TypeError if the function under test returns something that is not plain data
        return got

    namespace.update(__adaptcot_value__=value, __adaptcot_pair__=pair, __adaptcot_truth__=truth,
                     __adaptcot_result__=result)
    exec(compile(request["test_code"], "tests.py", "exec"), namespace)


def _plain_or_note(got):
    try:
        return _encode(got)
    except TypeError as exc:
        return ["not_plain", str(exc)]


# --- In the supervisor (this process) ---------------------------------------------------------------------------
def _time_budget(request):
    """Seconds one test process may run: one case for stdin/stdout, all of them for call and assert tests."""
    per_case = request["limits"]["timeout_s"]
    if request["kind"] == "stdin_stdout":
        return per_case
    return per_case * max(1, len(request.get("cases") or ()) or request.get("sites", 1))


def _run_case(request, case_input, workdir):
    """Fork one test process, collect its report, stdout and stderr under deadlines and caps."""
    limits = request["limits"]
    pipes = [os.pipe() for _ in range(3)]  # report, stdout, stderr
    pid = os.fork()
    if pid == 0:
        os.chdir(workdir)
        for r, _ in pipes:
            os.close(r)
        _test_process(request, case_input, pipes[0][1], pipes[1][1], pipes[2][1])
    for _, w in pipes:
        os.close(w)
    report_fd, out_fd, err_fd = (r for r, _ in pipes)
    exited_fd = os.pidfd_open(pid)  # readable once the test process exits, even if its children hold the pipes
    buffers = {report_fd: bytearray(), out_fd: bytearray(), err_fd: bytearray()}
    caps = {report_fd: limits["output_kb"] * 4096, out_fd: limits["output_kb"] * 1024, err_fd: None}
    started = case_started = time.monotonic()
    deadline = started + _time_budget(request) + 0.05
    open_fds, problem, exited, cases_seen = set(buffers), None, False, 0
    while open_fds and problem is None:
        if buffers[report_fd].count(_CASE_STARTED) > cases_seen:  # call tests: each case has its own time limit
            cases_seen, case_started = buffers[report_fd].count(_CASE_STARTED), time.monotonic()
        # loading the module counts as the first case's time
        case_deadline = case_started + limits["timeout_s"] + 0.05 if request["kind"] == "call" else deadline
        wait = 0 if exited else min(deadline, case_deadline) - time.monotonic()
        if wait < 0:
            problem = "timeout"
            break
        ready, _, _ = select.select(list(open_fds) + ([] if exited else [exited_fd]), [], [], wait)
        if not ready and exited:
            break  # exited and nothing left to read: a leftover child may hold the pipes open
        for fd in ready:
            if fd == exited_fd:
                exited = True
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            buf = buffers[fd]
            buf += chunk
            if caps[fd] is None and len(buf) > 4 * STDERR_TAIL:
                del buf[:-STDERR_TAIL]
            elif caps[fd] is not None and len(buf) > caps[fd]:
                problem = "output_limit"
                break
    _kill_group(pid)
    _, status = os.waitpid(pid, 0)
    for fd in list(buffers) + [exited_fd]:
        os.close(fd)
    records = []
    for line in bytes(buffers[report_fd]).decode("utf-8", "replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"event": "garbled"})
    return {"records": records, "stdout": bytes(buffers[out_fd]).decode("utf-8", "replace"),
            "stderr_tail": bytes(buffers[err_fd][-STDERR_TAIL:]).decode("utf-8", "replace"),
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "problem": problem, "seconds": round(time.monotonic() - started, 4)}


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _kill_everything_else():
    """Kill whatever the program left behind (daemons, forks) and reap it (orphans are re-parented to PID 1)."""
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # in our own PID namespace: every process but this one
        except OSError:
            pass
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


def _wipe(path):
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.unlink(full)
            except OSError:
                pass


def run_program(request, scratch, wipe):
    """All cases of one program; stops at the first case that did not run to a normal end."""
    workdir = os.path.join(scratch, "work")
    results = []
    inputs = request["cases"] if request["kind"] == "stdin_stdout" else [None]
    for case_input in inputs:
        os.makedirs(workdir, exist_ok=True)
        result = _run_case(request, case_input, workdir)
        results.append(result)
        _kill_everything_else()
        for path in wipe:
            _wipe(path)
        events = [r.get("event") for r in result["records"]]
        if result["problem"] or result["signal"] or "compile_error" in events:
            break
    return {"status": "ok", "results": results}


def main():
    settings = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1, default dispositions mean "ignored from inside"
    _set_dumpable(0)
    control_in = os.fdopen(os.dup(0), "rb")
    control_out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    scratch = settings["scratch"]
    os.makedirs(scratch, exist_ok=True)
    reply = _Reporter(control_out_fd)
    reply({"status": "ready", "pid": os.getpid()})
    for line in control_in:
        try:
            response = run_program(json.loads(line), scratch, settings["wipe"])
        except Exception as exc:  # our own fault: never charged to the program
            response = {"status": "sandbox_error", "detail": "%s: %s" % (type(exc).__name__, exc)}
        _kill_everything_else()
        for path in settings["wipe"]:
            _wipe(path)
        reply(response)


if __name__ == "__main__":
    main()

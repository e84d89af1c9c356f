"""The process that runs inside the sandbox: a warm fork server for untrusted programs (standard library only).

`adaptcot.verify.sandbox.Sandbox` starts this file's source with `python -I -S -c` inside bubblewrap, as PID 1 of a
fresh PID namespace, and talks to it over stdin/stdout, one JSON line per program; every request carries a nonce
that its reply echoes. Per program it forks (fork is ~1 ms; a fresh interpreter is ~20 ms) a program process: one
per stdin/stdout case, one for all call cases. Assert tests get two processes:
- the program process runs the program, then answers calls over a pipe: a name and arguments in, the return value
  out, as plain data tagged with exact types (`_encode`), or the exception, or "not plain data";
- the test process runs the rewritten test code in a namespace of its own, where the entry point and every other
  name the test code takes from the program (HumanEval/32's `poly`) are proxies for those calls, and modules are its
  own imports. It shares no interpreter, descriptor or writable memory with the program and is not dumpable, so the
  program (same uid) can neither ptrace it nor open its /proc files: it cannot patch `abs`, `math.isclose` or the
  reports. A candidate that mutates an argument is seen by the test only through what it returns.
Each process writes what it observed as JSON lines on a report pipe; this process passes the reports on unread (they
are the program's data: the harness outside parses them) and only supervises: CPU limits (RLIMIT_CPU per case; its
signal is the verdict "timeout"), a wall-clock backstop for sleepers and blocked programs (`wall_backstop`, reported
as such: the harness re-runs the program once before that timeout counts), output caps. Then it kills every other
process in the namespace, restores permissions, wipes the scratch space and says what survived (files, SysV IPC
objects), so that the harness replaces this runner before the next program.

CPU time is counted per process (RLIMIT_CPU): a program that farms its work out to child processes is stopped only
by the wall-clock backstop.

It never sees an expected output: the harness outside compares. A program that kills this process cannot, because
the kernel ignores signals sent to a namespace's PID 1 from inside it; a program that kills its own supervisor
loses its own results. Without namespaces (`isolation: none`) the same code runs with process groups instead.

Why this file is long: it is one `python -I -S -c` source sent into the sandbox, where nothing of adaptcot is
mounted, so its three parts (the program process, the test process, the supervisor) cannot import one another from
separate modules unless `sandbox.RUNNER_SOURCE` joins several files.
"""

import builtins
import fcntl
import json
import math
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time

STDERR_TAIL = 2000
EXIT_MEMORY = 71  # a process that could not even report its MemoryError
EXIT_HARNESS_FAILED = 70
BACKSTOP_FACTOR, BACKSTOP_EXTRA_S = 3, 1.0  # wall clock per CPU second allowed: waiting for a core is no verdict
_CASE_STARTED = b'{"event": "case"'
_MIB = 1 << 20
_MAX_DEPTH = 100


def wall_backstop(cpu_seconds):
    """Wall-clock seconds after which a process is stopped whatever CPU it used (it sleeps, or waits on something)."""
    return BACKSTOP_FACTOR * cpu_seconds + BACKSTOP_EXTRA_S


def _set_dumpable(flag):
    # Non-dumpable: other processes of the same uid cannot ptrace this one or open /proc/<pid>/fd or mem.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, int(flag), 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


# --- Plain data, both ways ------------------------------------------------------------------------------------------
def _encode(value, depth=0, objects=False):
    """Plain data only, tagged by exact type: an object with a custom __eq__ cannot pass for an expected value.

    objects: arguments on their way to the program may hold `ProgramObject`s (sent as their handles)."""
    if objects and type(value) is ProgramObject:
        return ["handle", value.key]
    if depth > _MAX_DEPTH:
        raise TypeError("a value nested more than %d levels deep, which is not plain data" % _MAX_DEPTH)
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
        return [kind.__name__, [_encode(v, depth + 1, objects) for v in value]]
    if kind is dict:
        return ["dict", [[_encode(k, depth + 1, objects), _encode(v, depth + 1, objects)] for k, v in value.items()]]
    raise TypeError("a %s, which is not plain data" % kind.__name__)


def _decode(tagged, depth=0, objects=None):
    """`_encode`'s inverse; ValueError for anything else (the sender may be the program).

    objects: in the program process, the objects its classes made for the test code, by handle."""
    try:
        if depth > _MAX_DEPTH or type(tagged) is not list:
            raise ValueError
        tag = tagged[0]
        if tag == "handle" and objects is not None:
            return objects[tagged[1]]
        if tag == "none":
            return None
        if tag in ("bool", "str") and type(tagged[1]) is {"bool": bool, "str": str}[tag]:
            return tagged[1]
        if tag in ("int", "float", "bytes") and type(tagged[1]) is str:
            return {"int": int, "float": float, "bytes": bytes.fromhex}[tag](tagged[1])
        if tag == "complex":
            return complex(float(tagged[1]), float(tagged[2]))
        if tag == "dict":
            return {_decode(k, depth + 1, objects): _decode(v, depth + 1, objects) for k, v in tagged[1]}
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](
            _decode(v, depth + 1, objects) for v in tagged[1])
    except (LookupError, TypeError, ValueError, RecursionError):
        raise ValueError("a reply that is not plain data") from None


class _Reporter:
    def __init__(self, fd):
        self.write = os.write  # bound now: the program under test may replace os.write later
        self.dumps = json.dumps
        self.fd = fd

    def __call__(self, record):
        data = (self.dumps(record) + "\n").encode()
        while data:
            data = data[self.write(self.fd, data):]


def _exception_record(exc):
    import traceback
    kind = "memory" if isinstance(exc, MemoryError) else "error"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"event": kind, "error_type": type(exc).__name__, "detail": text[-STDERR_TAIL:]}


# --- Limits -------------------------------------------------------------------------------------------------------
def _units(request):
    """Test cases one process runs: one stdin/stdout case, all call cases, all assert sites."""
    if request["kind"] == "stdin_stdout":
        return 1
    return max(1, len(request.get("cases") or ()) if request["kind"] == "call" else request.get("sites", 1))


def _cpu_limits(request):
    """(soft, hard) RLIMIT_CPU: SIGXCPU at soft is a timeout; SIGKILL at hard if the program ignores SIGXCPU."""
    per_case, units = request["limits"]["timeout_s"], _units(request)
    total = max(1, math.ceil(per_case * units))
    if request["kind"] == "call":  # the soft limit moves on before every case (_allow_cpu); the hard one is shared
        return max(1, math.ceil(per_case)), total + units + 1
    return total, total + 1


def _allow_cpu(seconds):
    """Let the next call case use `seconds` of CPU from now (RLIMIT_CPU counts the whole process's life)."""
    used = sum(os.times()[:2])
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (min(hard, math.ceil(used + seconds)), hard))


def _set_limits(limits, cpu):
    plan = [(resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, limits["memory_mb"] * _MIB),
            (resource.RLIMIT_FSIZE, limits["file_kb"] * 1024), (resource.RLIMIT_NOFILE, limits["open_files"]),
            (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, limits["rlimit_processes"])]
    for which, soft in plan:
        if soft is None:
            continue  # processes: None where RLIMIT_NPROC would count the user's own processes (fallback mode)
        resource.setrlimit(which, soft if isinstance(soft, tuple) else (soft, soft))


def _renumber(fds):
    """Move `fds` to 3, 4, ... (through higher numbers first, so that no move overwrites another) and close the rest."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
    for target, fd in enumerate(high, start=3):
        os.dup2(fd, target)
    os.closerange(3 + len(fds), 1 << 16)


# --- The program process ----------------------------------------------------------------------------------------
def _program_process(request, case_input, workdir, report_fd, out_fd, err_fd, call_fds):
    """Runs in a forked child: never returns."""
    status = 1
    try:
        report = _Reporter(report_fd)
        os.setsid()
        os.chdir(workdir)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with open(".stdin", "w") as f:
            f.write(case_input or "")
        in_fd = os.open(".stdin", os.O_RDONLY)
        for src, dst in ((in_fd, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(src, dst)
        _renumber([report_fd] + call_fds)  # the report on 3; assert tests: the call pipes on 4 (in) and 5 (out)
        report.fd = 3
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        sys.argv = ["solution.py"]
        _set_dumpable(1)  # a program may open /dev/stdin (-> /proc/self/fd/0)
        _set_limits(request["limits"], _cpu_limits(request))
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
            _serve_calls(namespace, 4, 5)
    except SystemExit as exc:
        if kind != "stdin_stdout":
            report({"event": "error", "error_type": "SystemExit", "detail": "the program exited: %r" % (exc.code,)})
        raise
    except BaseException as exc:
        namespace.clear()  # after a MemoryError, free the program's data so that the report can be written
        report(_exception_record(exc))
        _print_traceback(exc)
        return 1
    report({"event": "finished"})
    return 0


def _print_traceback(exc):
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # without this harness's frame


def _run_calls(request, namespace, report):
    name = request["fn_name"]
    fn = namespace.get(name)
    if fn is None and isinstance(namespace.get("Solution"), type):  # LeetCode style: a method of class Solution
        fn = getattr(namespace["Solution"](), name, None)
    if not callable(fn):
        raise NameError("the program does not define %s()" % name)
    for index, args_json in enumerate(request["cases"]):
        args = json.loads(args_json)
        if index:  # loading the module counts as the first case's time
            _allow_cpu(request["limits"]["timeout_s"])
        report({"event": "case", "case": index})
        try:
            value = fn(*args) if isinstance(args, list) else fn(args)
            report({"event": "value", "case": index, "value": _encode(value)})
        except TypeError as exc:
            if "plain data" not in str(exc):
                raise
            report({"event": "not_plain", "case": index, "detail": "returned " + str(exc)})


def _serve_calls(namespace, requests_fd, replies_fd):
    """Assert tests: answer the test process's calls until it hangs up (the program's own exceptions are answers)."""
    pending, objects = b"", {}
    while True:
        while b"\n" not in pending:
            chunk = os.read(requests_fd, 1 << 20)
            if not chunk:
                return
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        request = json.loads(line)
        if request[0] == "describe":
            reply = [[name, _describe(namespace, name)] for name in request[1]]
        else:
            reply = _answer(namespace.get(request[1]), request[2], request[3], objects)
        data = (json.dumps(reply) + "\n").encode()
        try:
            while data:
                data = data[os.write(replies_fd, data):]
        except BrokenPipeError:
            return  # the test process is gone: its own report says why


def _describe(namespace, name):
    if name not in namespace:
        return "missing"
    value = namespace[name]
    if type(value) is type(os):
        return "module"  # the test process imports its own
    if callable(value):
        return "callable"
    try:
        return ["value", _encode(value)]
    except (TypeError, ValueError):
        return "missing"


def _answer(fn, args, kwargs, objects):
    try:
        value = fn(*[_decode(a, 0, objects) for a in args], **{k: _decode(v, 0, objects) for k, v in kwargs})
    except BaseException as exc:  # the program's answer, raised again in the test process
        _print_traceback(exc)
        try:
            message = str(exc)[-STDERR_TAIL:]
        except BaseException:
            message = ""
        return ["error", type(exc).__name__, message]
    try:
        return ["value", _encode(value)]
    except (TypeError, ValueError) as exc:
        if isinstance(fn, type):  # the test code makes an object of the program's class (MBPP's `Pair(5, 24)`)
            objects[len(objects)] = value  # kept here; the test code holds a handle it can pass back
            return ["object", len(objects) - 1, type(value).__name__]
        return ["not_plain", str(exc)]


# --- The test process (assert tests) ----------------------------------------------------------------------------
class ProgramEnded(Exception):
    """The program's process exited (or was stopped) before the test code was done with it."""


class ProgramError(Exception):
    """An exception of the program's that is not a built-in class, raised again in the test process."""


class ProgramObject:
    """An object of one of the program's classes, made by the test code (`Pair(5, 24)`): it stays in the program's
    process; the test code can only pass it back as an argument. It is not plain data, so it never passes for an
    expected value."""

    __slots__ = ("key", "type_name")

    def __init__(self, key, type_name):
        self.key, self.type_name = key, type_name

    def __repr__(self):
        return "<%s object of the program>" % self.type_name


def _test_code_process(request, report_fd, requests_fd, replies_fd):
    """Runs in a forked child: the test code, with proxies for what it takes from the program; never returns."""
    status = 1
    try:
        report = _Reporter(report_fd)
        os.setsid()
        _set_dumpable(0)  # as the runner: the program must not ptrace this process or open its /proc files
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        _renumber([report_fd, requests_fd, replies_fd])
        report.fd = 3
        _set_limits(request["limits"], _cpu_limits(request))
        status = _run_test_code(request, report, _ProgramCalls(4, 5))
    except MemoryError:
        status = EXIT_MEMORY
    except BaseException:
        status = EXIT_HARNESS_FAILED
    os._exit(status & 0xFF)


def _run_test_code(request, report, calls):
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    report({"event": "start"})
    try:
        namespace.update(calls.take(request.get("program_names") or []))
        namespace.update(_assert_reporters(report))
        exec(compile(request["test_code"], "tests.py", "exec"), namespace)
    except BaseException as exc:
        namespace.clear()
        report(_exception_record(exc))
        return 1
    report({"event": "finished"})
    return 0


def _assert_reporters(report):
    def value(site, got):
        report({"event": "value", "site": site, "value": _plain_or_note(got)})
        return got

    def pair(site, left, right):
        report({"event": "pair", "site": site, "value": [_plain_or_note(left), _plain_or_note(right)]})

    def truth(site, got):
        report({"event": "truth", "site": site, "value": _plain_or_note(got)})

    return {"__adaptcot_value__": value, "__adaptcot_pair__": pair, "__adaptcot_truth__": truth,
            "__adaptcot_result__": lambda got: got}  # what crosses from the program is plain data already


def _plain_or_note(got):
    try:
        return _encode(got)
    except TypeError as exc:
        return ["not_plain", str(exc)]


class _ProgramCalls:
    """The test process's end of the pipes to the program process. Whatever comes back is checked: it may be forged."""

    def __init__(self, requests_fd, replies_fd):
        self.requests_fd, self.replies_fd, self.pending = requests_fd, replies_fd, b""

    def ask(self, message):
        data = (json.dumps(message) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.requests_fd, data):]
            while b"\n" not in self.pending:
                chunk = os.read(self.replies_fd, 1 << 20)
                if not chunk:
                    raise BrokenPipeError
                self.pending += chunk
        except BrokenPipeError:
            raise ProgramEnded("the program's process ended before the tests did") from None
        line, _, self.pending = self.pending.partition(b"\n")
        try:
            return json.loads(line)
        except Exception:  # ValueError, RecursionError: the program may answer anything
            raise ProgramError("a garbled reply from the program's process") from None

    def call(self, name, args, kwargs):
        try:
            message = ["call", name, [_encode(a, 0, True) for a in args],
                       [[k, _encode(v, 0, True)] for k, v in kwargs.items()]]
        except TypeError as exc:
            if "nested" in str(exc):
                raise  # test code that wraps what the program returned: the program's doing
            raise UnsupportedTest("the tests pass %s() %s: arguments cross to the program as plain data only"
                                  % (name, exc)) from None
        reply = self.ask(message)
        kind = reply[0] if type(reply) is list and reply else None
        if kind == "value" and len(reply) == 2:
            return _decode(reply[1])
        if kind == "object" and len(reply) == 3 and type(reply[1]) is int:
            return ProgramObject(reply[1], str(reply[2])[:100])
        if kind == "not_plain" and len(reply) == 2:
            raise TypeError("%s() returned %s" % (name, str(reply[1])[:200]))
        if kind == "error" and len(reply) == 3:
            raise _mirrored(str(reply[1])[:100], str(reply[2]))
        raise ProgramError("a garbled reply from the program's process")

    def take(self, names):
        """The names the test code takes from the program: proxies, modules imported here, plain values copied."""
        import importlib
        wanted = [n for n in names if not hasattr(builtins, n)]  # built-ins are never the program's
        described = self.ask(["describe", wanted]) if wanted else []
        if type(described) is not list or any(type(e) is not list or len(e) != 2 or e[0] not in wanted
                                              for e in described):
            raise ProgramError("a garbled reply from the program's process")
        taken = {}
        for name, kind in described:
            if kind == "callable":
                taken[name] = self._proxy(name)
            elif kind == "module":
                try:
                    taken[name] = importlib.import_module(name)  # its own copy, by the name the test code uses
                except ImportError:
                    pass
            elif type(kind) is list and len(kind) == 2 and kind[0] == "value":
                taken[name] = _decode(kind[1])
        return taken

    def _proxy(self, name):
        def proxy(*args, **kwargs):
            return self.call(name, args, kwargs)

        proxy.__name__ = proxy.__qualname__ = name
        return proxy


def _mirrored(type_name, message):
    """The program's exception, for the test code: the same class if it is a built-in one (tests catch ValueError)."""
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # a class that wants other arguments (UnicodeDecodeError)
            pass
    return ProgramError("%s: %s" % (type_name, message))


class UnsupportedTest(Exception):
    """The test code passes the program something that cannot cross between processes: the harness's limit."""


# --- In the supervisor (this process) ---------------------------------------------------------------------------
def _fork(control_fds, body):
    """A child that runs body() and exits: whatever fails in it, it never returns into the runner's loop."""
    pid = os.fork()
    if pid == 0:
        try:
            for fd in control_fds:  # first: nothing a child does may reach the harness's channel
                os.close(fd)
            body()
        finally:
            os._exit(EXIT_HARNESS_FAILED)
    return pid


def _run_case(request, case_input, workdir, control_fds):
    """Fork the program's process (assert tests: and the test process); collect reports and output."""
    report, out, err = os.pipe(), os.pipe(), os.pipe()
    calls = [os.pipe(), os.pipe()] if request["kind"] == "assert" else []  # test -> program, program -> test
    serve = [calls[0][0], calls[1][1]] if calls else []
    children = [_fork(control_fds, lambda: _program_process(request, case_input, workdir, report[1], out[1], err[1],
                                                            serve))]
    streams = {report[0]: "report", out[0]: "stdout", err[0]: "stderr"}
    if calls:
        tests = os.pipe()  # made after the program's fork: the program process never holds its write end
        children.append(_fork(control_fds, lambda: _test_code_process(request, tests[1], calls[0][1], calls[1][0])))
        streams[tests[0]] = "tests_report"
        os.close(tests[1])
    for fd in [report[1], out[1], err[1]] + [fd for pipe in calls for fd in pipe]:
        os.close(fd)
    started = time.monotonic()
    data, problem = _supervise(request, streams, children)
    for pid in children:
        _kill_group(pid)
    ends = [_ending(pid, _cpu_limits(request)[1]) for pid in children]
    if problem is None and any(end.pop("cpu_limit") for end in ends):
        problem = "cpu_limit"
    result = dict(ends[0], report=data["report"], stdout=data["stdout"], stderr_tail=data["stderr"][-STDERR_TAIL:],
                  problem=problem, seconds=round(time.monotonic() - started, 4))
    if calls:
        result["test_process"] = dict(ends[1], report=data["tests_report"])
    return result


def _supervise(request, streams, children):
    """Read the children's pipes until they have exited, time is up (the wall backstop) or they write too much."""
    limits = request["limits"]
    caps = {"report": limits["output_kb"] * 4096, "tests_report": limits["output_kb"] * 4096,
            "stdout": limits["output_kb"] * 1024, "stderr": None}
    buffers = {fd: bytearray() for fd in streams}
    report = next(buffers[fd] for fd, name in streams.items() if name == "report")
    pidfds = {os.pidfd_open(pid) for pid in children}  # readable once a child exits, even if its children hold pipes
    running, open_fds, problem, cases_seen = set(pidfds), set(streams), None, 0
    case_started = time.monotonic()
    deadline = case_started + wall_backstop(limits["timeout_s"] * _units(request))
    while open_fds and problem is None:
        if report.count(_CASE_STARTED) > cases_seen:  # call tests: each case has its own backstop
            cases_seen, case_started = report.count(_CASE_STARTED), time.monotonic()
        case_deadline = case_started + wall_backstop(limits["timeout_s"]) if request["kind"] == "call" else deadline
        wait = min(deadline, case_deadline) - time.monotonic() if running else 0
        if wait < 0:
            problem = "wall_backstop"
            break
        ready, _, _ = select.select(list(open_fds | running), [], [], wait)
        if not ready and not running:
            break  # all exited and nothing left to read: a leftover child may hold the pipes open
        for fd in ready:
            if fd in pidfds:
                running.discard(fd)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            buf, cap = buffers[fd], caps[streams[fd]]
            buf += chunk
            if cap is None and len(buf) > 4 * STDERR_TAIL:
                del buf[:-STDERR_TAIL]
            elif cap is not None and len(buf) > cap:
                problem = "output_limit"
                break
    for fd in list(pidfds) + list(streams):
        os.close(fd)
    return {name: bytes(buffers[fd]).decode("utf-8", "replace") for fd, name in streams.items()}, problem


def _ending(pid, cpu_hard):
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, "signal": sig,
            "cpu_seconds": round(cpu, 3),
            "cpu_limit": sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_hard - 0.1)}


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


def _clean(paths):
    """Restore permissions, wipe, and list what survived: files, and SysV IPC objects (own IPC namespace only)."""
    try:
        for path in paths:
            _unlock(path)
            for entry in os.scandir(path):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
        left = ["files in " + path for path in paths if os.listdir(path)]
        for kind in ("shm", "msg", "sem") if os.getpid() == 1 else ():
            with open("/proc/sysvipc/" + kind) as f:
                left += ["SysV " + kind] if len(f.readlines()) > 1 else []
        return left
    except Exception as exc:  # deep trees (RecursionError), a full table...: all the same, this runner is spent
        return ["%s: %s" % (type(exc).__name__, exc)]


def _unlock(root):
    """chmod u+rwx every directory, top-down: a program's `chmod 000` must not keep its files from the wipe."""
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
            stack.extend(e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
        except OSError:
            pass


def run_program(request, scratch, wipe, control_fds):
    """All cases of one program; stops at the first case that did not run to a normal end."""
    workdir = os.path.join(scratch, "work")
    results = []
    inputs = request["cases"] if request["kind"] == "stdin_stdout" else [None]
    for case_input in inputs:
        os.makedirs(workdir, exist_ok=True)
        result = _run_case(request, case_input, workdir, control_fds)
        results.append(result)
        _kill_everything_else()
        _clean(wipe)
        if result["problem"] or result["signal"] or '"event": "compile_error"' in result["report"]:
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
    os.close(null)
    scratch = settings["scratch"]
    os.makedirs(scratch, exist_ok=True)
    reply = _Reporter(control_out_fd)
    reply({"status": "ready", "pid": os.getpid()})
    for line in control_in:
        nonce = None
        try:
            request = json.loads(line)
            nonce = request["nonce"]
            response = run_program(request, scratch, settings["wipe"], [control_in.fileno(), control_out_fd])
        except Exception as exc:  # the harness replaces a runner that fails, and re-runs the program once
            response = {"status": "runner_error", "detail": "%s: %s" % (type(exc).__name__, exc)}
        _kill_everything_else()
        response.update(nonce=nonce, leftovers=_clean(settings["wipe"]))
        reply(response)


if __name__ == "__main__":
    main()

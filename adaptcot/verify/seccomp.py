"""The seccomp filter every sandboxed process runs under: system calls a test program has no use for fail with EPERM.

A classic-BPF program (the format `bwrap --seccomp FD` loads), built here from a table of syscall numbers: the
official libseccomp binding is not on PyPI, and a ctypes wrapper would need libseccomp on every node. What it denies
is kernel attack surface a program could reach even without capabilities: tracing other processes (ptrace,
process_vm_*), new namespaces (unshare, setns), keyrings, BPF, perf events, userfaultfd, io_uring, the new mount
API, module and kexec loading. `clone` with CLONE_NEWUSER fails too, and `clone3` (whose flags a filter cannot read)
says ENOSYS so that libc falls back to `clone`: no nested user namespaces, even with a bubblewrap older than 0.8
(no --disable-userns). Calls of another ABI (x32, or a foreign architecture) are refused or kill the process.
Only x86_64 and aarch64 are known; elsewhere `seccomp_filter` raises and the sandbox refuses to start.
"""

from __future__ import annotations

import platform
import struct

DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "unshare", "setns", "mount", "umount2", "pivot_root",
          "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
          "io_uring_enter", "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
          "mount_setattr", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
          "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot", "sethostname", "setdomainname",
          "acct", "syslog", "quotactl")

# (AUDIT_ARCH_*, first number of a foreign ABI multiplexed onto this one or None, {name: number})
_ARCHES = {
    "x86_64": (0xC000003E, 0x40000000, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "unshare": 272, "setns": 308,
        "mount": 165, "umount2": 166, "pivot_root": 155, "keyctl": 250, "add_key": 248, "request_key": 249,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
        "setdomainname": 171, "acct": 163, "syslog": 103, "quotactl": 179}),
    "aarch64": (0xC00000B7, None, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "unshare": 97, "setns": 268,
        "mount": 40, "umount2": 39, "pivot_root": 41, "keyctl": 219, "add_key": 217, "request_key": 218,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "swapon": 224, "swapoff": 225, "reboot": 142, "sethostname": 161,
        "setdomainname": 162, "acct": 89, "syslog": 116, "quotactl": 60}),
}
# The same numbers on both (the generic syscall table's newer calls).
_COMMON = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
           "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442}

_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38
_ARCH_OFFSET, _NR_OFFSET, _ARG0_OFFSET = 4, 0, 16  # in struct seccomp_data (arg 0's low half, little-endian)
_CLONE_NEWUSER = 0x10000000
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435  # its flags are in memory, out of a filter's reach: ENOSYS makes libc fall back to clone


def seccomp_filter(machine: str | None = None) -> bytes:
    """The filter for this machine's architecture, as the bytes of a `struct sock_filter[]`."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise OSError(f"no seccomp syscall table for {machine} (known: {', '.join(_ARCHES)})")
    audit_arch, foreign_abi, numbers = _ARCHES[machine]
    numbers = {**numbers, **_COMMON}
    # (op, k, label if true, label if false); labels are resolved to forward offsets below.
    program = [(_LD_W_ABS, _ARCH_OFFSET, None, None), (_JEQ_K, audit_arch, "syscall", "kill"),
               ("label", "syscall"), (_LD_W_ABS, _NR_OFFSET, None, None)]
    if foreign_abi:
        program.append((_JGE_K, foreign_abi, "deny", None))
    program += [(_JEQ_K, numbers[name], "deny", None) for name in DENIED]
    program += [(_JEQ_K, _CLONE3, "enosys", None), (_JEQ_K, _CLONE[machine], "clone", None),
                (_RET_K, _RET_ALLOW, None, None),
                ("label", "clone"), (_LD_W_ABS, _ARG0_OFFSET, None, None), (_JSET_K, _CLONE_NEWUSER, "deny", None),
                (_RET_K, _RET_ALLOW, None, None),
                ("label", "deny"), (_RET_K, _RET_EPERM, None, None),
                ("label", "enosys"), (_RET_K, _RET_ENOSYS, None, None),
                ("label", "kill"), (_RET_K, _RET_KILL_PROCESS, None, None)]
    return _assemble(program)


def _assemble(program: list[tuple]) -> bytes:
    labels, position = {}, 0
    for item in program:
        if item[0] == "label":
            labels[item[1]] = position
        else:
            position += 1
    out, position = [], 0
    for item in program:
        if item[0] == "label":
            continue
        code, k, if_true, if_false = item
        jump = [labels[t] - position - 1 if t else 0 for t in (if_true, if_false)]
        if not all(0 <= j < 256 for j in jump):
            raise ValueError("seccomp filter jump out of range")
        out.append(struct.pack("=HBBI", code, jump[0], jump[1], k))
        position += 1
    return b"".join(out)

"""The seccomp filter every sandbox runs under: a classic-BPF program handed to bubblewrap (`--seccomp FD`).

It refuses, with EPERM (so programs fail cleanly instead of being killed), the system calls a sandboxed agent
has no use for and that widen the kernel's attack surface: keyrings, eBPF, perf events, tracing other
processes, every way of mounting, kexec, kernel modules, userfaultfd, io_uring, namespace changes, SysV shared
memory (RAM no sandbox limit would count), and clock, host name, swap, reboot and quota administration.
Kernel-held memory a sandbox could grow outside RLIMIT_AS is answered with ENOSYS instead, as if the kernel
lacked it, so programs take their fallbacks: `memfd_create` and `memfd_secret` (programs fall back to files in
the sized /dev/shm or in /tmp, under the volume's quota), POSIX message queues (`mq_open`), and SysV message
queues and semaphores (`msgget`, `semget`: each IPC namespace allows about 500 MiB of queued messages and
billions of semaphores). System calls made under any other ABI than the host's native one (32-bit x86 on
x86_64, x32) are refused with EPERM, so a foreign-ABI binary cannot reach them by their other numbers.

For a sandbox no memory cgroup bounds, `fixed_socket_buffers` also answers setsockopt(SOL_SOCKET, SO_SNDBUF,
SO_RCVBUF and their FORCE forms) with success without doing anything: every socket keeps the kernel's default
buffer size (net.core.wmem_default) instead of up to twice net.core.wmem_max (backends.Limits.without_cgroup).
"""

import errno
import os
import platform
import struct

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARGS = 16  # args[i] at 16 + 8 * i; its low 32 bits first (little-endian: x86_64, aarch64)

SOL_SOCKET = 1
SOCKET_BUFFER_OPTIONS = (7, 8, 32, 33)  # SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE (both tables)

_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_X32_SYSCALL_BIT = 0x40000000

# Denied by name; the numbers below are per architecture (from the kernel's unistd tables).
DENIED = (
    "add_key",
    "request_key",
    "keyctl",
    "bpf",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "shmget",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "quotactl",
    "quotactl_fd",
    "iopl",
    "ioperm",
    "uselib",
    "vhangup",
    "nfsservctl",
    "fanotify_init",
)

# Answered with ENOSYS: memory the kernel holds for the sandbox outside every limit it has (see above).
ABSENT = (
    "memfd_create",
    "memfd_secret",
    "mq_open",
    "msgget",
    "semget",
)

_X86_64 = {
    "setsockopt": 54,  # not denied: see fixed_socket_buffers
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "bpf": 321,
    "perf_event_open": 298,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "create_module": 174,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "unshare": 272,
    "setns": 308,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "lookup_dcookie": 212,
    "shmget": 29,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "syslog": 103,
    "acct": 163,
    "settimeofday": 164,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "adjtimex": 159,
    "sethostname": 170,
    "setdomainname": 171,
    "quotactl": 179,
    "quotactl_fd": 443,
    "iopl": 172,
    "ioperm": 173,
    "uselib": 134,
    "vhangup": 153,
    "nfsservctl": 180,
    "fanotify_init": 300,
    "memfd_create": 319,
    "memfd_secret": 447,
    "mq_open": 240,
    "msgget": 68,
    "semget": 64,
}

# aarch64 uses the generic table; it has no create_module, iopl, ioperm or uselib.
_AARCH64 = {
    "setsockopt": 208,  # not denied: see fixed_socket_buffers
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "bpf": 280,
    "perf_event_open": 241,
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "userfaultfd": 282,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "unshare": 97,
    "setns": 268,
    "open_by_handle_at": 265,
    "name_to_handle_at": 264,
    "lookup_dcookie": 18,
    "shmget": 194,
    "swapon": 224,
    "swapoff": 225,
    "reboot": 142,
    "syslog": 116,
    "acct": 89,
    "settimeofday": 170,
    "clock_settime": 112,
    "clock_adjtime": 266,
    "adjtimex": 171,
    "sethostname": 161,
    "setdomainname": 162,
    "quotactl": 60,
    "quotactl_fd": 443,
    "vhangup": 58,
    "nfsservctl": 42,
    "fanotify_init": 262,
    "memfd_create": 279,
    "memfd_secret": 447,
    "mq_open": 180,
    "msgget": 186,
    "semget": 190,
}

# machine -> (AUDIT_ARCH_* value, syscall table)
ARCHITECTURES = {
    "x86_64": (0xC000003E, _X86_64),
    "aarch64": (0xC00000B7, _AARCH64),
}


class SeccompUnsupported(RuntimeError):
    pass


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program(machine: str | None = None, *, fixed_socket_buffers: bool = False) -> bytes:
    """The filter for this host's architecture, as the bytes of a `struct sock_filter` array."""
    machine = machine or platform.machine()
    if machine not in ARCHITECTURES:
        raise SeccompUnsupported(f"no seccomp filter for the {machine} architecture")
    audit_arch, table = ARCHITECTURES[machine]
    denied = sorted({table[name] for name in DENIED if name in table})
    absent = sorted({table[name] for name in ABSENT if name in table})
    allow = _insn(_BPF_RET_K, 0, 0, _RET_ALLOW)
    enosys = _insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)
    deny = _insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)
    # Layout: check arch, load nr, [x32 check], one JEQ per number (jumping to its answer), allow, enosys,
    # deny. A foreign ABI or x32 call jumps to the final deny.
    # (code, jump-if-true target, jump-if-false target, k); targets are named and resolved below.
    head: list[tuple[int, str | None, str | None, int]] = [
        (_BPF_LD_W_ABS, None, None, _OFFSET_ARCH),
        (_BPF_JEQ_K, None, "deny", audit_arch),
        (_BPF_LD_W_ABS, None, None, _OFFSET_NR),
    ]
    if machine == "x86_64":
        head.append((_BPF_JGE_K, "deny", None, _X32_SYSCALL_BIT))
    body: list[tuple[int, str | None, str | None, int]] = [(_BPF_JEQ_K, "deny", None, n) for n in denied]
    body += [(_BPF_JEQ_K, "enosys", None, n) for n in absent]
    if fixed_socket_buffers:
        body.insert(0, (_BPF_JEQ_K, "setsockopt", None, table["setsockopt"]))
    end = len(head) + len(body)
    targets = {"allow": end, "enosys": end + 1, "deny": end + 2}
    # setsockopt(fd, level, name, ...): a buffer size at SOL_SOCKET answers 0 (success) and does nothing.
    # BPF jumps only forward, so this block after the answers ends with its own allow.
    tail: list[tuple[int, str | None, str | None, int]] = []
    if fixed_socket_buffers:
        tail = [
            (_BPF_LD_W_ABS, None, None, _OFFSET_ARGS + 8),
            (_BPF_JEQ_K, None, "tail_allow", SOL_SOCKET),
            (_BPF_LD_W_ABS, None, None, _OFFSET_ARGS + 16),
            *[(_BPF_JEQ_K, "ignore", None, option) for option in SOCKET_BUFFER_OPTIONS],
            (_BPF_RET_K, None, None, _RET_ALLOW),
            (_BPF_RET_K, None, None, _RET_ERRNO | 0),  # errno 0: the call returns success
        ]
        targets["setsockopt"] = end + 3
        targets["tail_allow"] = end + 3 + len(tail) - 2
        targets["ignore"] = end + 3 + len(tail) - 1
    program: list[bytes] = []
    numbered = [*enumerate([*head, *body]), *enumerate(tail, start=end + 3)]
    for index, (code, jt, jf, k) in numbered:
        # A jump offset counts the instructions skipped after this one.
        program.append(
            _insn(code, targets[jt] - index - 1 if jt else 0, targets[jf] - index - 1 if jf else 0, k)
        )
        if index == end - 1:
            program += [allow, enosys, deny]
    if len(program) > 255:
        raise SeccompUnsupported("seccomp program too long for 8-bit jumps")
    return b"".join(program)


_cached: dict[bool, bytes] = {}


def seccomp_fd(*, fixed_socket_buffers: bool = False) -> int | None:
    """A fresh file descriptor holding the program, positioned at its start, for one bubblewrap launch.
    None on an architecture without a table (the sandbox then runs without the filter; logged by the caller).
    The caller passes it with `pass_fds` and closes it after the launch."""
    if fixed_socket_buffers not in _cached:
        try:
            _cached[fixed_socket_buffers] = seccomp_program(fixed_socket_buffers=fixed_socket_buffers)
        except SeccompUnsupported:
            return None
    fd = os.memfd_create("galley-seccomp", os.MFD_CLOEXEC)
    os.write(fd, _cached[fixed_socket_buffers])
    os.lseek(fd, 0, os.SEEK_SET)
    return fd

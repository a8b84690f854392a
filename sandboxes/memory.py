"""What a sandbox without a memory cgroup holds in memory, measured from outside, for the worker's watcher.

With a memory cgroup the kernel bounds a sandbox as a whole (sandboxes/cgroup.py). Without one, rlimits bound
each process (RLIMIT_AS, and the socket limits of `Limits.without_cgroup`) but not their sum, so the worker's
reaper thread measures every such sandbox's running shell and kills it once the total passes the memory limit
(`sandboxes.services.sandboxes_watch_memory`). What is counted:
- every process of the sandbox: the sandbox's own `/proc` (reached from the host as `/proc/<pid>/root/proc` of
  a process inside, the PID namespace's procfs, which lists exactly its processes and cannot be remounted from
  inside) names them all, however they were started or reparented;
- each one's anonymous memory, proportionally for pages shared after a fork (`Pss_Anon` + `SwapPss` of its
  `smaps_rollup`), read only when the cheap upper bound (`RssAnon` + `VmSwap` of its `status`) of the whole
  sandbox passes the limit; file-backed pages are page cache the kernel can reclaim, and are not counted;
- its `/dev/shm` tmpfs (mapped or not, counted once);
- with a network namespace of its own, the bytes queued in its TCP and UDP sockets (`net/tcp*`, `net/udp*`).
Not counted: Unix socket and pipe buffers (the kernel shows no per-socket queue outside a cgroup; they stay
bounded per process by `Limits.without_cgroup`), page tables and kernel stacks.
"""

import os
from pathlib import Path

_SOCKET_TABLES = ("tcp", "tcp6", "udp", "udp6")
_TCP_LISTEN = "0A"  # a listener's rx_queue is its accept queue's length, not bytes


def sandbox_memory_used(inner_pid: int, *, own_network: bool, limit: int) -> int:
    """Bytes the sandbox whose PID namespace holds `inner_pid` holds: exact (PSS) once the cheap bound passes
    `limit`, else that bound (which is then under the limit). Raises OSError when the sandbox is gone."""
    base = Path(f"/proc/{inner_pid}")
    proc = base / "root" / "proc"
    pids = [name for name in os.listdir(proc) if name.isdigit()]
    fixed = _shm_bytes(base) + (_socket_bytes(base) if own_network else 0)
    bound = fixed + sum(_fields(proc / pid / "status", ("RssAnon:", "VmSwap:")) for pid in pids)
    if bound <= limit:
        return bound
    return fixed + sum(_fields(proc / pid / "smaps_rollup", ("Pss_Anon:", "SwapPss:")) for pid in pids)


def _fields(path: Path, names: tuple[str, ...]) -> int:
    """The sum of these `Name: N kB` lines of a /proc file; 0 for a process that ended meanwhile."""
    try:
        text = path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith(names):
            total += int(line.split()[1]) * 1024
    return total


def _shm_bytes(base: Path) -> int:
    try:
        st = os.statvfs(base / "root" / "dev" / "shm")
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _socket_bytes(base: Path) -> int:
    """Bytes queued in the TCP and UDP sockets of the sandbox's network namespace (send and receive)."""
    total = 0
    for table in _SOCKET_TABLES:
        try:
            lines = (base / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 5:
                continue
            tx, _, rx = fields[4].partition(":")
            total += int(tx, 16)
            if not (table.startswith("tcp") and fields[3] == _TCP_LISTEN):
                total += int(rx, 16)
    return total

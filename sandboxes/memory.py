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
- with a network namespace of its own, the bytes queued in its TCP and UDP sockets (`net/tcp*`, `net/udp*`);
- and, where the worker may enter that namespace (root), its Unix sockets as the kernel's sock_diag netlink
  reports them from inside it (`_unix_socket_bytes`): the bytes in each stream socket's receive queue, the
  memory each socket holds for what it sent, and for a listening socket its queued connections times what a
  connection can hold (2 x `net.core.wmem_default`: their data is in sockets no dump lists).
Not counted: pipe buffers (bounded per uid by `fs.pipe-user-pages-soft`), datagrams queued by senders that
have closed beyond the first of each queue (at most `NO_CGROUP_LISTEN_BACKLOG` of them per socket), page
tables and kernel stacks.
"""

import os
import socket
import struct
from pathlib import Path

_SOCKET_TABLES = ("tcp", "tcp6", "udp", "udp6")
_TCP_LISTEN = "0A"  # a listener's rx_queue is its accept queue's length, not bytes


def sandbox_memory_used(inner_pid: int, *, own_network: bool, limit: int) -> int:
    """Bytes the sandbox whose PID namespace holds `inner_pid` holds: exact (PSS) once the cheap bound passes
    `limit`, else that bound (which is then under the limit). Raises OSError when the sandbox is gone."""
    base = Path(f"/proc/{inner_pid}")
    proc = base / "root" / "proc"
    pids = [name for name in os.listdir(proc) if name.isdigit()]
    fixed = _shm_bytes(base) + (_socket_bytes(base) + _unix_socket_bytes(inner_pid) if own_network else 0)
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


# sock_diag (linux/sock_diag.h, linux/unix_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_RQLEN, _UDIAG_SHOW_MEMINFO = 0x10, 0x20
_UNIX_DIAG_RQLEN, _UNIX_DIAG_MEMINFO = 4, 5
_SK_MEMINFO_WMEM_ALLOC = 2
_SOCK_STREAM_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
_TCP_LISTEN_STATE = 10


def _wmem_default() -> int:
    try:
        return int(Path("/proc/sys/net/core/wmem_default").read_text())
    except (OSError, ValueError):
        return 212992


def _unix_socket_bytes(inner_pid: int) -> int:
    """Bytes the Unix sockets of the network namespace of `inner_pid` hold (see the module's docstring); 0
    where the worker cannot enter it (not root) or the kernel has no sock_diag for Unix sockets."""
    try:
        sock = _diag_socket_in(f"/proc/{inner_pid}/ns/net")
    except (OSError, AttributeError):
        return 0
    per_connection = 2 * _wmem_default()
    total = 0
    with sock:
        request = struct.pack(
            "=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_RQLEN | _UDIAG_SHOW_MEMINFO, 0, 0
        )
        sock.send(
            struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0)
            + request
        )
        sock.settimeout(1.0)
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return total
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE or length < 16:
                    return total
                if kind == _NLMSG_ERROR:
                    return total
                stype, state = struct.unpack_from("=BB", data, offset + 17)
                queue = held = 0
                attr = offset + 32  # nlmsghdr (16) + unix_diag_msg (16)
                while attr + 4 <= offset + length:
                    size, atype = struct.unpack_from("=HH", data, attr)
                    if size < 4:
                        break
                    if atype == _UNIX_DIAG_RQLEN and size >= 12:
                        queue = struct.unpack_from("=I", data, attr + 4)[0]
                    elif atype == _UNIX_DIAG_MEMINFO and size >= 4 + 4 * (_SK_MEMINFO_WMEM_ALLOC + 1):
                        held = struct.unpack_from("=I", data, attr + 4 + 4 * _SK_MEMINFO_WMEM_ALLOC)[0]
                    attr += (size + 3) & ~3
                if state == _TCP_LISTEN_STATE:
                    total += queue * per_connection  # connections queued, not bytes
                elif stype in _SOCK_STREAM_TYPES:
                    # What it has not read, whoever sent it (the sender's memory is the same bytes).
                    total += queue
                else:
                    total += held + queue  # datagrams: what it sent, and the first of its queue
                offset += (length + 3) & ~3


def _diag_socket_in(namespace: str) -> socket.socket:
    """A sock_diag netlink socket of that network namespace (entered by this thread alone, then left)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.setns(target, os.CLONE_NEWNET)
            try:
                return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
            finally:
                os.setns(own, os.CLONE_NEWNET)
        finally:
            os.close(target)
    finally:
        os.close(own)

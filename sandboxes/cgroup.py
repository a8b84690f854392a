"""A memory and a process cgroup per sandbox, where the host lets the worker make them.

RLIMIT_AS and RLIMIT_NPROC count per process and per uid; a cgroup counts the whole sandbox, kernel memory the
kernel charges included (pipe and Unix socket buffers, page tables, tmpfs pages).
GALLEY_SANDBOX_CGROUPS picks:
- `auto` (default): cgroup v2 when the worker's own cgroup delegates the `memory` and `pids` controllers to
  its children (systemd `Delegate=yes` with the worker in a leaf below the service's cgroup, or a container's
  writable cgroup); else cgroup v1 when the worker may create cgroups in separate `memory` and `pids`
  hierarchies (a root worker on a v1 or hybrid host); else none, logged once (rlimits and seccomp remain).
- `off`: none.

Each sandbox gets `galley-<tag>-<key>` below the worker's own cgroup in each hierarchy (the tag names the
sandbox root, GALLEY_SANDBOX_ROOT, so installations sharing a host never touch each other's), with the memory
limit at GALLEY_SANDBOX_MEMORY_BYTES for the sandbox as a whole (no swap) and the process limit at
GALLEY_SANDBOX_MAX_PROCESSES. The shell's processes join it as soon as bubblewrap has started them, before any
command runs (every process a command starts is their descendant, so it is counted). The cgroups are removed
when the sandbox stops; those a killed worker left are removed by the next sweep for leftovers
(`cgroups_left`, `cgroup_remove`, called from `sandboxes.services.sandboxes_release_orphans`).
"""

import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
_mode: tuple[str, tuple[Path, ...]] | None = None


# cgroup v1 charges TCP buffers to a memory cgroup only once its own TCP limit is set, and then to a
# counter of their own, outside memory.usage_in_bytes: this share of the memory limit, on top of it.
V1_TCP_SHARE = 4


@dataclass(frozen=True)
class SandboxCgroup:
    version: int
    paths: tuple[Path, ...]  # v2: one directory; v1: the memory one, then the pids one
    # Whether the kernel charges the sandbox's socket buffers here (v2 always; v1 with a TCP limit set): if
    # not, the sandbox also gets the limits of one without a memory cgroup (`Limits.without_cgroup`).
    charges_sockets: bool = True

    def attach(self, pids: list[int]) -> None:
        for path in self.paths:
            for pid in pids:
                try:
                    (path / "cgroup.procs").write_text(f"{pid}\n")
                except ProcessLookupError:
                    pass  # it ended meanwhile
                except OSError as exc:  # the sandbox runs on its rlimits rather than fail the call
                    logger.warning("could not move sandbox process %d into %s (%s)", pid, path, exc)
                    return

    def memory_limit_hit(self) -> bool:
        """Whether the kernel refused or reclaimed memory at the limit (an OOM kill among them)."""
        try:
            if self.version == 2:
                text = (self.paths[0] / "memory.events").read_text()
                events = dict(line.split() for line in text.splitlines())
                return int(events.get("max", 0)) > 0 or int(events.get("oom_kill", 0)) > 0
            memory = self.paths[0]
            if any(
                (memory / name).exists() and int((memory / name).read_text()) > 0
                for name in ("memory.failcnt", "memory.memsw.failcnt")
            ):
                return True
            control = dict(line.split() for line in (memory / "memory.oom_control").read_text().splitlines())
            return int(control.get("oom_kill", 0)) > 0
        except (OSError, ValueError):
            return False

    def release(self) -> None:
        """Remove the cgroups (their processes are gone or going: retry briefly while they exit)."""
        for path in self.paths:
            if not _rmdir(path, tries=50):
                logger.warning("sandbox cgroup %s still has processes; left in place", path)


def _rmdir(path: Path, *, tries: int) -> bool:
    """rmdir a cgroup, which the kernel allows only once it has no processes; True once it is gone."""
    for attempt in range(tries):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if attempt + 1 < tries:
                time.sleep(0.02)
    return False


def _own(controller: str) -> str | None:
    """This process's cgroup path in the v1 hierarchy of `controller`, or in v2 (controller "")."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") if controller else controllers == "":
            return path
    return None


def _detect() -> tuple[str, tuple[Path, ...]]:
    """('v2', (parent,)), ('v1', (memory parent, pids parent)) or ('none', ())."""
    if settings.GALLEY_SANDBOX_CGROUPS == "off" or os.geteuid() != 0:
        return "none", ()
    try:
        unified = _own("")
        v2_root = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"
        if unified is not None and (v2_root / "cgroup.controllers").exists():
            parent = v2_root / unified.lstrip("/")
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if {"memory", "pids"} <= set(enabled) and os.access(parent, os.W_OK):
                return "v2", (parent,)
        memory, pids = _own("memory"), _own("pids")
        if memory is not None and pids is not None:
            parents = (CGROUP_ROOT / "memory" / memory.lstrip("/"), CGROUP_ROOT / "pids" / pids.lstrip("/"))
            if all(p.is_dir() and os.access(p, os.W_OK) for p in parents):
                return "v1", parents
    except OSError as exc:
        logger.warning("sandbox cgroups unavailable on this host (%s); rlimits only", exc)
        return "none", ()
    logger.warning("no writable memory and pids cgroups on this host; sandboxes are limited by rlimits only")
    return "none", ()


def cgroup_mode() -> str:
    global _mode
    if _mode is None:
        _mode = _detect()
    return _mode[0]


def _prefix() -> str:
    """`galley-<tag>-`: the tag is this installation's sandbox root, as a short digest."""
    base = os.path.realpath(settings.GALLEY_SANDBOX_ROOT)
    return f"galley-{hashlib.sha256(base.encode()).hexdigest()[:8]}-"


def cgroup_create(*, key: str, memory_bytes: int, max_processes: int) -> SandboxCgroup | None:
    """The sandbox's cgroups with their limits set, or None where the host has none for us. A failure
    here is logged and the sandbox runs on rlimits (never a failed tool call)."""
    mode = cgroup_mode()
    assert _mode is not None
    if mode == "none":
        return None
    name = _prefix() + key
    try:
        if mode == "v2":
            path = _mode[1][0] / name
            path.mkdir(exist_ok=True)
            (path / "memory.max").write_text(str(memory_bytes))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
            (path / "pids.max").write_text(str(max_processes))
            return SandboxCgroup(2, (path,))
        memory, pids = (parent / name for parent in _mode[1])
        memory.mkdir(exist_ok=True)
        pids.mkdir(exist_ok=True)
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))  # no swap either
        (pids / "pids.max").write_text(str(max_processes))
        return SandboxCgroup(
            1, (memory, pids), charges_sockets=_v1_tcp_limit(memory, memory_bytes // V1_TCP_SHARE)
        )
    except OSError as exc:
        logger.warning("could not set up the cgroups of sandbox %s (%s); rlimits only", key, exc)
        return None


def _v1_tcp_limit(memory: Path, limit: int) -> bool:
    """Set a v1 memory cgroup's TCP buffer limit (before any socket of it exists). Without it a sandbox could
    queue the host's whole TCP memory (`net.ipv4.tcp_mem`), charged nowhere."""
    try:
        (memory / "memory.kmem.tcp.limit_in_bytes").write_text(str(limit))
        return True
    except OSError as exc:
        logger.warning(
            "could not limit the TCP buffers of cgroup %s (%s): no-cgroup socket limits", memory, exc
        )
        return False


def cgroups_left() -> dict[str, list[Path]]:
    """This installation's sandbox cgroups below this worker's own (where a worker of the same service left
    them), by sandbox key: the candidates a sweep for leftovers looks at."""
    if cgroup_mode() == "none":
        return {}
    assert _mode is not None
    prefix = _prefix()
    found: dict[str, list[Path]] = {}
    for parent in _mode[1]:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and (parent / name).is_dir():
                found.setdefault(name[len(prefix) :], []).append(parent / name)
    return found


def cgroup_remove(paths: list[Path], *, kill: bool) -> bool:
    """Remove a left-over sandbox's cgroups; True when all are gone. `kill` only when the caller has proved
    that no worker runs that sandbox (its volume's claim, quota.volume_unclaimed): then whatever is still
    inside is an orphan and is killed first. Without it a cgroup with a process in it stays."""
    gone = True
    for path in paths:
        if kill:
            _kill_members(path)
        if not _rmdir(path, tries=50 if kill else 1):
            logger.warning("left-over sandbox cgroup %s still has processes; left in place", path)
            gone = False
    return gone


def _kill_members(path: Path) -> None:
    if (path / "cgroup.kill").exists():  # cgroup v2 (Linux 5.14+): the kernel kills them all at once
        try:
            (path / "cgroup.kill").write_text("1")
            return
        except OSError:
            pass
    try:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        # A pidfd first, then the membership check: a pid that ended and was reused meanwhile by a process
        # outside this cgroup is never signalled.
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if path.name in Path(f"/proc/{pid}/cgroup").read_text():
                signal.pidfd_send_signal(handle, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(handle)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (every thread's children)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                stack += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    return found

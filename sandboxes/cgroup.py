"""A memory and a process cgroup per sandbox, where the host lets the worker make them.

RLIMIT_AS and RLIMIT_NPROC count per process and per uid; a cgroup counts the whole sandbox, kernel memory the
kernel charges included (pipe and Unix socket buffers, page tables, tmpfs pages).
GALLEY_SANDBOX_CGROUPS picks:
- `auto` (default): cgroup v2 when the worker's own cgroup delegates the `memory` and `pids` controllers to
  its children (systemd `Delegate=yes` with the worker in a leaf below the service's cgroup, or a container's
  writable cgroup); else cgroup v1 when the worker may create cgroups in separate `memory` and `pids`
  hierarchies (a root worker on a v1 or hybrid host); else none, logged once (rlimits and seccomp remain).
- `off`: none.

Each sandbox gets `galley-<key>` below the worker's own cgroup in each hierarchy, with the memory limit at
GALLEY_SANDBOX_MEMORY_BYTES for the sandbox as a whole (no swap) and the process limit at
GALLEY_SANDBOX_MAX_PROCESSES. The shell's processes join it as soon as bubblewrap has started them, before any
command runs (every process a command starts is their descendant, so it is counted). The cgroups are removed
when the sandbox stops.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
_mode: tuple[str, tuple[Path, ...]] | None = None


@dataclass(frozen=True)
class SandboxCgroup:
    version: int
    paths: tuple[Path, ...]  # v2: one directory; v1: the memory one, then the pids one

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

    def release(self) -> None:
        """Remove the cgroups (their processes are gone or going: retry briefly while they exit)."""
        for path in self.paths:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                logger.warning("sandbox cgroup %s still has processes; left in place", path)


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


def cgroup_create(*, key: str, memory_bytes: int, max_processes: int) -> SandboxCgroup | None:
    """The sandbox's cgroups with their limits set, or None where the host has none for us. A failure
    here is logged and the sandbox runs on rlimits (never a failed tool call)."""
    mode = cgroup_mode()
    assert _mode is not None
    if mode == "none":
        return None
    name = f"galley-{key}"
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
        return SandboxCgroup(1, (memory, pids))
    except OSError as exc:
        logger.warning("could not set up the cgroups of sandbox %s (%s); rlimits only", key, exc)
        return None


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

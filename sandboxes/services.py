"""Sandbox lifecycle: directories on disk, the live shell registry of this worker process, reaping, removal.

A session's sandbox is a directory `GALLEY_SANDBOX_ROOT/<session_id>/` holding `workspace/` (mounted at
/workspace, the working directory), `tmp/` (its /tmp), `state/` (saved cwd and exports), `egress/` (the
proxy's socket and the bridge script, read-only inside) and `etc/` (its passwd and group). The directory
outlives every process; the processes (one bash in one bwrap) are started on the first tool call, kept per
worker process, killed when idle, and restarted transparently. The volume's image (quota.py) is mounted while
a shell runs and unmounted, freeing its loop device, whenever the sandbox stops (idle, session terminated,
worker shutdown); the next tool call mounts it again with its files. The worker only ever writes into
directories the sandbox cannot change (never following a link the sandbox may have planted).
"""

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from sandboxes.backends import (
    CA_BUNDLE,
    INSIDE_UID,
    SAFE_PATH,
    BwrapBackend,
    Limits,
    SandboxBackend,
    SandboxError,
    SandboxSpec,
    backend_get,
    rlimit_shell,
    sandbox_uid,
)
from sandboxes.shell import Shell
from sessions.models import Session
from skills.runtime import sandbox_agent, sandbox_skills

logger = logging.getLogger(__name__)

PROXY_PORT = 3128
RELEASED = "released"  # in a sandbox root: its session was terminated, every worker stops its shell
BRIDGE_SOURCE = Path(__file__).with_name("bridge.py")


@dataclass
class LiveSandbox:
    key: str
    session_id: str
    spec: SandboxSpec
    backend: SandboxBackend
    shell: Shell | None = None
    egress: Any = None  # sandboxes.egress.EgressProxy when networking is limited
    limited: bool = False
    rules: Any = None  # sandboxes.egress.EgressRules when networking is limited
    slots: list[Any] = None  # type: ignore[assignment]  # sandboxes.credentials.SecretSlot
    lock: threading.Lock = None  # type: ignore[assignment]
    # Outputs capture: path -> stat of the content last recorded, so unchanged files are not read again.
    outputs_seen: dict[str, tuple[int, ...]] = None  # type: ignore[assignment]
    image: bool = False  # the running shell's volume is a mounted image (quota.py)
    cgroup: Any = None  # sandboxes.cgroup.SandboxCgroup where the host allows one
    claim: int | None = None  # this process's claim on the volume while a shell runs (quota.volume_claim)
    # Without a memory cgroup: set by the reaper's memory watch when the shell held more than the limit
    # (the bytes it held), with `memory_event`, which the running command polls to be killed.
    memory_over: int | None = None
    memory_event: threading.Event = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.memory_event = threading.Event()
        self.slots = self.slots or []
        self.outputs_seen = {}


_registry: dict[str, LiveSandbox] = {}
_registry_lock = threading.Lock()
_reaper_started = False
# A worker process (not the web, not a test) also sweeps this host's leftover volumes from its reaper.
ORPHAN_SWEEP_SECONDS = 30.0
_sweep_orphans = False
# How often the reaper measures sandboxes no memory cgroup bounds (sandboxes/memory.py), and reaps idle ones.
MEMORY_WATCH_SECONDS = 0.25
REAP_SECONDS = 1.0


_shell_started = threading.Event()  # a shell started: the reaper's wait ends


def _reaper_interval() -> float | None:
    """How long the reaper may sleep: MEMORY_WATCH_SECONDS while a shell no memory cgroup bounds runs,
    REAP_SECONDS while only others do, None (until a shell starts) with no shell in this process."""
    with _registry_lock:
        shells = [live for live in _registry.values() if live.shell is not None]
    if any(live.spec.limits.fixed_socket_buffers for live in shells):
        return MEMORY_WATCH_SECONDS
    return REAP_SECONDS if shells else None


def _start_reaper() -> None:
    """One daemon thread per worker process stops idle shells, whether or not a beat schedule exists, and
    kills the shells of sandboxes without a memory cgroup that hold more than their memory limit."""
    global _reaper_started
    if _reaper_started:
        return
    _reaper_started = True

    def loop() -> None:
        swept = reaped = time.monotonic()
        while True:
            # Until the interval passes or a shell starts (then the interval is looked at again). With no
            # shell, until the orphan sweep is due: an idle worker process wakes every ORPHAN_SWEEP_SECONDS.
            interval = _reaper_interval()
            if interval is None and _sweep_orphans:
                interval = max(0.0, swept + ORPHAN_SWEEP_SECONDS - time.monotonic())
            _shell_started.wait(interval)
            _shell_started.clear()
            try:
                sandboxes_watch_memory()
            except Exception:  # the reaper must outlive any one bad sandbox
                logger.exception("sandbox memory watch failed")
            if time.monotonic() - reaped < REAP_SECONDS:
                continue
            reaped = time.monotonic()
            try:
                sandbox_reap_idle()
            except Exception:
                logger.exception("idle sandbox reaper failed")
            if _sweep_orphans and time.monotonic() - swept >= ORPHAN_SWEEP_SECONDS:
                swept = time.monotonic()
                _release_orphans_safely(own_thread=True)

    threading.Thread(target=loop, daemon=True, name="sandbox-reaper").start()


def sandbox_root(session_id: str, thread_id: str | None = None) -> Path:
    name = session_id if thread_id is None else f"{session_id}.{thread_id}"
    if not name.replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"bad sandbox name {name!r}")
    return Path(settings.GALLEY_SANDBOX_ROOT) / name


def _check_traversable(base: Path) -> None:
    """bubblewrap runs as the sandbox's uid: every parent of the sandbox root must let others through."""
    for parent in base.parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            logger.error("sandbox root %s is unreachable for sandbox users: %s lacks o+x", base, parent)
            raise SandboxError(
                "the server's sandbox directory is not reachable by sandbox users (a parent directory lacks "
                "o+x); an administrator should set GALLEY_SANDBOX_ROOT elsewhere (see the server log)"
            )


def sandbox_provision(*, root: Path, uid: int, quota: bool = True) -> None:
    """Create the sandbox's directories (idempotent). Files inside belong to the sandbox's own uid.
    With `quota`, the volume holding everything the sandbox can write is its quota-limited image."""
    from sandboxes.quota import volume_claimed, volume_path, volume_provision

    base = Path(settings.GALLEY_SANDBOX_ROOT)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o711)
    if os.geteuid() == 0 and uid != 0:
        _check_traversable(base)
    root.mkdir(exist_ok=True)
    os.chmod(root, 0o711)
    if quota:
        # Under a claim: a release of a killed worker's leftover volume never unmounts it half set up.
        with volume_claimed(root):
            volume_provision(root=root, limit=settings.GALLEY_SANDBOX_WORKSPACE_BYTES)
            _provision_volume(root=root, uid=uid)
    else:
        volume_path(root).mkdir(mode=0o711, exist_ok=True)
        _provision_volume(root=root, uid=uid)
    (root / "egress").mkdir(mode=0o711, exist_ok=True)
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"agent:x:{INSIDE_UID}:{INSIDE_UID}:agent:/workspace:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nagent:x:{INSIDE_UID}:\nnogroup:x:65534:\n")


def _provision_volume(*, root: Path, uid: int) -> None:
    from sandboxes.quota import volume_path

    volume = volume_path(root)
    own = os.geteuid() == 0
    for name, mode in (("workspace", 0o755), ("tmp", 0o700), ("state", 0o700), ("outputs", 0o755)):
        path = volume / name
        old = root / name  # the layout before volumes: move its files into the volume once
        if old.is_dir() and not old.is_symlink() and not path.exists():
            shutil.move(str(old), str(path))
        path.mkdir(exist_ok=True)
        if own:
            os.chown(path, uid, uid)
        os.chmod(path, mode)


def environment_networking(session: Session) -> dict[str, Any]:
    config = session.environment.config or {}
    return dict(config.get("networking") or {"type": "unrestricted"})


def sandbox_env(backend: Any, probe: SandboxSpec) -> dict[str, str]:
    """The environment every sandbox's shell starts with (callers add PATH and their own)."""
    return {
        "HOME": backend.workspace_path(probe),
        "USER": "agent",
        "LOGNAME": "agent",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": backend.tmp_path(probe),
        "PYTHONUNBUFFERED": "1",
        "PAGER": "cat",
        "GIT_PAGER": "cat",
        # git never prompts: repository credentials are added by the egress proxy, outside the sandbox.
        "GIT_TERMINAL_PROMPT": "0",
    }


def sandbox_spec(
    *, session: Session, key: str, backend: SandboxBackend
) -> tuple[SandboxSpec, bool, list[Any]]:
    from sandboxes.credentials import ca_bundle_path, secret_slots
    from sandboxes.packages import package_dir_for

    root = sandbox_root(key)
    uid = sandbox_uid(key) if os.geteuid() == 0 else os.geteuid()
    # "limited" here means: no network of its own, egress through the proxy.
    limited = (
        environment_networking(session).get("type") == "limited"
        or settings.GALLEY_SANDBOX_UNRESTRICTED_NETWORK == "proxy"
    )
    package_dir = package_dir_for(session.environment)
    probe = SandboxSpec(
        root=root, uid=uid, share_network=not limited, limits=Limits.from_settings(), package_dir=package_dir
    )
    path = SAFE_PATH
    env = sandbox_env(backend, probe)
    env["PATH"] = path
    if package_dir is not None:
        from sandboxes.packages import prefix_environment

        env.update(prefix_environment(backend.packages_path(probe), path))
    skills = sandbox_skills(agent=sandbox_agent(session, key))
    if skills.pythonpath:
        env["PYTHONPATH"] = ":".join(p for p in (env.get("PYTHONPATH"), skills.pythonpath) if p)
    if limited:
        proxy = f"http://127.0.0.1:{PROXY_PORT}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = proxy
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    # Vault environment_variable credentials: only a placeholder inside; the proxy substitutes the value.
    slots = secret_slots(workspace_id=session.workspace_id, vault_ids=list(session.vault_ids or []))
    for slot in slots:
        env.setdefault(slot.secret_name, slot.placeholder)
    repos = repo_ids(session)
    ca_bundle = None
    if (slots or repos) and limited and isinstance(backend, BwrapBackend):
        ca_bundle = ca_bundle_path()
        for name in (
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
            "PIP_CERT",
        ):
            env[name] = CA_BUNDLE
    spec = SandboxSpec(
        root=root,
        uid=uid,
        share_network=not limited,
        limits=Limits.from_settings(),
        env=env,
        package_dir=package_dir,
        ca_bundle=ca_bundle,
        mounts=resource_mounts(session) + skills.mounts,
        repos=repos,
    )
    return spec, limited, slots


def repo_ids(session: Session) -> tuple[str, ...]:
    from files.models import ResourceType, SessionResource

    return tuple(
        SessionResource.objects.filter(session=session, type=ResourceType.GITHUB_REPOSITORY)
        .order_by("created_at", "id")
        .values_list("id", flat=True)
    )


def resource_mounts(session: Session) -> tuple[tuple[str, str], ...]:
    """The session's file resources as read-only mounts (repositories are cloned by `sandboxes.repos`
    when the shell starts)."""
    from files.services import session_resource_mounts

    mounts = []
    for mount in session_resource_mounts(session):
        if mount.type != "file" or mount.source is None:
            continue
        # Stored files are private to the server (0600); the sandbox's user must read the mounted one.
        # The bind is read-only, and only sandboxes the file is attached to can see it.
        os.chmod(mount.source, 0o644)
        mounts.append((str(mount.source), mount.mount_path))
    return tuple(mounts)


def _shell_init(live: LiveSandbox) -> str:
    backend, spec = live.backend, live.spec
    state = backend.state_path(spec)
    egress = backend.egress_path(spec)
    workspace = backend.workspace_path(spec)
    # Below the worker's priority once started: a busy sandbox slows itself before it slows the server.
    lines = [rlimit_shell(spec.limits), "renice -n 10 -p $$ >/dev/null 2>&1 &"]
    if live.limited:
        lines.append(
            f"/usr/bin/python3 -I {egress}/bridge.py {PROXY_PORT} {egress}/egress.sock {state}/bridge.ready"
            " </dev/null >/dev/null 2>&1 &"
        )
        lines.append(
            f"for __i in $(seq 200); do [ -e {state}/bridge.ready ] && break; sleep 0.01; done; unset __i"
        )
    lines.append(
        f'{{ IFS= read -r __galley_cwd < {state}/cwd && cd "$__galley_cwd"; }} 2>/dev/null || cd {workspace}'
    )
    lines.append("unset __galley_cwd")
    lines.append(f"[ -f {state}/env ] && . {state}/env 2>/dev/null")
    # Variables the platform owns win over a restored copy (the environment may have changed since).
    for name in (
        "PATH",
        "PYTHONPATH",
        "NODE_PATH",
        "LD_LIBRARY_PATH",
        "GEM_PATH",
        "MANPATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "HOME",
        "TMPDIR",
    ):
        if name in spec.env:
            lines.append(f"export {name}='{spec.env[name]}'")
    return "\n".join(lines) + "\n"


def _start_shell(live: LiveSandbox) -> Shell:
    spec = live.spec
    if live.claim is None:
        from sandboxes.quota import volume_claim

        # Held until sandbox_stop: no release of leftovers touches this volume or cgroup while the shell runs.
        spec.root.mkdir(parents=True, exist_ok=True)
        live.claim = volume_claim(spec.root)
    sandbox_provision(root=spec.root, uid=spec.uid)
    if spec.repos:
        from sandboxes.repos import repositories_prepare

        # Cloned on the host before the shell starts; raises RepositoryError naming the repository.
        binds = tuple(repositories_prepare(session_id=live.session_id, root=spec.root, uid=spec.uid))
        if binds != spec.binds:
            spec = live.spec = replace(spec, binds=binds)
    for stale in (spec.state / "bridge.ready", spec.egress / "egress.sock", spec.root / RELEASED):
        try:
            stale.unlink()  # never follows a link the sandbox may have planted
        except FileNotFoundError:
            pass
    if live.limited:
        from sandboxes.egress import EgressProxy

        shutil.copyfile(BRIDGE_SOURCE, spec.egress / "bridge.py")
        if live.egress is None:
            live.egress = EgressProxy(session_id=live.session_id, rules=live.rules, slots=live.slots)
        try:
            live.egress.listen(spec.egress / "egress.sock", uid=spec.uid)
        except OSError as exc:
            logger.error("egress proxy socket for %s failed: %s", live.key, exc)
            reason = exc.strerror or exc
            raise SandboxError(f"the sandbox's network proxy could not start ({reason})") from exc
    from sandboxes.quota import volume_is_image

    live.image = volume_is_image(spec.root)
    bwrap = isinstance(live.backend, BwrapBackend)
    if bwrap and live.cgroup is None:
        from sandboxes.cgroup import cgroup_create

        live.cgroup = cgroup_create(
            key=live.key, memory_bytes=spec.limits.memory_bytes, max_processes=spec.limits.max_processes
        )
        if live.cgroup is None or not live.cgroup.charges_sockets:
            # No memory cgroup will charge its socket buffers: the limits that bound them instead.
            spec = live.spec = replace(spec, limits=spec.limits.without_cgroup())
    argv, kwargs = live.backend.command(spec, ["/bin/bash", "--noprofile", "--norc"], rlimits=False)
    shell = Shell(argv, kwargs, live.backend.state_path(spec), init=_shell_init(live))
    if live.cgroup is not None:
        from sandboxes.cgroup import process_tree

        # Before any command: everything a command starts descends from these, so it is counted.
        live.cgroup.attach(process_tree(shell.proc.pid))
    if bwrap and spec.limits.fixed_socket_buffers and not spec.share_network and _backlogs_settable():
        try:
            _limit_backlogs(shell.inner_pid())
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            shell.kill()
            logger.error("could not limit the listen backlog in sandbox %s: %s", live.key, exc)
            raise SandboxError("the sandbox's network limits could not be set (see the server log)") from exc
    return shell


_backlogs_warned = False


def _backlogs_settable() -> bool:
    """Only a worker running as root can enter a sandbox's network namespace to set its backlogs (setns
    needs CAP_SYS_ADMIN in the worker's own user namespace too); elsewhere the sandbox keeps the other
    no-cgroup limits, and the server log says once what it lacks (docs/sandboxes.md)."""
    global _backlogs_warned
    if os.geteuid() == 0:
        return True
    if not _backlogs_warned:
        _backlogs_warned = True
        logger.warning(
            "the worker is not root: sandboxes without a memory cgroup keep the host's listen backlog "
            "(net.core.somaxconn); their socket buffers are bounded by the other limits only"
        )
    return False


def _limit_backlogs(pid: int) -> None:
    """In the sandbox's own network namespace (before any command runs): a listening socket queues at most
    NO_CGROUP_LISTEN_BACKLOG + 1 connections and a datagram socket as many datagrams, each holding at most
    one socket buffer. The worker (root on the host) may set them there; the sandbox may not."""
    from sandboxes.backends import NO_CGROUP_LISTEN_BACKLOG

    def capped(name: str) -> int:  # never above what the host has
        return min(NO_CGROUP_LISTEN_BACKLOG, int(Path(f"/proc/sys/net/{name}").read_text()))

    done = subprocess.run(
        [
            shutil.which("nsenter") or "/usr/bin/nsenter",
            f"--net=/proc/{pid}/ns/net",
            "--",
            shutil.which("sysctl") or "/usr/sbin/sysctl",
            "-q",
            "-w",
            f"net.core.somaxconn={capped('core/somaxconn')}",
            f"net.unix.max_dgram_qlen={capped('unix/max_dgram_qlen')}",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(done.stderr.decode(errors="replace").strip()[:300] or f"exit {done.returncode}")


def sandbox_get(*, session: Session, thread_id: str | None = None) -> LiveSandbox:
    """This worker's live sandbox record for the session (no process is started here)."""
    key = session.id if thread_id is None else f"{session.id}.{thread_id}"
    with _registry_lock:
        _start_reaper()
        live = _registry.get(key)
        created = live is None
        if live is None:
            backend = backend_get()
            spec, limited, slots = sandbox_spec(session=session, key=key, backend=backend)
            live = LiveSandbox(
                key=key, session_id=session.id, spec=spec, backend=backend, limited=limited, slots=slots
            )
            if limited:
                from sandboxes.egress import egress_rules

                live.rules = egress_rules(
                    networking=environment_networking(session), agent_snapshot=session.agent_snapshot or {}
                )
            _registry[key] = live
            sandbox_provision(root=spec.root, uid=spec.uid)
            from memory.mounts import memory_mounts_prepare

            owner = spec.uid if os.geteuid() == 0 else None
            live.spec = replace(
                spec, memory_mounts=memory_mounts_prepare(session_id=session.id, root=spec.root, uid=owner)
            )
    if created:
        return live  # its spec was just built with the current mounts
    mounts = resource_mounts(session) + sandbox_skills(agent=sandbox_agent(session, key)).mounts
    repos = repo_ids(session)
    if mounts != live.spec.mounts or repos != live.spec.repos:
        # Resources were added or removed since the shell started: the next call starts a new shell
        # (cwd and exported variables are restored from the state file) that mounts them.
        with live.lock:
            sandbox_stop(live, keep_volume=True)
            live.spec = replace(live.spec, mounts=mounts, repos=repos)
    return live


def sandbox_running(session_id: str) -> bool:
    """Whether this worker process has a live shell of the session's sandbox."""
    with _registry_lock:
        live = _registry.get(session_id)
    shell = live.shell if live is not None else None
    return shell is not None and shell.alive()


def sandbox_shell(live: LiveSandbox) -> Shell:
    """The live shell, started (or restarted after it died) on demand. Call with live.lock held."""
    if live.shell is None or not live.shell.alive():
        if live.shell is not None:
            live.shell.kill()
        live.shell = _start_shell(live)
        _shell_started.set()
    elif live.image and not _volume_mounted(live):
        # Another worker process stopped its shell of this session and unmounted the volume on the host. This
        # shell still sees it through its own mount namespace; the worker's host-side reads (usage, outputs)
        # need it mounted again (the same image file reuses the same loop device, so one filesystem).
        from sandboxes.quota import volume_provision

        volume_provision(root=live.spec.root, limit=settings.GALLEY_SANDBOX_WORKSPACE_BYTES)
    return live.shell


def _volume_mounted(live: LiveSandbox) -> bool:
    from sandboxes.quota import volume_is_image

    return volume_is_image(live.spec.root)


def sandbox_stop(live: LiveSandbox, *, keep_volume: bool = False) -> None:
    """Kill the shell and the egress proxy and unmount the volume (its files stay in the image). Call with
    live.lock held. `keep_volume` when a new shell follows at once."""
    if live.shell is not None:
        live.shell.kill()
        live.shell = None
    if live.egress is not None:
        live.egress.close()
        live.egress = None
    if live.cgroup is not None:
        live.cgroup.release()
        live.cgroup = None
    if not keep_volume:
        from sandboxes.quota import volume_release

        volume_release(live.spec.root)
        live.image = False
    if live.claim is not None:
        from sandboxes.quota import volume_unclaim

        volume_unclaim(live.claim)
        live.claim = None


def _session_keys(session_id: str, names: Any) -> list[str]:
    return [k for k in names if k == session_id or k.startswith(session_id + ".")]


def sandbox_release(*, session_id: str) -> None:
    """Session terminated: stop its sandboxes (threads' too) in this worker and unmount their volumes on this
    host. Each sandbox root gets a `released` mark, so a shell of the session in another worker process
    stops on that process's next reaper pass. Directories and images stay (the session can be deleted)."""
    with _registry_lock:
        lives = [_registry.pop(k) for k in _session_keys(session_id, list(_registry))]
    for live in lives:
        with live.lock:
            sandbox_stop(live)
    base = Path(settings.GALLEY_SANDBOX_ROOT)
    if not base.is_dir():
        return
    from sandboxes.quota import volume_release

    for name in _session_keys(session_id, os.listdir(base)):
        root = base / name
        if root.is_dir() and not root.is_symlink():
            (root / RELEASED).touch()  # the root is the server's: the sandbox cannot plant a link here
        volume_release(root)


def sandboxes_release_all() -> None:
    """Worker shutdown: stop every sandbox of this process and unmount its volume (no loop device is left
    behind; the next worker mounts the image again)."""
    with _registry_lock:
        lives = list(_registry.values())
        _registry.clear()
    for live in lives:
        with live.lock:
            sandbox_stop(live)


def _owner_alive(owner: str, now: Any, expires: Any) -> bool:
    """Whether a harness lease may still have a step at work: unexpired, and (when it is this host's)
    its process still runs. A lease of a SIGKILLed worker on this host is dead at once."""
    if expires is None or expires < now:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's worker: trust its lease until it expires
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def sandboxes_release_orphans() -> list[str]:
    """Release what a killed worker left on this host: volumes still mounted and cgroups still there (its
    shells died with it: bubblewrap runs with --die-with-parent). A sandbox's leftovers are touched only while
    its volume's claim is taken exclusively (quota.volume_unclaimed): no worker process on this host runs a
    shell of it, none can start one meanwhile (a starting one waits, then sets the volume up again), and any
    process still in its cgroups is an orphan, so it is killed and the cgroups removed. A mounted volume is
    kept while its session (or the thread) has a lease of a live owner: a step of it may start a shell soon,
    and need not mount it again. A terminated session's volume is unmounted; a deleted session's directory
    goes too. Returns the names of the sandboxes released."""
    from sandboxes.cgroup import cgroup_remove, cgroups_left
    from sandboxes.quota import volume_release, volume_unclaimed, volumes_mounted_under

    base = Path(settings.GALLEY_SANDBOX_ROOT)
    mounted = set(volumes_mounted_under(base))
    groups = cgroups_left()
    with _registry_lock:
        ours = {live.key for live in _registry.values()}
    names = ({root.name for root in mounted} | set(groups)) - ours
    if not names:
        return []
    keep, deleted = _volumes_to_keep(names)
    released = []
    for name in sorted(names):
        root = base / name
        if not root.is_dir():
            # Its session was deleted and its directory removed: no worker can start a shell of it (that
            # would make the directory again), so an empty cgroup of it is a leftover. Nothing is killed.
            if name in groups and cgroup_remove(groups[name], kill=False):
                released.append(name)
            continue
        with volume_unclaimed(root) as free:
            if not free:
                continue  # a worker process on this host runs (or is starting) this sandbox
            done = name in groups and cgroup_remove(groups[name], kill=True)
            if root in mounted and name not in keep:
                volume_release(root)
                done = True
                if name.split(".")[0] in deleted and not os.path.ismount(root / "volume"):
                    shutil.rmtree(root, ignore_errors=True)  # its session was deleted meanwhile
            if done:
                released.append(name)
    if released:
        logger.warning("released sandboxes left by a stopped worker: %s", released)
    return released


def _volumes_to_keep(names: set[str]) -> tuple[set[str], set[str]]:
    """Of these sandbox names, those whose session (or thread) has a lease of a live owner and is not
    terminated; and the ids of the sessions that no longer exist."""
    from sessions.models import SessionThread

    session_ids = {name.split(".")[0] for name in names}
    now = timezone.now()
    sessions = {
        pk: (status, owner, expires)
        for pk, status, owner, expires in Session.objects.filter(pk__in=session_ids).values_list(
            "pk", "status", "lease_owner", "lease_expires_at"
        )
    }
    leased_threads = {
        pk
        for pk, owner, expires in SessionThread.objects.filter(
            session_id__in=session_ids, lease_owner__isnull=False
        ).values_list("pk", "lease_owner", "lease_expires_at")
        if owner and _owner_alive(owner, now, expires)
    }
    keep = set()
    for name in names:
        session_id, _, thread_id = name.partition(".")
        found = sessions.get(session_id)
        if found is None or found[0] == "terminated":
            continue
        _status, owner, expires = found
        if thread_id and thread_id in leased_threads:
            keep.add(name)
        elif not thread_id and owner and _owner_alive(owner, now, expires):
            keep.add(name)
    return keep, session_ids - set(sessions)


def _release_orphans_safely(*, own_thread: bool) -> None:
    from django.db import connection

    try:
        sandboxes_release_orphans()
    except Exception:  # a sweep that fails is tried again on the next pass
        logger.exception("releasing leftover sandbox volumes failed")
    finally:
        if own_thread:
            connection.close()  # the reaper's own, opened only when there was something to look up


def sandboxes_sweep_start() -> None:
    """A worker starts: release what a killed worker left on this host, and keep doing so every
    ORPHAN_SWEEP_SECONDS from this process's reaper."""
    global _sweep_orphans
    _sweep_orphans = True
    _release_orphans_safely(own_thread=False)
    with _registry_lock:
        _start_reaper()


def sandbox_destroy(*, session_id: str) -> None:
    """Session deleted: kill its sandboxes in this worker and remove their directories (threads' too)."""
    sandbox_release(session_id=session_id)
    base = Path(settings.GALLEY_SANDBOX_ROOT)
    if not base.is_dir():
        return
    for name in _session_keys(session_id, os.listdir(base)):
        shutil.rmtree(base / name, ignore_errors=True)


def sandbox_reap_idle(idle_seconds: float | None = None) -> int:
    """Stop shells idle longer than the timeout, and shells of sessions released by another process (their
    session was terminated); their directories stay. Returns how many were stopped."""
    limit = settings.GALLEY_SANDBOX_IDLE_SECONDS if idle_seconds is None else idle_seconds
    now = time.monotonic()
    stopped = 0
    with _registry_lock:
        lives = list(_registry.values())
    for live in lives:
        shell = live.shell
        if shell is None:
            continue
        released = (live.spec.root / RELEASED).exists()
        if not released and now - shell.last_used < limit:
            continue
        if not live.lock.acquire(blocking=False):
            continue  # a command is running: not idle
        try:
            if live.shell is None:
                continue
            released = (live.spec.root / RELEASED).exists()
            if released or time.monotonic() - live.shell.last_used >= limit:
                sandbox_stop(live)
                stopped += 1
        finally:
            live.lock.release()
    return stopped


def sandboxes_watch_memory() -> int:
    """For each shell of this process that no memory cgroup bounds (`Limits.without_cgroup` was applied), the
    memory its processes hold (sandboxes/memory.py); past the memory limit the running command is killed (it
    polls `memory_event`), or the shell at once when no command runs. Returns how many were found over."""
    from sandboxes.memory import sandbox_memory_used

    over = 0
    with _registry_lock:
        lives = list(_registry.values())
    for live in lives:
        shell = live.shell
        spec = live.spec
        if shell is None or live.memory_over is not None or not spec.limits.fixed_socket_buffers:
            continue
        limit = spec.limits.memory_bytes
        try:
            used = sandbox_memory_used(shell.inner_pid(), own_network=not spec.share_network, limit=limit)
        except (OSError, RuntimeError, ValueError):
            continue  # the shell ended meanwhile
        if used <= limit or live.shell is not shell:
            continue
        over += 1
        logger.warning(
            "sandbox %s held %d bytes of memory, past its limit of %d: killed", live.key, used, limit
        )
        live.memory_over = used
        live.memory_event.set()
        if live.lock.acquire(blocking=False):  # no command runs: the next one reports it
            try:
                if live.shell is shell:
                    shell.kill()
                    live.shell = None
            finally:
                live.lock.release()
    return over


def sandbox_memory_reset(live: LiveSandbox) -> int | None:
    """The bytes the memory watch found the shell holding past its limit since the last call, if it did
    (the shell is then killed, if the command did not end that way); call with live.lock held."""
    used = live.memory_over
    if used is None:
        return None
    if live.shell is not None:
        live.shell.kill()
        live.shell = None  # the next call starts a new one, restoring cwd and exports
    live.memory_over = None
    live.memory_event.clear()
    return used

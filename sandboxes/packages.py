"""Environment packages: pip, npm, apt, cargo, gem and go lists built once per distinct configuration into a
cached, read-only prefix.

The prefix `GALLEY_PACKAGES_ROOT/<key>/` (key = hash of the lists) holds one directory per manager: `pip/`
(`pip install --target`), `npm/` (`npm install --prefix`), `apt/` (Debian packages and the dependencies the
host lacks, unpacked with `dpkg-deb -x`: no maintainer scripts, no root), `cargo/` (`cargo install --root`),
`gem/` (`gem install --install-dir`) and `go/` (`go install` with GOBIN there). It is built inside a
bubblewrap sandbox with no network of its own: its traffic goes through an egress proxy that allows only the
package registries (installers run arbitrary code). Only a complete build is renamed into place, so nothing
half-installed is ever mounted; it is mounted read-only at /opt/galley/packages in every sandbox of the
environment, with PATH, LD_LIBRARY_PATH and friends set (`prefix_environment`).
"""

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import BuildStatus, Environment
from api.errors import ApiError

logger = logging.getLogger(__name__)

MANAGERS = ("pip", "npm", "apt", "cargo", "gem", "go")
# What each manager accepts: a name with an optional version pin in that manager's syntax. Never an option
# (a leading '-') and never whitespace.
SPECS = {
    "pip": re.compile(r"^[A-Za-z0-9@._/\[\],<>=!~^*:+-]{1,256}$"),
    "npm": re.compile(r"^[A-Za-z0-9@._/\[\],<>=!~^*:+-]{1,256}$"),
    "apt": re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}(=[A-Za-z0-9.+~:-]{1,64})?$"),
    "cargo": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}(@[A-Za-z0-9.+^~<>=*-]{1,64})?$"),
    "gem": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}([:=@][A-Za-z0-9.<>=~! -]{1,64})?$"),
    "go": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~/-]{0,255}(@[A-Za-z0-9._+-]{1,64})?$"),
}
PIN_HINTS = {
    "pip": "name or name==1.2.3",
    "npm": "name or name@1.2.3",
    "apt": "name or name=1.2.3",
    "cargo": "name or name@1.2.3",
    "gem": "name or name=1.2.3",
    "go": "module/path/cmd or module/path/cmd@v1.2.3",
}
# The host tool each manager needs; sandboxes see only the host's /usr, so it must be installed there.
TOOLCHAINS = {"apt": "apt-get", "cargo": "cargo", "gem": "gem", "go": "go"}
BUILD_TIMEOUT_SECONDS = 900
LOG_LIMIT = 64 * 1024
BUILD_PROXY_PORT = 3128


class BuildError(Exception):
    """A build that cannot start or finish; its message goes to the build log."""


def validate_packages(packages: dict[str, Any] | None) -> None:
    """Raise a 400 naming the field for a package list or spec this server cannot install."""
    if not packages:
        return
    for manager in MANAGERS:
        entries = packages.get(manager) or []
        if not isinstance(entries, list):
            raise ApiError(400, f"config.packages.{manager}: must be a list of strings")
        for index, entry in enumerate(entries):
            if not isinstance(entry, str) or entry.startswith("-") or not SPECS[manager].match(entry):
                raise ApiError(
                    400,
                    f"config.packages.{manager}[{index}]: {entry!r} is not a package name "
                    f"(expected {PIN_HINTS[manager]})",
                    details={"field": f"config.packages.{manager}[{index}]"},
                )


def package_lists(environment: Environment) -> dict[str, list[str]]:
    packages = (environment.config or {}).get("packages") or {}
    return {manager: list(packages.get(manager) or []) for manager in MANAGERS}


def package_key(lists: dict[str, list[str]]) -> str | None:
    if not any(lists.values()):
        return None
    # Lists of pip and npm only keep the key they had before the other managers existed.
    keyed = {m: v for m, v in lists.items() if v or m in ("pip", "npm")}
    blob = json.dumps({"lists": keyed, "python": python_site_dir(), "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def python_site_dir() -> str:
    """The sandbox python's lib directory name: part of the cache key, since built wheels depend on it."""
    return _site_dir_cache or _probe_site_dir()


_site_dir_cache = ""


def _probe_site_dir() -> str:
    global _site_dir_cache
    try:
        out = subprocess.run(
            [
                "/usr/bin/python3",
                "-I",
                "-c",
                "import sys; print(f'lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages')",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    _site_dir_cache = out
    return out


def package_dir_for(environment: Environment) -> Path | None:
    """The built prefix to mount for this environment, or None when it has no packages or no build yet."""
    key = package_key(package_lists(environment))
    if key is None:
        return None
    path = Path(settings.GALLEY_PACKAGES_ROOT) / key
    return path if path.is_dir() else None


def package_prefix_summary(environment: Environment) -> dict[str, Any] | None:
    """The built prefix's key and size on disk, per manager, for the console (None before a build)."""
    path = package_dir_for(environment)
    if path is None:
        return None
    managers = []
    for manager in MANAGERS:
        total = 0
        for top, _dirs, names in os.walk(path / manager):
            for name in names:
                try:
                    total += os.lstat(os.path.join(top, name)).st_blocks * 512
                except OSError:
                    pass
        if total:
            managers.append((manager, total))
    return {"key": path.name[:12], "size": sum(size for _, size in managers), "managers": managers}


def packages_request_build(*, environment: Environment) -> None:
    """Mark the environment building (or ready when nothing to build) and enqueue the build after commit."""
    key = package_key(package_lists(environment))
    ready = key is None or (Path(settings.GALLEY_PACKAGES_ROOT) / key).is_dir()
    status = BuildStatus.READY if ready else BuildStatus.BUILDING
    Environment.objects.filter(pk=environment.pk).update(
        build_status=status, build_log="" if not ready else environment.build_log
    )
    environment.build_status = status
    if not ready:
        from sandboxes.tasks import build_environment_packages

        env_id = environment.pk
        transaction.on_commit(lambda: build_environment_packages.delay(env_id))


def packages_build(*, environment_id: str) -> str:
    """Build the environment's prefix (if not cached) and record the outcome. Returns the final status."""
    environment = Environment.objects.get(pk=environment_id)
    lists = package_lists(environment)
    key = package_key(lists)
    if key is None:
        _finish(environment_id, BuildStatus.READY, "no packages\n")
        return BuildStatus.READY
    root = Path(settings.GALLEY_PACKAGES_ROOT)
    final = root / key
    if final.is_dir():
        _finish(environment_id, BuildStatus.READY, f"cached build {key}\n")
        return BuildStatus.READY
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    staging = root / f".build-{key}-{os.getpid()}-{int(time.time() * 1000)}"
    log: list[str] = []
    ok = False
    try:
        ok = _build_into(staging, lists, log)
        if ok:
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # another worker won the race: theirs is as good as ours
                    raise
    except Exception as exc:  # a build failure is a status, never a crash of the worker
        logger.exception("package build failed")
        log.append(f"build error: {exc}\n")
        ok = False
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    status = BuildStatus.READY if ok else BuildStatus.FAILED
    _finish(environment_id, status, "".join(log))
    return status


def _finish(environment_id: str, status: str, log: str) -> None:
    if len(log) > LOG_LIMIT:
        log = log[: LOG_LIMIT // 2] + "\n[log truncated]\n" + log[-LOG_LIMIT // 2 :]
    Environment.objects.filter(pk=environment_id).update(
        build_status=status, build_log=log, updated_at=timezone.now()
    )


def multiarch() -> str:
    """The Debian multiarch triplet of this host (where unpacked libraries live)."""
    machine = platform.machine()
    return {
        "x86_64": "x86_64-linux-gnu",
        "aarch64": "aarch64-linux-gnu",
        "armv7l": "arm-linux-gnueabihf",
    }.get(machine, f"{machine}-linux-gnu")


def prefix_environment(prefix: str, path: str) -> dict[str, str]:
    """The variables that make a built prefix usable inside a sandbox (`prefix` as seen inside)."""
    apt = f"{prefix}/apt"
    triplet = multiarch()
    bins = [
        f"{prefix}/pip/bin",
        f"{prefix}/npm/node_modules/.bin",
        f"{apt}/usr/local/bin",
        f"{apt}/usr/bin",
        f"{apt}/bin",
        f"{apt}/usr/sbin",
        f"{prefix}/cargo/bin",
        f"{prefix}/gem/bin",
        f"{prefix}/go/bin",
    ]
    libs = [f"{apt}/usr/lib/{triplet}", f"{apt}/lib/{triplet}", f"{apt}/usr/lib", f"{apt}/lib"]
    return {
        "PATH": ":".join([*bins, path]),
        "PYTHONPATH": f"{prefix}/pip",
        "NODE_PATH": f"{prefix}/npm/node_modules",
        "LD_LIBRARY_PATH": ":".join(libs),
        "GEM_PATH": f"{prefix}/gem",
        "MANPATH": f"{apt}/usr/share/man",
    }


def _toolchain(manager: str) -> str:
    """The host tool for a manager, from the system directories sandboxes see; BuildError naming it."""
    tool = TOOLCHAINS[manager]
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        candidate = Path(directory) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(tool)
    if found:
        raise BuildError(
            f"{manager} packages need {tool}, which this worker has only at {found}, outside the system "
            f"directories sandboxes see (/usr); install {tool} system-wide on the worker host"
        )
    debian = {"go": "golang-go", "gem": "ruby"}.get(tool, tool)
    raise BuildError(
        f"{manager} packages need {tool}, which is not installed on this worker host; install it "
        f"(Debian/Ubuntu: apt-get install {debian})"
    )


def _apt_downloads(specs: list[str], log: list[str]) -> list[str]:
    """What to download: the named packages, and their dependencies that the host does not have installed
    (the sandbox sees the host's /usr, so those are there already). Resolved with the host's package lists."""
    names = [spec.split("=", 1)[0] for spec in specs]
    done = subprocess.run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            "--",
            *names,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        reason = done.stderr.strip() or "unknown package"
        hint = "the worker's package lists may need apt-get update"
        raise BuildError(f"apt: cannot resolve {', '.join(names)}: {reason} ({hint})")
    wanted = sorted(
        {line.strip() for line in done.stdout.splitlines() if line and not line.startswith((" ", "<"))}
    )
    missing = [n for n in names if n not in wanted]
    if missing:
        raise BuildError(f"apt: unknown package {missing[0]!r}")
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *wanted], capture_output=True, text=True
    )
    installed = {
        line.split()[0] for line in status.stdout.splitlines() if line.endswith(" installed") and line.split()
    }
    deps = [n for n in wanted if n not in names and n not in installed]
    log.append(f"apt: {', '.join(specs)}" + (f" with dependencies {', '.join(deps)}\n" if deps else "\n"))
    return [*specs, *deps]


def _build_commands(prefix: str, lists: dict[str, list[str]], log: list[str]) -> list[list[str]]:
    commands: list[list[str]] = []
    if lists["pip"]:
        cmd = [
            "/usr/bin/python3",
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--break-system-packages",
            "--target",
            f"{prefix}/pip",
        ]
        if settings.GALLEY_PIP_INDEX_URL:
            cmd += ["--index-url", settings.GALLEY_PIP_INDEX_URL]
        commands.append(cmd + ["--", *lists["pip"]])
    if lists["npm"]:
        npm = shutil.which("npm") or "/usr/bin/npm"
        cmd = [
            npm,
            "install",
            "--prefix",
            f"{prefix}/npm",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--no-package-lock",
        ]
        if settings.GALLEY_NPM_REGISTRY:
            cmd += ["--registry", settings.GALLEY_NPM_REGISTRY]
        commands.append(cmd + lists["npm"])
    if lists["apt"]:
        apt_get = _toolchain("apt")
        downloads = _apt_downloads(lists["apt"], log)
        script = (
            'set -e; mkdir -p /tmp/debs /tmp/apt-cache/archives/partial; cd /tmp/debs; "$0" -q '
            "-o Debug::NoLocking=1 -o Dir::Cache=/tmp/apt-cache -o Dir::Cache::pkgcache= "
            '-o Dir::Cache::srcpkgcache= -o APT::Sandbox::User= download -- "$@"; '
            f'for deb in *.deb; do echo "unpack $deb"; dpkg-deb -x "$deb" {prefix}/apt; done'
        )
        commands.append(["/bin/bash", "-c", script, apt_get, *downloads])
    if lists["cargo"]:
        cargo = _toolchain("cargo")
        for spec in lists["cargo"]:
            name, _, version = spec.partition("@")
            cmd = [cargo, "install", "--locked", "--root", f"{prefix}/cargo", name]
            if settings.GALLEY_CARGO_INDEX:
                cmd += ["--index", settings.GALLEY_CARGO_INDEX]
            commands.append(cmd + (["--version", version] if version else []))
    if lists["gem"]:
        gem = _toolchain("gem")
        source = settings.GALLEY_GEM_SOURCE
        for spec in lists["gem"]:
            name, version = re.split(r"[:=@]", spec, maxsplit=1) if re.search(r"[:=@]", spec) else (spec, "")
            cmd = [
                gem,
                "install",
                *(["--clear-sources", "--source", source] if source else []),
                "--no-document",
                "--install-dir",
                f"{prefix}/gem",
                "--bindir",
                f"{prefix}/gem/bin",
            ]
            commands.append(cmd + [name] + (["--version", version.strip()] if version else []))
    if lists["go"]:
        go = _toolchain("go")
        for spec in lists["go"]:
            commands.append([go, "install", spec if "@" in spec else f"{spec}@latest"])
    return commands


def _build_into(staging: Path, lists: dict[str, list[str]], log: list[str]) -> bool:
    lists = {manager: list(lists.get(manager, ())) for manager in MANAGERS}  # callers name only theirs
    from sandboxes.backends import BwrapBackend, Limits, SandboxSpec, backend_get, sandbox_uid
    from sandboxes.cgroup import cgroup_create
    from sandboxes.egress import PACKAGE_REGISTRIES, EgressProxy, EgressRules
    from sandboxes.quota import volume_claim, volume_path, volume_unclaim
    from sandboxes.services import BRIDGE_SOURCE, sandbox_provision

    backend = backend_get()
    uid = sandbox_uid("build:" + staging.name) if os.geteuid() == 0 else os.geteuid()
    staging.mkdir(parents=True)
    for manager in ("", *MANAGERS):
        path = staging / manager
        path.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, uid, uid)
    # A short name: the proxy's Unix socket lives below it, and socket paths are limited to ~108 bytes.
    short = hashlib.sha256(staging.name.encode()).hexdigest()[:12]
    build_root = Path(settings.GALLEY_SANDBOX_ROOT) / f"_b.{short}"
    sandbox_provision(root=build_root, uid=uid, quota=False)  # a build's size is bounded by its own limits
    limits = Limits.from_settings()
    # Claimed like a session's volume while the build runs: the sweep for a killed worker's leftovers then
    # leaves this build's cgroup alone (and removes it, killing what is left, once the claim is gone).
    claim = volume_claim(build_root)
    group: Any = None
    egress: Any = None
    try:
        # The same memory and process bounds as a session's sandbox: a cgroup for the build as a whole where
        # the host gives one, else the no-cgroup limits and the memory watch of `_run_bounded`.
        if isinstance(backend, BwrapBackend):
            group = cgroup_create(
                key=f"_b.{short}", memory_bytes=limits.memory_bytes, max_processes=limits.max_processes
            )
            if group is None or not group.charges_sockets:
                limits = limits.without_cgroup()
        probe = SandboxSpec(root=build_root, uid=uid, share_network=False, limits=limits)
        prefix = backend.packages_path(
            SandboxSpec(root=build_root, uid=uid, share_network=False, limits=limits, package_dir=staging)
        )
        proxy = f"http://127.0.0.1:{BUILD_PROXY_PORT}"
        env = {
            "HOME": backend.workspace_path(probe),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "GOBIN": f"{prefix}/go/bin",
            "GOPATH": "/tmp/go",
            "GOMODCACHE": "/tmp/go/mod",
            "GOFLAGS": "-modcacherw",
            "GOCACHE": "/tmp/go/cache",
            "CARGO_HOME": "/tmp/cargo",
            "GEM_HOME": f"{prefix}/gem",
        }
        if settings.GALLEY_GOPROXY:
            env["GOPROXY"] = settings.GALLEY_GOPROXY
        if settings.GALLEY_GOSUMDB:
            env["GOSUMDB"] = settings.GALLEY_GOSUMDB
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = proxy
        env["NO_PROXY"] = env["no_proxy"] = (
            ""  # registries on this host (tests, mirrors) go through the proxy too
        )
        # apt reads the host's package lists and configuration; everything else stays out of the build.
        mounts = tuple(
            (d, d)
            for d in ("/etc/apt", "/var/lib/apt/lists", "/var/lib/dpkg")
            if lists["apt"] and Path(d).is_dir()
        )
        spec = SandboxSpec(
            root=build_root,
            uid=uid,
            share_network=False,
            limits=limits,
            package_dir=staging,
            writable_packages=True,
            env=env,
            mounts=mounts,
        )
        try:
            commands = _build_commands(prefix, lists, log)
        except BuildError as exc:
            log.append(f"{exc}\n")
            return False
        # Only the package registries, including the ones this server is configured with.
        configured = configured_registry_hosts()
        # Named registries are trusted to resolve where their operator says (a mirror may sit on a private
        # network); nothing else is reachable.
        registries = tuple([*PACKAGE_REGISTRIES, *configured])
        rules = EgressRules(allowed_hosts=registries, registries=registries)
        shutil.copyfile(BRIDGE_SOURCE, spec.egress / "bridge.py")
        egress = EgressProxy(session_id=f"build-{staging.name}", rules=rules, repositories=False)
        egress.listen(spec.egress / "egress.sock", uid=uid)
        inside = backend.egress_path(spec)
        state = backend.state_path(spec)
        # Nothing runs before the build's processes are in its cgroup: the command waits for `started`.
        bridge = (
            f": > {state}/waiting; "
            f"for i in $(seq 1000); do [ -e {state}/started ] && break; sleep 0.005; done; "
            f"/usr/bin/python3 -I {inside}/bridge.py {BUILD_PROXY_PORT} {inside}/egress.sock "
            f"{state}/bridge.ready </dev/null >/dev/null 2>&1 & "
            f"for i in $(seq 500); do [ -e {state}/bridge.ready ] && break; "
            'sleep 0.01; done; exec "$@"'
        )
        for cmd in commands:
            log.append("$ " + " ".join(cmd) + "\n")
            for name in ("bridge.ready", "waiting", "started"):  # each command starts its own bridge
                (spec.state / name).unlink(missing_ok=True)
            argv, kwargs = backend.command(spec, ["/bin/bash", "-c", bridge, "build", *cmd])
            code, output = _run_bounded(
                argv, kwargs, spec, group, log, writes=(staging, volume_path(build_root))
            )
            log.append(output)
            denials, dropped = egress.drain_denials()
            for host, reason in denials:
                log.append(f"egress refused: {host}: {reason}\n")
            if dropped:
                log.append(f"egress refused {dropped} more connection(s) not listed\n")
            if code is None:
                return False
            if code != 0:
                if group is not None and group.memory_limit_hit():
                    log.append(
                        f"the build's processes reached its memory limit of {limits.memory_bytes} bytes "
                        "(GALLEY_SANDBOX_MEMORY_BYTES)\n"
                    )
                log.append(f"exit code {code}\n")
                return False
        log.append("build succeeded\n")
        return True
    finally:
        if egress is not None:
            egress.close()
        if group is not None:
            group.release()
        volume_unclaim(claim)
        shutil.rmtree(build_root, ignore_errors=True)


BUILD_DISK_WATCH_SECONDS = 1.0  # a walk of the prefix and the build's own files


def _run_bounded(
    argv: list[str],
    kwargs: dict[str, Any],
    spec: Any,
    group: Any,
    log: list[str],
    *,
    writes: tuple[Path, ...],
) -> tuple[int | None, str]:
    """Run one build command to its end: (exit code, output), or (None, output) when it was stopped (the
    time limit, the bytes written under `writes` past GALLEY_PACKAGES_BUILD_BYTES, or the memory watch of a
    build no cgroup bounds), the reason appended to `log`."""
    import tempfile

    from sandboxes.backends import spawn_done
    from sandboxes.cgroup import process_tree
    from sandboxes.memory import sandbox_memory_used
    from sandboxes.quota import walk_bytes
    from sandboxes.services import MEMORY_WATCH_SECONDS
    from sandboxes.shell import inner_pid, kill_sandbox

    limit = spec.limits.memory_bytes
    disk_limit = settings.GALLEY_PACKAGES_BUILD_BYTES
    next_disk_check = time.monotonic() + BUILD_DISK_WATCH_SECONDS

    def over_disk() -> str | None:
        written = sum(walk_bytes(path, stop_after=disk_limit) for path in writes)
        if written <= disk_limit:
            return None
        return (
            f"the build wrote {written} bytes, past its limit of {disk_limit} bytes "
            "(GALLEY_PACKAGES_BUILD_BYTES)\n"
        )

    with tempfile.TemporaryFile() as out:  # a file, not a pipe: nothing to drain while we watch
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs
        )
        spawn_done(kwargs)
        code, stopped = None, None
        try:
            if group is not None:
                # Once the command waits (its processes made), every later one descends from those attached.
                waited = time.monotonic() + 5
                while (
                    not (spec.state / "waiting").exists()
                    and proc.poll() is None
                    and time.monotonic() < waited
                ):
                    time.sleep(0.002)
                group.attach(process_tree(proc.pid))
            (spec.state / "started").touch()
            deadline = time.monotonic() + BUILD_TIMEOUT_SECONDS
            while code is None:
                try:
                    code = proc.wait(timeout=MEMORY_WATCH_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now > deadline:
                    stopped = f"timed out after {BUILD_TIMEOUT_SECONDS}s\n"
                elif now > next_disk_check:
                    next_disk_check = now + BUILD_DISK_WATCH_SECONDS
                    over = over_disk()
                    stopped = f"killed: {over}" if over else None
                if not stopped and group is None and spec.limits.fixed_socket_buffers:
                    try:
                        used = sandbox_memory_used(inner_pid(proc), own_network=True, limit=limit)
                    except (OSError, RuntimeError, ValueError):
                        used = 0  # it ended meanwhile
                    if used > limit:
                        stopped = (
                            f"killed: the build's processes held {used} bytes, past its memory limit of "
                            f"{limit} bytes (GALLEY_SANDBOX_MEMORY_BYTES)\n"
                        )
                if stopped:
                    kill_sandbox(proc)
                    break
            if code == 0:  # the last write may have come after the last look
                stopped = over_disk()
        finally:
            if proc.poll() is None:
                kill_sandbox(proc)
        size = out.tell()
        out.seek(0)
        if size <= LOG_LIMIT:
            output = out.read().decode(errors="replace")
        else:  # the log keeps a head and a tail anyway (`_finish`)
            head = out.read(LOG_LIMIT // 2)
            out.seek(size - LOG_LIMIT // 2)
            output = (head + b"\n[output truncated]\n" + out.read()).decode(errors="replace")
    if stopped:
        log.append(output)
        log.append(stopped)
        return None, ""
    return code, output


def configured_registry_hosts() -> list[str]:
    """Hosts of the package mirrors this server is configured with (allowed wherever registries are)."""
    from urllib.parse import urlsplit

    hosts = []
    for url in (
        settings.GALLEY_PIP_INDEX_URL,
        settings.GALLEY_NPM_REGISTRY,
        settings.GALLEY_GEM_SOURCE,
        settings.GALLEY_GOPROXY,
        settings.GALLEY_CARGO_INDEX,
    ):
        for part in (url or "").split(","):
            host = urlsplit(part.strip().removeprefix("sparse+")).hostname
            if host:
                hosts.append(host.lower())
    return hosts


def packages_wait(*, environment_id: str, timeout: float, cancel: Any = None) -> str:
    """Block until the environment's build leaves `building` (or the timeout). Returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = Environment.objects.filter(pk=environment_id).values_list("build_status", flat=True).first()
        if status != BuildStatus.BUILDING or time.monotonic() >= deadline:
            return status or BuildStatus.FAILED
        if cancel is not None and cancel.wait(0.5):
            return status
        if cancel is None:
            time.sleep(0.5)

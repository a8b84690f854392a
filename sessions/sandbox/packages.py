"""Environment packages: pip and npm lists built once per distinct list into a cached prefix.

The prefix `GALLEY_PACKAGES_ROOT/<key>/` (key = hash of the lists) holds `pip/` (a `pip install --target`) and
`npm/` (an `npm install --prefix`). It is built inside a bubblewrap sandbox with the host network (installers
run arbitrary code), then mounted read-only at /opt/galley/packages in every sandbox of the environment. apt,
cargo, gem and go are refused at environment creation: they need root inside the image or toolchains we do not
ship.
"""

import hashlib
import json
import logging
import os
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
from console.errors import ApiError

logger = logging.getLogger(__name__)

SUPPORTED = ("pip", "npm")
UNSUPPORTED = ("apt", "cargo", "gem", "go")
# A package spec in pip or npm syntax; never an option (a leading '-') and never whitespace.
SPEC = re.compile(r"^[A-Za-z0-9@._/\[\],<>=!~^*:+-]{1,256}$")
BUILD_TIMEOUT_SECONDS = 900
LOG_LIMIT = 64 * 1024


def validate_packages(packages: dict[str, Any] | None) -> None:
    """Raise a 400 naming the field for package lists this server cannot install."""
    if not packages:
        return
    for manager in UNSUPPORTED:
        if packages.get(manager):
            raise ApiError(
                400,
                f"config.packages.{manager}: {manager} packages are not supported by this server's sandboxes "
                f"(supported: {', '.join(SUPPORTED)})",
                details={"field": f"config.packages.{manager}"},
            )
    for manager in SUPPORTED:
        entries = packages.get(manager) or []
        if not isinstance(entries, list):
            raise ApiError(400, f"config.packages.{manager}: must be a list of strings")
        for index, entry in enumerate(entries):
            if not isinstance(entry, str) or entry.startswith("-") or not SPEC.match(entry):
                raise ApiError(
                    400,
                    f"config.packages.{manager}[{index}]: {entry!r} is not a package name "
                    "(a name with an optional version in the manager's syntax)",
                )


def package_lists(environment: Environment) -> dict[str, list[str]]:
    packages = (environment.config or {}).get("packages") or {}
    return {manager: list(packages.get(manager) or []) for manager in SUPPORTED}


def package_key(lists: dict[str, list[str]]) -> str | None:
    if not any(lists.values()):
        return None
    blob = json.dumps({"lists": lists, "python": python_site_dir(), "v": 1}, sort_keys=True)
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
        from sessions.sandbox.tasks import build_environment_packages

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


def _build_into(staging: Path, lists: dict[str, list[str]], log: list[str]) -> bool:
    from sessions.sandbox.backends import Limits, SandboxSpec, backend_get, sandbox_uid, spawn_done
    from sessions.sandbox.services import sandbox_provision

    backend = backend_get()
    uid = sandbox_uid("build:" + staging.name) if os.geteuid() == 0 else os.geteuid()
    staging.mkdir(parents=True)
    (staging / "pip").mkdir()
    (staging / "npm").mkdir()
    if os.geteuid() == 0:
        for path in (staging, staging / "pip", staging / "npm"):
            os.chown(path, uid, uid)
    build_root = Path(settings.GALLEY_SANDBOX_ROOT) / f"_build.{staging.name.lstrip('.')}"
    sandbox_provision(root=build_root, uid=uid, quota=False)  # a build's size is bounded by its own limits
    limits = Limits.from_settings()
    spec = SandboxSpec(
        root=build_root,
        uid=uid,
        share_network=True,
        limits=limits,
        package_dir=staging,
        writable_packages=True,
        env={
            "HOME": backend.workspace_path(
                SandboxSpec(root=build_root, uid=uid, share_network=True, limits=limits)
            ),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
        },
    )
    prefix = backend.packages_path(spec)
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
    try:
        for cmd in commands:
            log.append("$ " + " ".join(cmd) + "\n")
            argv, kwargs = backend.command(spec, cmd)
            try:
                done = subprocess.run(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=BUILD_TIMEOUT_SECONDS,
                    **kwargs,
                )
            except subprocess.TimeoutExpired:
                log.append(f"timed out after {BUILD_TIMEOUT_SECONDS}s\n")
                return False
            finally:
                spawn_done(kwargs)
            log.append(done.stdout.decode(errors="replace"))
            if done.returncode != 0:
                log.append(f"exit code {done.returncode}\n")
                return False
        log.append("build succeeded\n")
        return True
    finally:
        shutil.rmtree(build_root, ignore_errors=True)


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

"""Repository resources: cloned on the host, outside the sandbox; git traffic authorized by the egress proxy.

A `github_repository` resource is cloned by the worker (never inside the sandbox) before the sandbox's shell
starts, at the requested checkout, shallow by default, then handed to the sandbox user. The clone carries
no credential: `.git/config` names the plain URL, and the token is passed to the host's git only through
its environment (`GIT_CONFIG_*`, invisible to other users). Inside the sandbox, `git fetch`, `pull` and
`push` reach the repository through the egress proxy, which adds the token only to requests for an
attached repository's host and path, reading it at the moment of use (so a rotated token takes effect on
the next git operation).

Allowed hosts: github.com, plus what an administrator lists in GALLEY_GIT_HOSTS (`host[:port]`). Git
traffic to a listed host passes the proxy even when the host has a private or loopback address (a company
server on the internal network). Plain `http://` URLs are accepted only for listed hosts.
"""

import base64
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

DEFAULT_HOSTS = ("github.com",)
CLONE_TIMEOUT_SECONDS = 600
WORKSPACE = "/workspace"


class RepositoryError(Exception):
    """A clone that failed: `kind` is the spec's error type suffix (clone, checkout, authentication...)."""

    def __init__(self, kind: str, url: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url

    @property
    def error_type(self) -> str:
        return f"repository_{self.kind}_error"


@dataclass(frozen=True)
class RepoTarget:
    """Where an attached repository lives, for the proxy's per-request decision."""

    resource_id: str
    scheme: str
    host: str
    port: int
    path: str  # "/owner/repo", without ".git"

    def matches(self, *, host: str, port: int, path: str) -> bool:
        if host.lower().rstrip(".") != self.host or port != self.port:
            return False
        bare = path.split("?", 1)[0]
        for prefix in (self.path + ".git", self.path):
            if bare == prefix or bare.startswith(prefix + "/"):
                return True
        return False


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    path = "/" + "/".join(s for s in parts.path.split("/") if s)
    return scheme, (parts.hostname or "").lower().rstrip("."), port, path.removesuffix(".git")


def listed_hosts() -> list[tuple[str, int | None]]:
    """GALLEY_GIT_HOSTS as (host, port or None for any port)."""
    out: list[tuple[str, int | None]] = []
    for entry in settings.GALLEY_GIT_HOSTS:
        entry = entry.strip().lower()
        if not entry:
            continue
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        out.append((host.strip("[]"), int(port) if port.isdigit() else None))
    return out


def is_listed(host: str, port: int) -> bool:
    host = host.lower().rstrip(".").strip("[]")
    return any(h == host and (p is None or p == port) for h, p in listed_hosts())


def url_problem(url: str) -> str | None:
    """Why this repository URL may not be attached here, or None. For 400s at create time."""
    scheme, host, port, _ = _split(url)
    if is_listed(host, port):
        return None
    if scheme != "https":
        return "must be an https:// URL (plain http is allowed only for hosts listed in GALLEY_GIT_HOSTS)"
    if host not in DEFAULT_HOSTS:
        allowed = ", ".join([*DEFAULT_HOSTS, *(f"{h}:{p}" if p else h for h, p in listed_hosts())])
        return f"host {host!r} is not allowed for repositories on this server (allowed: {allowed})"
    return None


def session_targets(session_id: str) -> list[RepoTarget]:
    """The session's attached repositories (read when asked, so resources added later count). Called from
    the egress proxy's threads, which are not request threads: the connection is closed after use."""
    from files.models import ResourceType, SessionResource

    try:
        rows = list(
            SessionResource.objects.filter(
                session_id=session_id, type=ResourceType.GITHUB_REPOSITORY
            ).values_list("id", "url")
        )
    finally:
        connection.close()
    targets = []
    for resource_id, url in rows:
        scheme, host, port, path = _split(url or "")
        if host:
            targets.append(RepoTarget(resource_id, scheme, host, port, path))
    return targets


def target_token(resource_id: str) -> str | None:
    """Decrypt the resource's token at the moment of use (rotation takes effect on the next request)."""
    from files.models import SessionResource
    from files.services import session_resource_token

    try:
        resource = SessionResource.objects.filter(pk=resource_id).first()
        return session_resource_token(resource) if resource is not None else None
    finally:
        connection.close()


def auth_header(token: str) -> str:
    """HTTP Basic with the token as password: what GitHub, GitLab and Gitea accept for git over HTTPS."""
    raw = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return f"Authorization: Basic {raw}"


# --- cloning ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clone:
    resource_id: str
    url: str
    checkout: dict[str, str] | None
    mount_path: str


def session_clones(session_id: str) -> list[Clone]:
    from files.models import ResourceType, SessionResource

    rows = SessionResource.objects.filter(
        session_id=session_id, type=ResourceType.GITHUB_REPOSITORY
    ).order_by("created_at", "id")
    return [Clone(r.id, r.url or "", r.checkout, r.mount_path) for r in rows]


def _git_env(home: Path, token: str | None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ASKPASS": "/bin/false",
    }
    if settings.GALLEY_EGRESS_UPSTREAM_CA_FILE:
        # The CA the egress proxy trusts upstream is the one git servers are checked against here too.
        env["GIT_SSL_CAINFO"] = settings.GALLEY_EGRESS_UPSTREAM_CA_FILE
    if token:
        # The token lives only in this process's environment, never in argv or a file.
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": auth_header(token),
            }
        )
    return env


def _classify(url: str, output: str, *, checkout: str | None) -> RepositoryError:
    text = output.lower()
    tail = output.strip().splitlines()[-1] if output.strip() else "git failed"
    if "authentication failed" in text or " 401" in text or "could not read username" in text:
        return RepositoryError("authentication", url, f"authentication failed for {url}: {tail}")
    if " 403" in text or "forbidden" in text:
        return RepositoryError("forbidden", url, f"access to {url} is forbidden: {tail}")
    if checkout and ("remote branch" in text and "not found" in text or "couldn't find remote ref" in text):
        return RepositoryError("checkout", url, f"{checkout} was not found in {url}: {tail}")
    if "not found" in text or " 404" in text or "does not appear to be a git repository" in text:
        return RepositoryError("not_found", url, f"repository {url} was not found: {tail}")
    return RepositoryError("clone", url, f"cloning {url} failed: {tail}")


def _git(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(
            ["git", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=CLONE_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        return 127, "git is not installed on this worker"
    except subprocess.TimeoutExpired:
        return 124, f"git timed out after {CLONE_TIMEOUT_SECONDS}s"
    return done.returncode, done.stdout.decode(errors="replace")


def clone_into(*, clone: Clone, dest: Path, token: str | None) -> None:
    """Clone at the checkout into dest (which must not exist). Raises RepositoryError."""
    home = Path(tempfile.mkdtemp(prefix="galley-git-"))
    try:
        env = _git_env(home, token)
        url, checkout = clone.url, clone.checkout or {}
        if checkout.get("type") == "commit":
            sha = checkout["sha"]
            for args in (["init", "-q", str(dest)], ["-C", str(dest), "remote", "add", "origin", url]):
                code, out = _git(args, env)
                if code:
                    raise _classify(url, out, checkout=None)
            code, out = _git(["-C", str(dest), "fetch", "-q", "--depth", "1", "origin", sha], env)
            if code:
                # Servers that refuse a fetch by commit id: the whole history, then the commit.
                code, out = _git(["-C", str(dest), "fetch", "-q", "origin"], env)
                if code:
                    raise _classify(url, out, checkout=None)
                code, out = _git(["-C", str(dest), "checkout", "-q", "--detach", sha], env)
                if code:
                    raise RepositoryError("checkout", url, f"commit {sha} was not found in {url}")
            else:
                code, out = _git(["-C", str(dest), "checkout", "-q", "--detach", "FETCH_HEAD"], env)
                if code:
                    raise RepositoryError("checkout", url, f"checking out commit {sha} of {url} failed")
            return
        args = ["clone", "-q", "--depth", "1", "--no-single-branch"]
        if checkout.get("type") == "branch":
            args += ["--branch", checkout["name"]]
        code, out = _git([*args, "--", url, str(dest)], env)
        if code:
            what = f"branch {checkout['name']!r}" if checkout.get("type") == "branch" else None
            raise _classify(url, out, checkout=what)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid, follow_symlinks=False)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), uid, uid, follow_symlinks=False)


def _open_dir(base_fd: int, parts: list[str], uid: int) -> int:
    """Walk (creating) directories below base_fd without following any link the sandbox may have planted."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                if os.geteuid() == 0:
                    os.chown(part, uid, uid, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def repositories_prepare(*, session_id: str, root: Path, uid: int) -> list[tuple[str, str]]:
    """Clone every attached repository not cloned yet (idempotent, one marker per resource in the
    server-owned sandbox root). Returns the read-write binds for repositories mounted outside /workspace.
    Raises RepositoryError for the first clone that fails."""
    from sandboxes.quota import volume_path

    binds: list[tuple[str, str]] = []
    clones = session_clones(session_id)
    if not clones:
        return binds
    # Markers live outside what the sandbox can write; clones inside its volume, so they count against
    # its quota and a move into the workspace never crosses filesystems.
    done_dir = root / "repos"
    done_dir.mkdir(mode=0o711, exist_ok=True)
    volume = volume_path(root)
    clone_dir = volume / ".repos"
    clone_dir.mkdir(mode=0o711, exist_ok=True)
    for clone in clones:
        inside = clone.mount_path.rstrip("/")
        under_workspace = inside.startswith(WORKSPACE + "/")
        outside_dir = clone_dir / clone.resource_id
        if not under_workspace:
            binds.append((str(outside_dir), inside))
        marker = done_dir / f"{clone.resource_id}.cloned"
        if marker.exists():
            continue
        staging = clone_dir / f".staging-{clone.resource_id}"
        shutil.rmtree(staging, ignore_errors=True)
        from files.models import SessionResource
        from files.services import session_resource_token

        resource = SessionResource.objects.filter(pk=clone.resource_id).first()
        token = session_resource_token(resource) if resource is not None else None
        clone_into(clone=clone, dest=staging, token=token)
        if os.geteuid() == 0:
            _chown_tree(staging, uid)
        if under_workspace:
            parts = [p for p in inside[len(WORKSPACE) + 1 :].split("/") if p]
            base_fd = os.open(volume / "workspace", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            root_fd = os.open(clone_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                parent_fd = _open_dir(base_fd, parts[:-1], uid)
                try:
                    try:
                        os.rename(staging.name, parts[-1], src_dir_fd=root_fd, dst_dir_fd=parent_fd)
                    except OSError as exc:
                        raise RepositoryError(
                            "clone", clone.url, f"{clone.mount_path} already exists in the workspace ({exc})"
                        ) from None
                finally:
                    os.close(parent_fd)
            finally:
                os.close(base_fd)
                os.close(root_fd)
        else:
            shutil.rmtree(outside_dir, ignore_errors=True)
            staging.rename(outside_dir)
        marker.write_text(clone.url)
        logger.info("cloned %s for session %s into %s", clone.url, session_id, clone.mount_path)
    return binds

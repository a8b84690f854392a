"""Files (spec 15) and session resources (spec 6).

A file's bytes are written to a temp file next to their final place, renamed into place, and only
then is the row inserted; a failed insert removes them. Deleting removes the row first and the
bytes after commit, so a reader never sees a row without bytes."""

import hashlib
import mimetypes
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Workspace
from api.errors import ApiError, bad_request, conflict, not_found
from api.ids import new_id
from api.pagination import Page, check_limit, page_body, paginate
from api.wire import iso
from files.models import File, ResourceType, SessionResource
from sandboxes.repos import url_problem
from sessions.models import Session
from vaults import crypto

EXPIRES_MIN_SECONDS = 3600
EXPIRES_MAX_SECONDS = 7776000
FILES_LIST_DEFAULT_LIMIT = 20
FILES_LIST_MAX_LIMIT = 1000
FILES_LIST_MAX_IDS = 100
RESOURCES_LIST_MAX_LIMIT = 1000
RESOURCES_PER_SESSION_MAX = 100
MOUNT_PATH_MAX = 1024
OUTPUTS_MAX_FILES = 1000  # per capture; a runaway agent must not flood the files table
_CHUNK = 1024 * 1024
_FILENAME_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MIME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
_SHA = re.compile(r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$")


# --- Files -----------------------------------------------------------------------------------------


def file_wire(file: File) -> dict[str, Any]:
    return {
        "id": file.id,
        "type": "file",
        "filename": file.filename,
        "mime_type": file.mime_type,
        "size_bytes": file.size_bytes,
        "created_at": iso(file.created_at),
        "downloadable": file.downloadable and not file.is_expired(),
        "expires_at": iso(file.expires_at),
        "scope": {"type": "session", "id": file.scope_id} if file.scope_id else None,
    }


def clean_filename(raw: str | None, *, mime_type: str) -> str:
    """Keep only the last path component (either separator), without control characters."""
    name = _CONTROL.sub("", (raw or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if name in ("", ".", ".."):
        name = "unnamed" + (mimetypes.guess_extension(mime_type) or "")
    if len(name) > _FILENAME_MAX:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: _FILENAME_MAX - len(ext) - 1] + "." + ext
        else:
            name = name[:_FILENAME_MAX]
    return name


def pick_mime_type(declared: str | None, filename: str | None) -> str:
    declared = (declared or "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream" and _MIME.match(declared):
        return declared
    guessed, _ = mimetypes.guess_type(filename or "", strict=False)
    return guessed or "application/octet-stream"


def check_expires_in(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise bad_request(f"expires_in_seconds: must be an integer, got {str(value)[:40]!r}.") from None
    if not EXPIRES_MIN_SECONDS <= seconds <= EXPIRES_MAX_SECONDS:
        low, high = EXPIRES_MIN_SECONDS, EXPIRES_MAX_SECONDS
        raise bad_request(f"expires_in_seconds: must be between {low} and {high}, got {seconds}.")
    return seconds


@dataclass
class _Written:
    path: Path
    size: int
    sha256: str


def _write_bytes(*, workspace_id: str, file_id: str, chunks: Iterable[bytes], max_bytes: int) -> _Written:
    directory = Path(settings.DATA_DIR) / "files" / workspace_id
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, f"file: the file is larger than the {max_bytes}-byte limit.")
                digest.update(chunk)
                out.write(chunk)
        final = directory / file_id
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _Written(path=final, size=size, sha256=digest.hexdigest())


def _insert_file(*, workspace: Workspace, written: _Written, file_id: str, **fields: Any) -> File:
    try:
        with transaction.atomic():
            return File.objects.create(
                id=file_id, workspace=workspace, size_bytes=written.size, sha256=written.sha256, **fields
            )
    except BaseException:
        written.path.unlink(missing_ok=True)
        raise


def file_create(
    *,
    workspace: Workspace,
    filename: str | None,
    content: Iterable[bytes],
    mime_type: str | None = None,
    expires_in_seconds: int | None = None,
    scope_id: str | None = None,
    max_bytes: int | None = None,
) -> File:
    mime = pick_mime_type(mime_type, filename)
    return _file_store(
        workspace=workspace,
        filename=clean_filename(filename, mime_type=mime),
        mime_type=mime,
        content=content,
        expires_in_seconds=expires_in_seconds,
        scope_id=scope_id,
        max_bytes=settings.GALLEY_MAX_BODY_BYTES if max_bytes is None else max_bytes,
    )


def _file_store(
    *,
    workspace: Workspace,
    filename: str,
    mime_type: str,
    content: Iterable[bytes],
    expires_in_seconds: int | None,
    scope_id: str | None,
    max_bytes: int,
) -> File:
    file_id = new_id("file")
    written = _write_bytes(workspace_id=workspace.id, file_id=file_id, chunks=content, max_bytes=max_bytes)
    now = timezone.now()
    expires_at = now + timedelta(seconds=expires_in_seconds) if expires_in_seconds else None
    return _insert_file(
        workspace=workspace,
        written=written,
        file_id=file_id,
        filename=filename,
        mime_type=mime_type,
        scope_id=scope_id,
        created_at=now,
        expires_at=expires_at,
    )


def file_get(*, workspace: Workspace, file_id: str) -> File:
    file = File.objects.filter(workspace=workspace, id=file_id).first()
    if file is None:
        raise not_found("file", file_id)
    return file


def file_open(*, workspace: Workspace, file_id: str) -> tuple[File, IO[bytes]]:
    """The file and an open handle on its bytes, for a download."""
    file = file_get(workspace=workspace, file_id=file_id)
    if file.is_expired():
        raise ApiError(404, f"file {file_id!r} expired at {iso(file.expires_at)}; its content is gone.")
    if not file.downloadable:
        raise ApiError(403, f"file {file_id!r} is not downloadable.")
    try:
        return file, open(file.path, "rb")  # noqa: SIM115 - the response closes it
    except FileNotFoundError:
        raise not_found("file", file_id) from None


def file_delete(*, workspace: Workspace, file_id: str) -> None:
    file = file_get(workspace=workspace, file_id=file_id)
    path = file.path

    def remove() -> None:
        path.unlink(missing_ok=True)
        _blob_collect(workspace_id=file.workspace_id, sha256=file.sha256)

    with transaction.atomic():
        deleted, _ = File.objects.filter(pk=file.pk).delete()
        if deleted:
            transaction.on_commit(remove)


def file_list(
    *,
    workspace: Workspace,
    limit: int | None = None,
    page: str | None = None,
    scope_id: str | None = None,
    ids: list[str] | None = None,
) -> dict[str, Any]:
    qs: QuerySet[File] = File.objects.filter(workspace=workspace)
    if scope_id is not None:
        qs = qs.filter(scope_id=scope_id)
    if ids:
        if page is not None or limit is not None:
            raise bad_request("ids: cannot be combined with `page` or `limit`.")
        unique = list(dict.fromkeys(ids))
        if len(unique) > FILES_LIST_MAX_IDS:
            raise bad_request(f"ids: at most {FILES_LIST_MAX_IDS} ids are allowed, got {len(unique)}.")
        rows = list(qs.filter(id__in=unique).order_by("-created_at", "-id"))
        return {"data": [file_wire(f) for f in rows], "next_page": None}
    size = check_limit(limit, default=FILES_LIST_DEFAULT_LIMIT, maximum=FILES_LIST_MAX_LIMIT)
    result = paginate(qs, fields=("created_at", "id"), limit=size, order="desc", page=page)
    return page_body(result, [file_wire(f) for f in result.items])


def file_purge_expired(*, now: datetime | None = None) -> int:
    """Remove the bytes of expired files (their metadata stays). Safe to run repeatedly."""
    count = 0
    for file in File.objects.filter(expires_at__lte=now or timezone.now()).iterator():
        if file.path.exists():
            file.path.unlink(missing_ok=True)
            _blob_collect(workspace_id=file.workspace_id, sha256=file.sha256)
            count += 1
    return count


# --- Captured outputs ------------------------------------------------------------------------------
# Captured files are content-addressed: the bytes of each distinct content live once, in
# `files/<workspace>/blobs/<sha256>`, and every File row with that content is a hard link to it (so a
# row's own path, downloads and deletes work as for any file). A blob whose last row is gone is removed.


def _blob_path(workspace_id: str, sha256: str) -> Path:
    return Path(settings.DATA_DIR) / "files" / workspace_id / "blobs" / sha256


def _blob_collect(*, workspace_id: str, sha256: str) -> None:
    blob = _blob_path(workspace_id, sha256)
    try:
        if blob.stat().st_nlink == 1:  # only the blob itself is left
            blob.unlink()
    except (FileNotFoundError, ValueError):
        pass


@dataclass
class CaptureReport:
    captured: list[File]
    over_quota: list[str]  # files left out because the session's outputs quota is reached
    quota_bytes: int


def session_outputs_bytes(*, session: Session) -> tuple[int, set[str]]:
    """Bytes stored for the session's captured outputs (each distinct content counted once) and the
    digests already stored."""
    rows = set(
        File.objects.filter(workspace_id=session.workspace_id, scope_id=session.id).values_list(
            "sha256", "size_bytes"
        )
    )
    return sum(size for _sha, size in rows), {sha for sha, _size in rows}


def file_capture_outputs(
    *, session: Session, outputs_dir: Path, seen: dict[str, tuple[int, ...]] | None = None
) -> list[File]:
    return file_capture_outputs_report(session=session, outputs_dir=outputs_dir, seen=seen).captured


def file_capture_outputs_report(
    *, session: Session, outputs_dir: Path, seen: dict[str, tuple[int, ...]] | None = None
) -> CaptureReport:
    """Record the regular files under a session's outputs directory as session-scoped files.

    Called after each writing tool call. A file already captured with the same name and content is
    not recorded again; a changed file is recorded as a new file, its bytes stored once per distinct
    content (see above) and counted against GALLEY_SESSION_OUTPUTS_BYTES; files past that quota are
    reported, not stored. `seen` (kept by the caller across calls) maps a path to the stat of the
    content last recorded for it, so unchanged files are not read again. The filename is the path
    relative to the outputs directory.

    The sandbox owns this directory and may swap anything in it for a symlink or a FIFO at any
    moment, so the walk goes by directory fds (os.fwalk never follows a symlink, even a swapped
    one) and every file is opened relative to its directory with O_NOFOLLOW | O_NONBLOCK, then
    checked on the open fd.
    """
    report = CaptureReport(captured=[], over_quota=[], quota_bytes=settings.GALLEY_SESSION_OUTPUTS_BYTES)
    if outputs_dir.is_symlink() or not outputs_dir.is_dir():
        return report
    existing = set(
        File.objects.filter(workspace_id=session.workspace_id, scope_id=session.id).values_list(
            "filename", "sha256"
        )
    )
    state = _CaptureState(session=session, existing=existing, seen=seen if seen is not None else {})
    count = 0
    for dirpath, dirnames, filenames, dirfd in os.fwalk(outputs_dir, follow_symlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            count += 1
            if count > OUTPUTS_MAX_FILES:
                return report
            relative = _CONTROL.sub("", os.path.relpath(os.path.join(dirpath, name), outputs_dir))
            _capture_one(
                state=state, report=report, dirfd=dirfd, name=name, filename=relative[:_FILENAME_MAX]
            )
    return report


@dataclass
class _CaptureState:
    session: Session
    existing: set[tuple[str, str]]
    seen: dict[str, tuple[int, ...]]
    used: int | None = None  # stored bytes of the session's outputs, loaded on the first new content
    digests: set[str] | None = None


def _capture_one(
    *, state: _CaptureState, report: CaptureReport, dirfd: int, name: str, filename: str
) -> None:
    session = state.session
    limit = settings.GALLEY_MAX_BODY_BYTES
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    except OSError:
        return  # a symlink (ELOOP), vanished, or unreadable
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return
        signature = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        # File timestamps tick coarsely: trust the signature only for a file not changed in the last second.
        settled = time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > 1_000_000_000
        if state.seen.get(filename) == signature:
            return  # unchanged since it was last recorded: not read again
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
        sha = digest.hexdigest()
        if (filename, sha) in state.existing:
            if settled:
                state.seen[filename] = signature
            return
        if state.used is None or state.digests is None:
            state.used, state.digests = session_outputs_bytes(session=session)
        if sha not in state.digests and state.used + info.st_size > report.quota_bytes:
            report.over_quota.append(filename)
            return
        handle.seek(0)
        try:
            file = _store_captured(session=session, filename=filename, name=name, sha=sha, handle=handle)
        except (OSError, ApiError):
            return  # unreadable, or grew past the limit while being read
    state.existing.add((file.filename, file.sha256))
    assert state.used is not None and state.digests is not None
    if file.sha256 not in state.digests:
        state.digests.add(file.sha256)
        state.used += file.size_bytes
    if file.sha256 == sha and settled:
        state.seen[filename] = signature
    report.captured.append(file)


def _store_captured(*, session: Session, filename: str, name: str, sha: str, handle: IO[bytes]) -> File:
    workspace = session.workspace
    blob = _blob_path(workspace.id, sha)
    file_id = new_id("file")
    final = Path(settings.DATA_DIR) / "files" / workspace.id / file_id
    written: _Written | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.link(blob, final)  # this content is stored already: one more name for it
        written = _Written(path=final, size=final.stat().st_size, sha256=sha)
    except FileNotFoundError:
        pass
    if written is None:
        written = _write_bytes(
            workspace_id=workspace.id,
            file_id=file_id,
            chunks=iter(lambda: handle.read(_CHUNK), b""),
            max_bytes=settings.GALLEY_MAX_BODY_BYTES,
        )
        blob = _blob_path(workspace.id, written.sha256)  # what was read, should the file have changed
        blob.parent.mkdir(exist_ok=True)
        try:
            os.link(written.path, blob)
        except FileExistsError:
            pass  # stored meanwhile by another capture: this copy stays on its own
    return _insert_file(
        workspace=workspace,
        written=written,
        file_id=file_id,
        filename=filename,
        mime_type=pick_mime_type(None, name),
        scope_id=session.id,
        created_at=timezone.now(),
        expires_at=None,
    )


# --- Session resources -----------------------------------------------------------------------------


def session_get(*, workspace: Workspace, session_id: str) -> Session:
    session = Session.objects.filter(workspace=workspace, id=session_id).first()
    if session is None:
        raise not_found("session", session_id)
    return session


def session_resource_wire(resource: SessionResource) -> dict[str, Any]:
    if resource.type == ResourceType.FILE:
        return {
            "id": resource.id,
            "type": "file",
            "file_id": resource.file_id,
            "mount_path": resource.mount_path,
            "created_at": iso(resource.created_at),
            "updated_at": iso(resource.updated_at),
        }
    return {
        "id": resource.id,
        "type": "github_repository",
        "url": resource.url,
        "mount_path": resource.mount_path,
        "checkout": resource.checkout,
        "created_at": iso(resource.created_at),
        "updated_at": iso(resource.updated_at),
    }


def session_resources_wire(session: Session) -> list[dict[str, Any]]:
    """The wire list for `session.resources`, oldest first."""
    from memory.attachments import memory_resources_wire_many

    rows = SessionResource.objects.filter(session=session).order_by("created_at", "id")
    return [session_resource_wire(r) for r in rows] + memory_resources_wire_many([session.pk])[session.pk]


def session_resources_wire_many(session_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """`session.resources` for many sessions in one query (session lists)."""
    wire: dict[str, list[dict[str, Any]]] = {sid: [] for sid in session_ids}
    for row in SessionResource.objects.filter(session_id__in=session_ids).order_by("created_at", "id"):
        wire[row.session_id].append(session_resource_wire(row))
    from memory.attachments import memory_resources_wire_many

    for session_id, memory in memory_resources_wire_many(session_ids).items():
        wire[session_id].extend(memory)
    return wire


@dataclass(frozen=True)
class ResourceMount:
    """What the sandbox needs to mount one resource. `source` is the file's bytes on the host (None
    once the file is deleted or expired); `token` is for a host-side clone only and must never
    enter the sandbox (no token in the clone's remote URL or .git/config)."""

    resource_id: str
    type: str
    mount_path: str
    source: Path | None = None
    url: str | None = None
    checkout: dict[str, str] | None = None
    token: str | None = None


def session_resource_mounts(session: Session) -> list[ResourceMount]:
    mounts: list[ResourceMount] = []
    rows = list(SessionResource.objects.filter(session=session).order_by("created_at", "id"))
    files = File.objects.in_bulk([row.file_id for row in rows if row.file_id])
    for row in rows:
        if row.type == ResourceType.FILE:
            file = files.get(row.file_id) if row.file_id else None
            usable = file is not None and not file.is_expired() and file.path.exists()
            source = file.path if usable and file is not None else None
            mounts.append(ResourceMount(row.id, row.type, row.mount_path, source=source))
        else:
            mounts.append(
                ResourceMount(
                    row.id,
                    row.type,
                    row.mount_path,
                    url=row.url,
                    checkout=row.checkout,
                    token=session_resource_token(row),
                )
            )
    return mounts


def session_resource_token(resource: SessionResource) -> str | None:
    """The plaintext authorization token, for the sandbox's clone step only."""
    if not resource.authorization_token_encrypted:
        return None
    return str(crypto.decrypt(resource.authorization_token_encrypted).get("token") or "") or None


def _check_mount_path(value: Any, *, field: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field}: must be a string.")
    if not value.startswith("/") or len(value) > MOUNT_PATH_MAX or _CONTROL.search(value):
        raise bad_request(f"{field}: must be an absolute path of at most {MOUNT_PATH_MAX} characters.")
    parts = PurePosixPath(value).parts
    if any(p in (".", "..") for p in value.split("/")) or len(parts) < 2:
        raise bad_request(f"{field}: must name a directory below `/` without `.` or `..` segments.")
    return str(PurePosixPath(value))


def _check_string(value: Any, *, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{field}: must be a non-empty string.")
    if len(value) > max_length:
        raise bad_request(f"{field}: must be at most {max_length} characters.")
    return value


def _check_checkout(value: Any, *, field: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"{field}: must be an object or null.")
    kind = value.get("type")
    if kind == "branch":
        extra = set(value) - {"type", "name"}
        name = _check_string(value.get("name"), field=f"{field}.name", max_length=255)
        if extra or _CONTROL.search(name) or name.startswith("-"):
            raise bad_request(
                f"{field}: a branch checkout is {{type: 'branch', name}} with a valid branch name."
            )
        return {"type": "branch", "name": name}
    if kind == "commit":
        sha = value.get("sha")
        if set(value) - {"type", "sha"} or not isinstance(sha, str) or not _SHA.match(sha):
            raise bad_request(f"{field}.sha: must be a full commit SHA (40 or 64 hex characters).")
        return {"type": "commit", "sha": sha.lower()}
    raise bad_request(f"{field}.type: must be 'branch' or 'commit'.")


def _repo_name(url: str, *, field: str) -> str:
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme not in ("https", "http") or not parts.hostname or len(segments) < 2:
        raise bad_request(f"{field}: must be a repository URL like https://github.com/<owner>/<repo>.")
    if parts.username or parts.password:
        raise bad_request(f"{field}: must not carry credentials; use authorization_token.")
    name = segments[-1].removesuffix(".git")
    if not name or name in (".", "..") or _CONTROL.search(name):
        raise bad_request(f"{field}: does not name a repository.")
    return name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class _Planned:
    type: str
    mount_path: str
    file: File | None = None
    url: str | None = None
    checkout: dict[str, str] | None = None
    token: str | None = None


def _plan(*, workspace: Workspace, spec: Any, field: str) -> _Planned:
    if not isinstance(spec, dict):
        raise bad_request(f"{field or 'body'}: must be an object.")
    kind = spec.get("type")
    mount = spec.get("mount_path")
    if kind == "file":
        unknown = set(spec) - {"type", "file_id", "mount_path"}
        if unknown:
            raise bad_request(f"{_join(field, sorted(unknown)[0])}: is not a field of a file resource.")
        file_id = _check_string(spec.get("file_id"), field=_join(field, "file_id"), max_length=64)
        file = File.objects.filter(workspace=workspace, id=file_id).first()
        if file is None:
            raise ApiError(404, f"{_join(field, 'file_id')}: file {file_id!r} was not found.")
        if file.is_expired():
            raise bad_request(f"{_join(field, 'file_id')}: file {file_id!r} has expired.")
        path = f"/mnt/session/uploads/{file_id}" if mount is None else mount
        return _Planned(
            type="file", file=file, mount_path=_check_mount_path(path, field=_join(field, "mount_path"))
        )
    if kind == "github_repository":
        unknown = set(spec) - {"type", "url", "authorization_token", "checkout", "mount_path"}
        if unknown:
            raise bad_request(
                f"{_join(field, sorted(unknown)[0])}: is not a field of a github_repository resource."
            )
        url = _check_string(spec.get("url"), field=_join(field, "url"), max_length=2048)
        repo = _repo_name(url, field=_join(field, "url"))
        problem = url_problem(url)
        if problem:
            raise bad_request(f"{_join(field, 'url')}: {problem}.")
        token = spec.get("authorization_token")
        if token is not None:
            token = _check_string(token, field=_join(field, "authorization_token"), max_length=4096)
        checkout = _check_checkout(spec.get("checkout"), field=_join(field, "checkout"))
        path = f"/workspace/{repo}" if mount is None else mount
        return _Planned(
            type="github_repository",
            url=url,
            token=token,
            checkout=checkout,
            mount_path=_check_mount_path(path, field=_join(field, "mount_path")),
        )
    if kind == "memory_store":
        raise bad_request(
            f"{_join(field, 'type')}: memory_store resources can only be attached when the session "
            "is created."
        )
    raise bad_request(f"{_join(field, 'type')}: must be 'file', 'github_repository' or 'memory_store'.")


def _check_writable(session: Session) -> None:
    if session.archived_at is not None:
        raise bad_request(f"session {session.id!r} is archived; its resources cannot change.")


def session_resources_validate(*, workspace: Workspace, resources: Any) -> None:
    """Check a session-create `resources` list before the session exists (same errors as attach)."""
    if resources is None:
        return
    if not isinstance(resources, list):
        raise bad_request("resources: must be a list.")
    if len(resources) > RESOURCES_PER_SESSION_MAX:
        raise bad_request(f"resources: a session holds at most {RESOURCES_PER_SESSION_MAX} resources.")
    taken: set[str] = set()
    for i, spec in enumerate(resources):
        if isinstance(spec, dict) and spec.get("type") == "memory_store":
            continue  # the memory app's (memory.attachments)
        plan = _plan(workspace=workspace, spec=spec, field=f"resources[{i}]")
        if plan.mount_path in taken:
            raise conflict(f"resources[{i}].mount_path: {plan.mount_path!r} is already used in this session.")
        taken.add(plan.mount_path)


def session_resources_attach(*, session: Session, resources: list[dict[str, Any]]) -> list[SessionResource]:
    """Validate every resource, then insert them all, or none (a bad one raises before any insert).
    Errors name the entry, e.g. `resources[1].file_id`. For session create."""
    if not isinstance(resources, list):
        raise bad_request("resources: must be a list.")
    return _attach(session=session, resources=resources, prefix=lambda i: f"resources[{i}]")


@transaction.atomic
def _attach(*, session: Session, resources: list[Any], prefix: Callable[[int], str]) -> list[SessionResource]:
    _check_writable(session)
    planned = [
        _plan(workspace=session.workspace, spec=spec, field=prefix(i)) for i, spec in enumerate(resources)
    ]
    # Lock the session row so concurrent adds see each other's mount paths and counts.
    Session.objects.select_for_update().filter(pk=session.pk).values_list("pk", flat=True).first()
    taken = _mount_paths_taken(session)
    if len(taken) + len(planned) > RESOURCES_PER_SESSION_MAX:
        raise bad_request(f"resources: a session holds at most {RESOURCES_PER_SESSION_MAX} resources.")
    for i, plan in enumerate(planned):
        if plan.mount_path in taken:
            raise conflict(
                f"{_join(prefix(i), 'mount_path')}: {plan.mount_path!r} is already used in this session."
            )
        taken.add(plan.mount_path)
    now = timezone.now()
    rows = [
        SessionResource(
            id=new_id("sesrsc"),
            session=session,
            type=plan.type,
            file=plan.file,
            url=plan.url,
            mount_path=plan.mount_path,
            checkout=plan.checkout,
            authorization_token_encrypted=crypto.encrypt({"token": plan.token}) if plan.token else None,
            # A microsecond apart: lists order by (created_at, id) and ids are random within a
            # millisecond, so this keeps the order the caller gave.
            created_at=now + timedelta(microseconds=i),
            updated_at=now + timedelta(microseconds=i),
        )
        for i, plan in enumerate(planned)
    ]
    try:
        with transaction.atomic():
            for row in rows:
                row.save(force_insert=True)
    except IntegrityError:
        # The unique (session, mount_path) constraint is the backstop if the lock above was
        # not enough (a backend without SELECT ... FOR UPDATE and without immediate transactions).
        raise conflict("mount_path: another request just used this mount path in this session.") from None
    return rows


def _mount_paths_taken(session: Session) -> set[str]:
    return set(SessionResource.objects.filter(session=session).values_list("mount_path", flat=True))


def session_resource_add(*, workspace: Workspace, session_id: str, body: dict[str, Any]) -> SessionResource:
    session = session_get(workspace=workspace, session_id=session_id)
    return _attach(session=session, resources=[body], prefix=lambda _: "")[0]


def session_resource_get(*, workspace: Workspace, session_id: str, resource_id: str) -> SessionResource:
    session = session_get(workspace=workspace, session_id=session_id)
    resource = SessionResource.objects.filter(session=session, id=resource_id).first()
    if resource is None:
        raise not_found("session resource", resource_id)
    return resource


def session_resource_list(
    *, workspace: Workspace, session_id: str, limit: int | None = None, page: str | None = None
) -> dict[str, Any]:
    session = session_get(workspace=workspace, session_id=session_id)
    qs = SessionResource.objects.filter(session=session)
    if limit is None and page is None:
        rows = list(qs.order_by("created_at", "id")[: RESOURCES_PER_SESSION_MAX * 10])
        return {"data": [session_resource_wire(r) for r in rows], "next_page": None}
    size = check_limit(limit, default=RESOURCES_LIST_MAX_LIMIT, maximum=RESOURCES_LIST_MAX_LIMIT)
    result: Page = paginate(qs, fields=("created_at", "id"), limit=size, order="asc", page=page)
    return page_body(result, [session_resource_wire(r) for r in result.items])


def session_resource_update(
    *, workspace: Workspace, session_id: str, resource_id: str, authorization_token: Any
) -> SessionResource:
    resource = session_resource_get(workspace=workspace, session_id=session_id, resource_id=resource_id)
    _check_writable(resource.session)
    if resource.type != ResourceType.GITHUB_REPOSITORY:
        raise bad_request("authorization_token: only github_repository resources support token rotation.")
    token = _check_string(authorization_token, field="authorization_token", max_length=4096)
    now = timezone.now()
    SessionResource.objects.filter(pk=resource.pk).update(
        authorization_token_encrypted=crypto.encrypt({"token": token}), updated_at=now
    )
    resource.refresh_from_db()
    return resource


def session_resource_delete(*, workspace: Workspace, session_id: str, resource_id: str) -> None:
    resource = session_resource_get(workspace=workspace, session_id=session_id, resource_id=resource_id)
    _check_writable(resource.session)
    SessionResource.objects.filter(pk=resource.pk).delete()

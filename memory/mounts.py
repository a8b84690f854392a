"""The boundary between a session's sandbox and its memory stores (spec 13, "Memory in sessions").

Each attached store has a host directory `<sandbox root>/memory/<slug>/`, bind-mounted at
/mnt/memory/<slug>/ (read-only for `read_only` attachments). The worker keeps it in step with the
store: before every sandboxed tool call it writes what other writers changed (`memory_pull`), and
after every call that may have written (bash, write, edit) it turns the agent's changes into
memory versions attributed to the session (`memory_push`). `SessionMemoryStore.base` records the
content hash of each path as last synced, so a change is told apart from a stale copy, and every
write carries it as a content_sha256 precondition: a write that loses a race with another writer
is not applied, the file is set to the current content and the model is told, with both contents.

The sync (`store_pull`, `store_push`) is transport-neutral: it reads and writes a store through a
`StoreRemote`. Here that is `DatabaseStore` (memory.services); a self-hosted worker, which has no
database, uses the memory API with its sessions token (`selfhosted/worker_memory.py`).

The sandbox owns those directories and may plant links in them, so every file operation here
walks directory file descriptors with O_NOFOLLOW and ignores anything that is not a regular file
or a directory; nothing outside the store's directory is ever read or written."""

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.db import transaction

from api.errors import ApiError
from memory import services
from memory.attachments import attachments_of
from memory.models import Memory, MemoryStore, SessionMemoryStore

MAX_FILES = 1_000
MAX_ENTRIES = 20_000
MAX_SCAN_BYTES = 64 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

log = logging.getLogger(__name__)


# --- file operations that never follow a link ----------------------------------------------------------


@contextmanager
def _dir(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_parent(root_fd: int, parts: list[str], *, create: bool, uid: int | None) -> int | None:
    """An fd for the directory holding `parts[-1]`, walking from root_fd; None if it is missing or
    a component is not a real directory."""
    fd = os.dup(root_fd)
    for name in parts[:-1]:
        try:
            nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                os.close(fd)
                return None
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
                if uid is not None:
                    os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
        except OSError:  # a link, a file in the way, ...
            os.close(fd)
            return None
        os.close(fd)
        fd = nxt
    return fd


@dataclass
class _Scan:
    files: dict[str, bytes] = field(default_factory=dict)
    complete: bool = True  # False when a limit stopped the walk: absent files are not deletions
    entries: int = 0
    size: int = 0


def _scan(root_fd: int) -> _Scan:
    """Every regular file below root_fd, by memory path ("/a/b.md"), each read up to one byte past
    the content limit (so an oversized file is seen as such), within MAX_FILES, MAX_ENTRIES and
    MAX_SCAN_BYTES."""
    scan = _Scan()

    def walk(fd: int, prefix: str, depth: int) -> None:
        if depth > services.MAX_PATH_SEGMENTS:
            return
        for entry in sorted(os.scandir(fd), key=lambda e: e.name):
            scan.entries += 1
            if len(scan.files) >= MAX_FILES or scan.entries > MAX_ENTRIES or scan.size > MAX_SCAN_BYTES:
                scan.complete = False
                return
            try:
                mode = os.stat(entry.name, dir_fd=fd, follow_symlinks=False).st_mode
            except OSError:
                continue
            path = f"{prefix}/{entry.name}"
            if stat.S_ISDIR(mode):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                with _dir(sub):
                    walk(sub, path, depth + 1)
            elif stat.S_ISREG(mode):
                try:
                    # O_NONBLOCK: the entry may have been swapped for a FIFO since the stat.
                    file_fd = os.open(entry.name, _FILE_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                with os.fdopen(file_fd, "rb") as handle:
                    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                        continue
                    data = handle.read(services.MAX_CONTENT_BYTES + 1)
                scan.size += len(data)
                scan.files[path] = data

    dup = os.dup(root_fd)
    with _dir(dup):
        walk(dup, "", 1)
    return scan


def _write(root_fd: int, path: str, content: str, uid: int | None) -> bool:
    parts = path.strip("/").split("/")
    parent = _open_parent(root_fd, parts, create=True, uid=uid)
    if parent is None:
        return False
    with _dir(parent):
        try:
            fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=parent,
            )
        except OSError:
            return False
        with os.fdopen(fd, "wb") as handle:
            if uid is not None:
                os.fchown(handle.fileno(), uid, uid)
            handle.write(content.encode("utf-8"))
    return True


def _remove(root_fd: int, path: str) -> None:
    parts = path.strip("/").split("/")
    parent = _open_parent(root_fd, parts, create=False, uid=None)
    if parent is None:
        return
    with _dir(parent):
        try:
            os.unlink(parts[-1], dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EISDIR):
                raise


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- mounts ------------------------------------------------------------------------------------------


def store_dir(root: Path, mount_path: str) -> Path:
    """The host directory of the store mounted at `mount_path` (/mnt/memory/<slug>)."""
    return root / "memory" / mount_path.rsplit("/", 1)[-1]


def store_dirs_prepare(
    *, root: Path, stores: list[tuple[str, bool]], uid: int | None
) -> tuple[tuple[str, str, bool], ...]:
    """Create the directories of the stores (mount path, writable) and return the sandbox's mounts
    (host directory, path inside, writable)."""
    if not stores:
        return ()
    holder = root / "memory"
    holder.mkdir(mode=0o711, exist_ok=True)  # the server's: the sandbox cannot swap its entries
    os.chmod(holder, 0o711)
    mounts = []
    for mount_path, writable in stores:
        directory = store_dir(root, mount_path)
        try:
            directory.mkdir(mode=0o755)
            if uid is not None:
                os.chown(directory, uid, uid)
        except FileExistsError:
            pass
        mounts.append((str(directory), mount_path, writable))
    return tuple(mounts)


def memory_mounts_prepare(
    *, session_id: str, root: Path, uid: int | None
) -> tuple[tuple[str, str, bool], ...]:
    """Create each attached store's directory, fill it from the store, and return the mounts
    (host directory, path inside, writable) for the sandbox."""
    rows = [r for r in attachments_of(session_id) if r.store_id is not None]
    mounts = store_dirs_prepare(
        root=root, stores=[(r.mount_path, r.access == "read_write") for r in rows], uid=uid
    )
    if mounts:
        memory_pull(session_id=session_id, root=root, uid=uid)
    return mounts


@contextmanager
def store_dir_open(root: Path, mount_path: str) -> Iterator[int | None]:
    """A directory descriptor of the store's host directory, or None when it is missing."""
    try:
        fd = os.open(store_dir(root, mount_path), _DIR_FLAGS)
    except OSError:
        yield None
        return
    with _dir(fd):
        yield fd


class SyncConflict(Exception):
    """The store changed since the last sync (a precondition or a path conflict)."""


class SyncGone(Exception):
    """The memory to update no longer exists (another writer deleted it)."""


class SyncRefused(Exception):
    """The store refused the write (a path or content rule); `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreRemote(Protocol):
    """One attached store as the sync sees it, whatever the transport: the database here (the
    harness's sandboxes), the memory API with a sessions token on a self-hosted worker."""

    def listing(self) -> dict[str, str]:
        """path -> content_sha256 of every memory."""
        ...

    def contents(self, paths: list[str]) -> dict[str, str]: ...

    def current(self, path: str) -> tuple[str, str] | None:
        """(content, content_sha256) of the memory at path, or None."""
        ...

    def create(self, path: str, content: str) -> str:
        """The new memory's content_sha256; SyncConflict when the path is taken."""
        ...

    def update(self, path: str, content: str, base_sha: str) -> str:
        """With `base_sha` as the content_sha256 precondition; SyncGone when it was deleted."""
        ...

    def delete(self, path: str, base_sha: str) -> None: ...


def store_pull(*, fd: int, remote: StoreRemote, base: dict[str, str], uid: int | None) -> dict[str, str]:
    """Bring other writers' changes into a store's directory; returns the new base. A file the
    agent changed since the last sync is left alone (the next push settles it against the store)."""
    disk = {path: _sha(data) for path, data in _scan(fd).files.items()}
    base = dict(base)
    server = remote.listing()
    stale = [
        path for path, sha in server.items() if base.get(path) != sha and disk.get(path) == base.get(path)
    ]
    contents = remote.contents(stale) if stale else {}
    for path in stale:
        if path in contents and _write(fd, path, contents[path], uid):
            base[path] = server[path]
    for path in [p for p in base if p not in server]:
        if disk.get(path) == base[path]:  # deleted elsewhere, untouched here
            _remove(fd, path)
            base.pop(path)
    return base


@dataclass
class PushReport:
    notes: list[str] = field(default_factory=list)
    changed: int = 0


def _fence(text: str) -> str:
    return f"<<<\n{text}\n>>>"


def store_push(
    *, fd: int, remote: StoreRemote, base: dict[str, str], uid: int | None, shown: str, report: PushReport
) -> dict[str, str]:
    """Turn the agent's changes in a store's directory into writes to the store, each with the
    last synced hash as its precondition; returns the new base. Lost races and refusals restore
    the store's content on disk and add a note for the model to `report`."""
    scan = _scan(fd)
    disk = scan.files
    base = dict(base)

    def restore(path: str) -> str | None:
        """Put the store's current content (or absence) back on disk; return that content."""
        current = remote.current(path)
        if current is None:
            _remove(fd, path)
            base.pop(path, None)
            return None
        _write(fd, path, current[0], uid)
        base[path] = current[1]
        return current[0]

    for path in sorted(set(disk) | set(base)):
        data = disk.get(path)
        if data is not None and _sha(data) == base.get(path):
            continue  # unchanged
        where = f"{shown}{path}"
        if data is None and not scan.complete:
            continue  # not seen because the walk stopped early: not a deletion
        try:
            if data is None:
                remote.delete(path, base[path])
                base.pop(path, None)
                report.changed += 1
                continue
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                restore(path)
                report.notes.append(f"{where} was not saved to memory: memories hold UTF-8 text only.")
                continue
            services.check_path(path)
            services.check_content(content, "content")
            if path in base:
                try:
                    sha = remote.update(path, content, base[path])
                except SyncGone:
                    # Deleted by another writer while the agent edited it: the edit wins as a new memory.
                    report.notes.append(
                        f"{where} had been deleted by another session; your version was saved."
                    )
                    sha = remote.create(path, content)
            else:
                sha = remote.create(path, content)  # a conflict if another writer created it meanwhile
            base[path] = sha
            report.changed += 1
        except SyncConflict:
            mine = (
                "(you deleted the file)" if data is None else _fence(data.decode("utf-8", errors="replace"))
            )
            current = restore(path)
            theirs = "(the memory no longer exists)" if current is None else _fence(current)
            report.notes.append(
                f"Memory conflict on {where}: another session changed it since you last read it, so your "
                f"change was not saved. Your version:\n{mine}\n"
                f"The current version, now in the file:\n{theirs}\n"
                "Merge the two and write the file again if your change still matters."
            )
        except (SyncRefused, ApiError) as exc:
            restore(path)
            report.notes.append(f"{where} was not saved to memory: {exc.message}")
    if not scan.complete:
        report.notes.append(
            f"{shown} holds more than {MAX_FILES} files or {MAX_SCAN_BYTES // (1024 * 1024)} MB: only "
            "part of it was saved to memory, and no deletions were. Remove what need not be remembered."
        )
    return base


def sync_notes(report: PushReport) -> list[dict[str, Any]]:
    """The text blocks a push adds to the tool result (conflicts and refusals)."""
    return [{"type": "text", "text": note} for note in report.notes]


SYNC_FAILED = "Memory sync failed; your memory changes were not saved this time."


# --- the harness's sandboxes: the store in this database ---------------------------------------------


def _database_error(exc: ApiError) -> Exception:
    return SyncConflict() if exc.status == 409 else SyncRefused(exc.message)


class DatabaseStore:
    """An attached store read and written through memory.services, as `actor`."""

    def __init__(self, row: SessionMemoryStore, actor: services.Actor | None) -> None:
        self.row = row
        self.store_id = row.store_id
        self.actor = actor

    @property
    def store(self) -> MemoryStore:
        store = self.row.store  # loaded only by a write
        assert store is not None
        return store

    def _memory(self, path: str) -> Memory | None:
        return Memory.objects.filter(store_id=self.store_id, path=path).first()

    def listing(self) -> dict[str, str]:
        return dict(Memory.objects.filter(store_id=self.store_id).values_list("path", "content_sha256"))

    def contents(self, paths: list[str]) -> dict[str, str]:
        return dict(
            Memory.objects.filter(store_id=self.store_id, path__in=paths).values_list("path", "content")
        )

    def current(self, path: str) -> tuple[str, str] | None:
        memory = self._memory(path)
        return None if memory is None else (memory.content, memory.content_sha256)

    def create(self, path: str, content: str) -> str:
        try:
            return services.memory_create(
                store=self.store, path=path, content=content, actor=self.actor
            ).content_sha256
        except ApiError as exc:
            raise _database_error(exc) from None

    def update(self, path: str, content: str, base_sha: str) -> str:
        memory = self._memory(path)
        if memory is None:
            raise SyncGone()
        body = {"content": content, "precondition": {"type": "content_sha256", "content_sha256": base_sha}}
        try:
            return services.memory_update(
                store=self.store, memory=memory, body=body, actor=self.actor
            ).content_sha256
        except ApiError as exc:
            raise _database_error(exc) from None

    def delete(self, path: str, base_sha: str) -> None:
        memory = self._memory(path)
        if memory is None:
            return
        try:
            services.memory_delete(store=self.store, memory=memory, expected_sha=base_sha, actor=self.actor)
        except ApiError as exc:
            if exc.status != 404:
                raise _database_error(exc) from None


def _save_base(row: SessionMemoryStore, base: dict[str, str]) -> None:
    if base != row.base:
        SessionMemoryStore.objects.filter(pk=row.pk).update(base=base)
        row.base = base


def memory_pull(*, session_id: str, root: Path, uid: int | None) -> None:
    """Bring other writers' changes into the sandbox's copies."""
    for row in attachments_of(session_id):
        if row.store_id is None:
            continue
        with store_dir_open(root, row.mount_path) as fd:
            if fd is None:
                continue
            remote = DatabaseStore(row, None)
            _save_base(row, store_pull(fd=fd, remote=remote, base=row.base, uid=uid))


def memory_push(*, session_id: str, root: Path, uid: int | None) -> PushReport:
    """Turn the agent's changes in the sandbox's copies into memory versions (actor: the session)."""
    report = PushReport()
    actor = services.actor_session(session_id)
    for row in attachments_of(session_id):
        if row.store_id is None or row.access != "read_write":
            continue
        with store_dir_open(root, row.mount_path) as fd:
            if fd is None:
                continue
            remote = DatabaseStore(row, actor)
            base = store_push(
                fd=fd, remote=remote, base=row.base, uid=uid, shown=row.mount_path, report=report
            )
            with transaction.atomic():
                _save_base(row, base)
    return report


def memory_sync_after_tool(*, session_id: str, root: Path, uid: int | None) -> list[dict[str, Any]]:
    """Push, and the text blocks to add to the tool result (conflicts and refusals)."""
    try:
        report = memory_push(session_id=session_id, root=root, uid=uid)
    except Exception:  # a sync failure must not turn a finished tool call into a failure
        log.exception("memory sync failed (session %s)", session_id)
        return [{"type": "text", "text": SYNC_FAILED}]
    return sync_notes(report)

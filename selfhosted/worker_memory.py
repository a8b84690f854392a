"""A self-hosted worker's memory stores and skills, for `manage.py environment_worker`.

The worker has no database: it reaches the session's memory stores through the /v1/memory_stores
routes with the work item's sessions token (scoped to the session's attachments; its writes are
the session's versions), like the SDK's worker (`anthropic/lib/tools/_memories.py`). The sync
itself is memory.mounts' (`store_pull` before each tool call, `store_push` after each call that
may have written, with the last synced hash as every write's precondition and lost races reported
in the tool result); `ApiStore` is its transport here. Each store's base (path -> hash last synced)
is kept in a file beside the store's directory, out of the sandbox's reach, so a worker that
restarts carries on where it stopped.

Skills are downloaded by the SDK's worker into `{workdir}/skills/<name>/` (through the skills API,
with the same credential); they are copied into the sandbox's root and mounted read-only at
/workspace/skills/<name>/, where the system prompt points."""

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic

from memory.mounts import (
    SYNC_FAILED,
    PushReport,
    SyncConflict,
    SyncGone,
    SyncRefused,
    store_dir,
    store_dir_open,
    store_dirs_prepare,
    store_pull,
    store_push,
    sync_notes,
)
from selfhosted.services import SESSIONS_TOKEN_PREFIX
from skills.runtime import SKILLS_MOUNT

log = logging.getLogger(__name__)

FETCH_ONE_BY_ONE = 10  # more changed memories than this are read by listing pages with content


class _Missing(Exception):
    pass


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(error.get("message") or f"the memory API answered {exc.status_code}")


def _call[T](fn: Callable[[], T]) -> T:
    """A memory API call with its refusals as the sync's exceptions; other failures propagate."""
    try:
        return fn()
    except anthropic.APIStatusError as exc:
        if exc.status_code in (409, 412):
            raise SyncConflict() from None
        if exc.status_code == 404:
            raise _Missing() from None
        if 400 <= exc.status_code < 500:
            raise SyncRefused(_message(exc)) from None
        raise


class ApiStore:
    """One attached store through the memory API (memory.mounts.StoreRemote)."""

    def __init__(self, client: anthropic.Anthropic, store_id: str) -> None:
        self.memories = client.beta.memory_stores.memories
        self.store_id = store_id
        self.ids: dict[str, str] = {}  # path -> memory id, as last listed

    def listing(self) -> dict[str, str]:
        found: dict[str, str] = {}
        ids: dict[str, str] = {}
        for item in self.memories.list(self.store_id, limit=100):
            if item.type == "memory":
                found[item.path] = item.content_sha256
                ids[item.path] = item.id
        self.ids = ids
        return found

    def _retrieve(self, path: str) -> tuple[str, str] | None:
        memory_id = self.ids.get(path)
        if memory_id is None:
            return None
        try:
            item = _call(
                lambda: self.memories.retrieve(memory_id, memory_store_id=self.store_id, view="full")
            )
        except _Missing:
            self.ids.pop(path, None)
            return None
        return (item.content or "", item.content_sha256) if item.path == path else None

    def contents(self, paths: list[str]) -> dict[str, str]:
        if len(paths) > FETCH_ONE_BY_ONE:  # a first fill: whole pages with content
            wanted = set(paths)
            return {
                item.path: item.content or ""
                for item in self.memories.list(self.store_id, view="full", limit=20)
                if item.type == "memory" and item.path in wanted
            }
        found = {}
        for path in paths:  # the pull listed the store just before, so the ids are current
            current = self._retrieve(path)
            if current is not None:
                found[path] = current[0]
        return found

    def current(self, path: str) -> tuple[str, str] | None:
        self.listing()
        return self._retrieve(path)

    def _id(self, path: str) -> str | None:
        if path not in self.ids:
            self.listing()
        return self.ids.get(path)

    def create(self, path: str, content: str) -> str:
        try:
            made = _call(lambda: self.memories.create(self.store_id, path=path, content=content))
        except _Missing:
            raise SyncRefused(f"memory store {self.store_id!r} no longer exists.") from None
        self.ids[path] = made.id
        return made.content_sha256

    def update(self, path: str, content: str, base_sha: str) -> str:
        memory_id = self._id(path)
        if memory_id is None:
            raise SyncGone()
        try:
            changed = _call(
                lambda: self.memories.update(
                    memory_id,
                    memory_store_id=self.store_id,
                    content=content,
                    precondition={"type": "content_sha256", "content_sha256": base_sha},
                )
            )
        except _Missing:
            self.ids.pop(path, None)
            raise SyncGone() from None
        return changed.content_sha256

    def delete(self, path: str, base_sha: str) -> None:
        memory_id = self._id(path)
        if memory_id is None:
            return
        try:
            _call(
                lambda: self.memories.delete(
                    memory_id, memory_store_id=self.store_id, expected_content_sha256=base_sha
                )
            )
        except _Missing:
            pass
        self.ids.pop(path, None)


@dataclass
class Attached:
    store_id: str
    mount_path: str
    writable: bool


def attached_stores(session: Any) -> list[Attached]:
    """The memory stores of a session as the SDK returned it."""
    return [
        Attached(r.memory_store_id, r.mount_path, r.access == "read_write")
        for r in getattr(session, "resources", None) or []
        if getattr(r, "type", None) == "memory_store" and getattr(r, "mount_path", None)
    ]


class WorkerMemory:
    """The memory stores mounted in one session's sandbox on this host."""

    def __init__(
        self, *, client: anthropic.Anthropic, stores: list[Attached], root: Path, uid: int | None
    ) -> None:
        self.stores = stores
        self.root = root
        self.uid = uid
        self.remotes = {s.store_id: ApiStore(client, s.store_id) for s in stores}
        self.lock = threading.Lock()  # one sync at a time per session

    def prepare(self) -> tuple[tuple[str, str, bool], ...]:
        """The stores' directories: the sandbox's memory mounts. They are filled by the pull before
        the first call, in its tool thread (this runs on the worker's event loop)."""
        return store_dirs_prepare(
            root=self.root, stores=[(s.mount_path, s.writable) for s in self.stores], uid=self.uid
        )

    def _base_file(self, store: Attached) -> Path:
        directory = store_dir(self.root, store.mount_path)
        return directory.parent / f".{directory.name}.base.json"  # beside the mount, not in it

    def _base(self, store: Attached) -> dict[str, str]:
        try:
            data = json.loads(self._base_file(store).read_text())
        except (OSError, ValueError):
            return {}
        if data.get("memory_store_id") != store.store_id or not isinstance(data.get("base"), dict):
            return {}
        return {str(k): str(v) for k, v in data["base"].items()}

    def _save(self, store: Attached, old: dict[str, str], base: dict[str, str]) -> None:
        if base == old:
            return
        path = self._base_file(store)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"memory_store_id": store.store_id, "base": base}))
        os.replace(partial, path)

    def pull(self) -> None:
        """Other writers' changes into the sandbox's copies (before each tool call)."""
        with self.lock:
            self._pull()

    def _pull(self) -> None:
        for store in self.stores:
            with store_dir_open(self.root, store.mount_path) as fd:
                if fd is None:
                    continue
                old = self._base(store)
                try:
                    base = store_pull(fd=fd, remote=self.remotes[store.store_id], base=old, uid=self.uid)
                except Exception:  # the call still runs on the copy the sandbox has
                    log.exception("memory pull failed (store %s)", store.store_id)
                    continue
                self._save(store, old, base)

    def push(self) -> list[dict[str, Any]]:
        """The agent's changes out to the stores (after each call that may have written); the text
        blocks to add to the tool result (conflicts, refusals, a failed sync)."""
        with self.lock:
            return self._push()

    def _push(self) -> list[dict[str, Any]]:
        report = PushReport()
        failed = False
        for store in self.stores:
            if not store.writable:
                continue
            with store_dir_open(self.root, store.mount_path) as fd:
                if fd is None:
                    continue
                old = self._base(store)
                try:
                    base = store_push(
                        fd=fd,
                        remote=self.remotes[store.store_id],
                        base=old,
                        uid=self.uid,
                        shown=store.mount_path,
                        report=report,
                    )
                except Exception:  # a sync failure must not turn a finished tool call into a failure
                    log.exception("memory sync failed (store %s)", store.store_id)
                    failed = True
                    continue
                self._save(store, old, base)
        return sync_notes(report) + ([{"type": "text", "text": SYNC_FAILED}] if failed else [])


def memory_client(context: Any) -> anthropic.Anthropic | None:
    """A synchronous client with the work item's sessions token (the tool calls run in threads), or
    None when the item carried none: the memory routes refuse the environment key."""
    source = context.client
    token = getattr(source, "auth_token", None) if source is not None else None
    if not token or not token.startswith(SESSIONS_TOKEN_PREFIX):
        return None
    return anthropic.Anthropic(
        base_url=str(source.base_url), auth_token=token, api_key=None, max_retries=2, timeout=30.0
    )


def worker_memory(context: Any, *, root: Path, uid: int | None) -> WorkerMemory | None:
    stores = attached_stores(context.session)
    if not stores:
        return None
    client = memory_client(context)
    if client is None:
        raise RuntimeError(
            "this session has memory stores attached, but the work item carried no sessions token; "
            "the memory routes refuse the environment key, so its memories cannot be mounted"
        )
    return WorkerMemory(client=client, stores=stores, root=root, uid=uid)


def skill_mounts(context: Any, *, root: Path) -> tuple[tuple[str, str], ...]:
    """The skills the SDK's worker downloaded for this item, copied under the sandbox's root (where
    the sandbox's uid can read them) and mounted read-only at /workspace/skills/<name>/."""
    downloaded = Path(context.workdir) / "skills"
    if not downloaded.is_dir():
        return ()
    holder = root / "skills"
    if holder.exists():
        shutil.rmtree(holder)
    holder.mkdir(mode=0o755)
    mounts = []
    for source in sorted(downloaded.iterdir()):
        if source.name.startswith(".") or source.is_symlink() or not source.is_dir():
            continue
        copy = holder / source.name
        shutil.copytree(source, copy, symlinks=True)  # a link is copied as a link, never followed
        for directory, _dirs, files in os.walk(copy):
            os.chmod(directory, 0o755)
            for name in files:
                file = os.path.join(directory, name)
                if not os.path.islink(file):
                    os.chmod(file, 0o755 if os.stat(file).st_mode & 0o111 else 0o644)
        mounts.append((str(copy), f"{SKILLS_MOUNT}/{source.name}"))
    return tuple(mounts)

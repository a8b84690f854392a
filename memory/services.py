"""Memory stores, memories and memory versions (spec 13). Every change to a memory inserts one
immutable MemoryVersion in the same transaction, attributed to an actor (an API key, a console
user or a session writing through its mount)."""

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Collate
from django.utils import timezone

from accounts.models import ApiKey, Workspace
from agents import definition as d
from api.errors import ApiError, bad_request, not_found
from api.ids import has_prefix, new_id
from api.pagination import Cursor, Page, check_limit, decode, encode, paginate
from api.wire import check_metadata, iso, patch_metadata
from memory.models import Memory, MemoryStore, MemoryVersion

MAX_CONTENT_BYTES = 102_400
MAX_PATH_BYTES = 1024
MAX_PATH_SEGMENTS = 20
NAME_MAX = 255
DESCRIPTION_MAX = 1024
FULL_VIEW_PAGE_MAX = 20
OPERATIONS = ("created", "modified", "deleted")
VIEWS = ("basic", "full")

View = Literal["basic", "full"]
Actor = dict[str, str]


# --- actors --------------------------------------------------------------------------------------


def actor_api(api_key: ApiKey | None) -> Actor | None:
    return {"type": "api_actor", "api_key_id": api_key.pk} if api_key is not None else None


def actor_session(session_id: str) -> Actor:
    return {"type": "session_actor", "session_id": session_id}


def actor_user(user: AbstractBaseUser) -> Actor:
    return {"type": "user_actor", "user_id": f"user_{user.pk}"}


# --- webhook points --------------------------------------------------------------------------------


def memory_store_webhook(*, event: str, store_id: str, workspace: Any) -> None:
    """The one place a `memory_store.created|archived|deleted` webhook is raised, inside the
    transaction that made the change (the webhooks outbox)."""
    from webhooks.services import webhook_event_emit

    webhook_event_emit(workspace=workspace, type=event, data={"id": store_id})


# --- checks ----------------------------------------------------------------------------------------


def check_view(value: str | None, *, default: View) -> View:
    if value is None or value == "":
        return default
    if value not in VIEWS:
        raise bad_request(f"view: must be 'basic' or 'full', got {value!r}.")
    return value  # type: ignore[return-value]


_NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_name(value: Any) -> str:
    name = d.expect_str(value, "name", min_len=1, max_len=NAME_MAX)
    if _NAME_CONTROL.search(name):
        raise bad_request("name: must not contain control characters.")
    return name


def _check_description(value: Any) -> str:
    if value is None:
        return ""
    return d.expect_str(value, "description", max_len=DESCRIPTION_MAX)


def check_path(value: Any, field: str = "path") -> str:
    """Spec 13 path rules: starts with `/`, 1-20 non-empty segments, none `.` or `..`, no control
    or format characters or U+2028/U+2029, NFC, at most 1024 UTF-8 bytes."""
    if not isinstance(value, str):
        raise bad_request(f"{field}: expected a string.")
    if not value.startswith("/"):
        raise bad_request(f"{field}: must start with '/'.")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise bad_request(f"{field}: must be at most {MAX_PATH_BYTES} bytes.")
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise bad_request(f"{field}: must not contain control or format characters ({ord(char):#06x}).")
    if unicodedata.normalize("NFC", value) != value:
        raise bad_request(f"{field}: must be in Unicode Normalization Form C.")
    segments = value[1:].split("/")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise bad_request(f"{field}: must have at most {MAX_PATH_SEGMENTS} segments, got {len(segments)}.")
    for segment in segments:
        if segment == "":
            raise bad_request(f"{field}: segments must not be empty (no '//' and no trailing '/').")
        if segment in (".", ".."):
            raise bad_request(f"{field}: segments must not be '.' or '..'.")
    return value


def check_prefix(value: str | None) -> str:
    if value is None or value == "":
        return "/"
    if not value.startswith("/") or not value.endswith("/"):
        raise bad_request("path_prefix: must start and end with '/'.")
    if value != "/":
        check_path(value[:-1], "path_prefix")
    return value


def check_content(value: Any, field: str = "content") -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{field}: expected a string.")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CONTENT_BYTES:
        raise bad_request(f"{field}: must be at most {MAX_CONTENT_BYTES} bytes, got {size}.")
    return value


def check_sha(value: Any, field: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise bad_request(f"{field}: must be 64 lowercase hexadecimal characters.")
    return value


def sha256_of(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _precondition_failed(message: str) -> ApiError:
    return ApiError(409, message, error_type="memory_precondition_failed_error")


def _path_conflict(path: str) -> ApiError:
    return ApiError(
        409, f"path: a memory already exists at {path!r}.", error_type="memory_path_conflict_error"
    )


def _check_store_writable(store: MemoryStore) -> None:
    if store.is_archived:
        raise bad_request(
            f"memory store {store.pk!r} is archived: its memories can be read and deleted only."
        )


# --- stores ----------------------------------------------------------------------------------------


def store_get(*, workspace: Workspace, store_id: str) -> MemoryStore:
    found = (
        MemoryStore.objects.filter(workspace=workspace, pk=store_id).first()
        if has_prefix(store_id, "memstore")
        else None
    )
    if found is None:
        raise not_found("memory store", store_id)
    return found


def store_wire(store: MemoryStore) -> dict[str, Any]:
    return {
        "id": store.pk,
        "type": "memory_store",
        "name": store.name,
        "description": store.description,
        "metadata": store.metadata,
        "created_at": iso(store.created_at),
        "updated_at": iso(store.updated_at),
        "archived_at": iso(store.archived_at),
    }


def _only(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    for key in body:
        if key not in allowed:
            raise bad_request(f"{key}: unknown field.")
    return body


def store_create(*, workspace: Workspace, body: dict[str, Any]) -> MemoryStore:
    _only(body, ("name", "description", "metadata"))
    name = _check_name(body.get("name"))
    description = _check_description(body.get("description"))
    metadata = check_metadata(d.expect_dict(body["metadata"], "metadata")) if body.get("metadata") else {}
    with transaction.atomic():
        store = MemoryStore.objects.create(
            id=new_id("memstore"), workspace=workspace, name=name, description=description, metadata=metadata
        )
        memory_store_webhook(event="memory_store.created", store_id=store.pk, workspace=workspace)
    return store


def store_update(*, store: MemoryStore, body: dict[str, Any]) -> MemoryStore:
    _only(body, ("name", "description", "metadata"))
    with transaction.atomic():
        locked = MemoryStore.objects.select_for_update().get(pk=store.pk)
        if locked.is_archived:
            raise bad_request(f"memory store {store.pk!r} is archived and cannot be updated.")
        changed = False
        if body.get("name") is not None:
            name = _check_name(body["name"])
            changed |= name != locked.name
            locked.name = name
        if body.get("description") is not None:
            description = _check_description(body["description"])
            changed |= description != locked.description
            locked.description = description
        if body.get("metadata") is not None:
            metadata = patch_metadata(locked.metadata, d.expect_dict(body["metadata"], "metadata"))
            changed |= metadata != locked.metadata
            locked.metadata = metadata
        if changed:
            locked.updated_at = timezone.now()
            locked.save()
    return locked


def store_archive(*, store: MemoryStore) -> MemoryStore:
    now = timezone.now()
    with transaction.atomic():
        # Conditional: archiving twice is a no-op that keeps the first archived_at.
        if MemoryStore.objects.filter(pk=store.pk, archived_at__isnull=True).update(
            archived_at=now, updated_at=now
        ):
            memory_store_webhook(
                event="memory_store.archived", store_id=store.pk, workspace=store.workspace_id
            )
    store.refresh_from_db()
    return store


def store_delete(*, store: MemoryStore) -> dict[str, Any]:
    store_id, workspace_id = store.pk, store.workspace_id
    with transaction.atomic():
        store.delete()  # memories and versions cascade
        memory_store_webhook(event="memory_store.deleted", store_id=store_id, workspace=workspace_id)
    return {"id": store_id, "type": "memory_store_deleted"}


def _range(qs: QuerySet[Any], bounds: dict[str, datetime | None]) -> QuerySet[Any]:
    for op, value in bounds.items():
        if value is not None:
            qs = qs.filter(**{f"created_at__{op}": value})
    return qs


def store_list(
    *,
    workspace: Workspace,
    include_archived: bool = False,
    created_at: dict[str, datetime | None] | None = None,
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    qs = MemoryStore.objects.filter(workspace=workspace)
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    qs = _range(qs, created_at or {})
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )


# --- memories ----------------------------------------------------------------------------------------


def memory_wire(memory: Memory, *, view: View) -> dict[str, Any]:
    return {
        "id": memory.pk,
        "type": "memory",
        "memory_store_id": memory.store_id,
        "path": memory.path,
        "content": memory.content if view == "full" else None,
        "content_sha256": memory.content_sha256,
        "content_size_bytes": memory.content_size_bytes,
        "memory_version_id": memory.memory_version_id,
        "created_at": iso(memory.created_at),
        "updated_at": iso(memory.updated_at),
    }


def memory_get(*, store: MemoryStore, memory_id: str) -> Memory:
    found = Memory.objects.filter(store=store, pk=memory_id).first() if has_prefix(memory_id, "mem") else None
    if found is None:
        raise not_found("memory", memory_id)
    return found


def _version(
    *, memory: Memory, operation: str, actor: Actor | None, content: str | None, path: str, when: datetime
) -> MemoryVersion:
    actor = actor or None
    return MemoryVersion.objects.create(
        id=new_id("memver"),
        store_id=memory.store_id,
        memory_id=memory.pk,
        operation=operation,
        path=path,
        content=content,
        content_sha256=sha256_of(content) if content is not None else None,
        content_size_bytes=len(content.encode("utf-8")) if content is not None else None,
        created_by=actor,
        actor_session_id=(actor or {}).get("session_id"),
        actor_api_key_id=(actor or {}).get("api_key_id"),
        actor_service_account_id=(actor or {}).get("service_account_id"),
        created_at=when,
    )


def memory_create(*, store: MemoryStore, path: Any, content: Any, actor: Actor | None) -> Memory:
    path = check_path(path)
    content = check_content(content)
    now = timezone.now()
    try:
        with transaction.atomic():
            locked = MemoryStore.objects.select_for_update().get(pk=store.pk)
            _check_store_writable(locked)
            if Memory.objects.filter(store=store, path=path).exists():
                raise _path_conflict(path)
            memory = Memory(
                id=new_id("mem"),
                store=store,
                path=path,
                content=content,
                content_sha256=sha256_of(content),
                content_size_bytes=len(content.encode("utf-8")),
                created_at=now,
                updated_at=now,
            )
            version = _version(
                memory=memory, operation="created", actor=actor, content=content, path=path, when=now
            )
            memory.memory_version_id = version.pk
            memory.save(force_insert=True)
    except IntegrityError:
        # Two creates raced for the path; the unique constraint picked the winner.
        raise _path_conflict(path) from None
    return memory


def memory_update(
    *,
    store: MemoryStore,
    memory: Memory,
    body: dict[str, Any],
    actor: Actor | None,
) -> Memory:
    _only(body, ("content", "path", "precondition"))
    content = check_content(body["content"]) if body.get("content") is not None else None
    path = check_path(body["path"]) if body.get("path") is not None else None
    expected: str | None = None
    if body.get("precondition") is not None:
        pre = d.expect_dict(body["precondition"], "precondition")
        d.only_keys(pre, ("type", "content_sha256"), "precondition")
        if pre.get("type") != "content_sha256":
            raise bad_request("precondition.type: must be 'content_sha256'.")
        expected = check_sha(pre.get("content_sha256"), "precondition.content_sha256")
    try:
        with transaction.atomic():
            _check_store_writable(MemoryStore.objects.select_for_update().get(pk=store.pk))
            # The row lock orders concurrent writers; the precondition is checked under it.
            locked = Memory.objects.select_for_update().filter(pk=memory.pk).first()
            if locked is None:
                raise not_found("memory", memory.pk)
            if expected is not None and locked.content_sha256 != expected:
                raise _precondition_failed(
                    f"precondition.content_sha256: the memory's content_sha256 is {locked.content_sha256}, "
                    f"not {expected}."
                )
            new_content = locked.content if content is None else content
            new_path = locked.path if path is None else path
            if new_content == locked.content and new_path == locked.path:
                return locked
            if new_path != locked.path and Memory.objects.filter(store=store, path=new_path).exists():
                raise _path_conflict(new_path)
            now = timezone.now()
            version = _version(
                memory=locked, operation="modified", actor=actor, content=new_content, path=new_path, when=now
            )
            locked.content = new_content
            locked.path = new_path
            locked.content_sha256 = sha256_of(new_content)
            locked.content_size_bytes = len(new_content.encode("utf-8"))
            locked.memory_version_id = version.pk
            locked.updated_at = now
            locked.save()
    except IntegrityError:
        raise _path_conflict(path or memory.path) from None
    return locked


def memory_delete(
    *, store: MemoryStore, memory: Memory, expected_sha: str | None, actor: Actor | None
) -> dict[str, Any]:
    """Deleting is allowed in an archived store (spec 1.11); the versions stay."""
    if expected_sha:
        check_sha(expected_sha, "expected_content_sha256")
    with transaction.atomic():
        # Store first, then the memory: the order every writer takes (memory_update does the same).
        # The version row below references the store, so taking the memory first could deadlock
        # with an update that holds the store and waits for the memory.
        MemoryStore.objects.select_for_update().filter(pk=store.pk).first()
        locked = Memory.objects.select_for_update().filter(pk=memory.pk).first()
        if locked is None:
            raise not_found("memory", memory.pk)
        if expected_sha and locked.content_sha256 != expected_sha:
            raise _precondition_failed(
                f"expected_content_sha256: the memory's content_sha256 is {locked.content_sha256}, "
                f"not {expected_sha}."
            )
        _version(
            memory=locked,
            operation="deleted",
            actor=actor,
            content=None,
            path=locked.path,
            when=timezone.now(),
        )
        locked.delete()
    return {"id": memory.pk, "type": "memory_deleted"}


def _bytewise(column: str) -> Any:
    """Paths sort by code point, as the hosted service lists them; PostgreSQL's default collation
    would sort by locale ("/notes/" before "/notes-archive/"). SQLite compares bytes already."""
    if connection.vendor == "postgresql":
        return Collate(F(column), "C")
    return F(column)


@dataclass
class Prefix:
    path: str


def memory_list(
    *,
    store: MemoryStore,
    path_prefix: str | None = None,
    depth: int | None = None,
    view: View = "basic",
    limit: int | None = None,
    page: str | None = None,
) -> tuple[list[Memory | Prefix], str | None]:
    """Memories below `path_prefix` in path order. With `depth` N > 0, memories more than N
    segments below the prefix are rolled up into one `memory_prefix` item per directory at depth N.
    The cursor is the last path returned, so a page never splits a rolled-up directory."""
    prefix = check_prefix(path_prefix)
    if depth is not None and depth < 0:
        raise bad_request("depth: must be 0 or more.")
    size = check_limit(limit, default=20, maximum=100)
    if view == "full":
        size = min(size, FULL_VIEW_PAGE_MAX)
    after = decode(page, order="asc").key[0] if page else None
    qs = Memory.objects.filter(store=store).annotate(sort_path=_bytewise("path"))
    if prefix != "/":
        qs = qs.filter(path__startswith=prefix)
    if after is not None:
        qs = qs.filter(sort_path__gt=after)
    items: list[Memory | Prefix] = []
    if not depth:
        rows = list(qs.order_by("sort_path")[: size + 1])
        items = list(rows[:size])
        more = len(rows) > size
    else:
        # Walk paths only, rolling deeper ones up; fetch full rows for the page's memories.
        base_segments = prefix.count("/") - 1
        chosen: list[tuple[str, str | None]] = []  # (path or prefix, memory id)
        more = False
        for memory_id, path in qs.order_by("sort_path").values_list("id", "path").iterator():
            parts = path[1:].split("/")
            if len(parts) - base_segments > depth:
                rolled = "/" + "/".join(parts[: base_segments + depth]) + "/"
                if chosen and chosen[-1][0] == rolled:
                    continue
                entry: tuple[str, str | None] = (rolled, None)
            else:
                entry = (path, memory_id)
            if len(chosen) == size:
                more = True
                break
            chosen.append(entry)
        rows_by_id = Memory.objects.in_bulk([mid for _, mid in chosen if mid])
        items = [rows_by_id[mid] if mid else Prefix(path) for path, mid in chosen]
    next_page = None
    if more and items:
        last = items[-1]
        last_key = last.path
        if isinstance(last, Prefix):
            # Skip everything inside the rolled-up directory: "\U0010ffff" sorts after any path.
            last_key = last.path + "\U0010ffff"
        next_page = encode(Cursor([last_key, ""], "asc", "next"))
    return items, next_page


def list_item_wire(item: Memory | Prefix, *, view: View) -> dict[str, Any]:
    if isinstance(item, Prefix):
        return {"type": "memory_prefix", "path": item.path}
    return memory_wire(item, view=view)


# --- versions ----------------------------------------------------------------------------------------


def version_wire(version: MemoryVersion, *, view: View) -> dict[str, Any]:
    redacted = version.redacted_at is not None
    return {
        "id": version.pk,
        "type": "memory_version",
        "memory_id": version.memory_id,
        "memory_store_id": version.store_id,
        "operation": version.operation,
        "path": None if redacted else version.path,
        "content": version.content if (view == "full" and not redacted) else None,
        "content_sha256": None if redacted else version.content_sha256,
        "content_size_bytes": None if redacted else version.content_size_bytes,
        "created_by": version.created_by,
        "created_at": iso(version.created_at),
        "redacted_at": iso(version.redacted_at),
        "redacted_by": version.redacted_by,
    }


def version_get(*, store: MemoryStore, version_id: str) -> MemoryVersion:
    found = (
        MemoryVersion.objects.filter(store=store, pk=version_id).first()
        if has_prefix(version_id, "memver")
        else None
    )
    if found is None:
        raise not_found("memory version", version_id)
    return found


def version_list(
    *,
    store: MemoryStore,
    memory_id: str | None = None,
    operation: str | None = None,
    session_id: str | None = None,
    api_key_id: str | None = None,
    service_account_id: str | None = None,
    created_at: dict[str, datetime | None] | None = None,
    view: View = "basic",
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    size = check_limit(limit, default=20, maximum=100)
    if view == "full":
        size = min(size, FULL_VIEW_PAGE_MAX)
    qs = MemoryVersion.objects.filter(store=store)
    if memory_id:
        qs = qs.filter(memory_id=memory_id)
    if operation:
        if operation not in OPERATIONS:
            raise bad_request(f"operation: must be one of {', '.join(OPERATIONS)}, got {operation!r}.")
        qs = qs.filter(operation=operation)
    if session_id:
        qs = qs.filter(actor_session_id=session_id)
    if api_key_id:
        qs = qs.filter(actor_api_key_id=api_key_id)
    if service_account_id:
        qs = qs.filter(actor_service_account_id=service_account_id)
    qs = _range(qs, created_at or {})
    return paginate(qs, fields=("created_at", "id"), limit=size, order="desc", page=page)


def version_redact(*, store: MemoryStore, version: MemoryVersion, actor: Actor | None) -> MemoryVersion:
    """Clear a version's content and path for good. The version a live memory currently points at
    cannot be redacted: its content is what the memory holds (update or delete the memory first)."""
    with transaction.atomic():
        locked = MemoryVersion.objects.select_for_update().get(pk=version.pk)
        if locked.redacted_at is not None:
            return locked
        if Memory.objects.filter(store=store, memory_version_id=locked.pk).exists():
            raise bad_request(
                f"memory version {locked.pk!r} is the current content of memory {locked.memory_id!r}; "
                "update or delete the memory before redacting it."
            )
        now = timezone.now()
        MemoryVersion.objects.filter(pk=locked.pk, redacted_at__isnull=True).update(
            content=None,
            path=None,
            content_sha256=None,
            content_size_bytes=None,
            redacted_at=now,
            redacted_by=actor,
        )
        locked.refresh_from_db()
    return locked


def versions_of_session(*, session_id: str) -> QuerySet[MemoryVersion]:
    return MemoryVersion.objects.filter(actor_session_id=session_id)

"""/v1/memory_stores, their memories and memory versions (spec 13). Thin: parse, one service call,
wire dict. Bodies and query strings are read by hand so that every rejection names its field.

A self-hosted worker syncs its session's stores with the work item's sessions token (the SDK's
`lib/tools/_memories.py`): the memory and version routes take it, scoped by
`selfhosted.auth.check_memory_store_access`, and its writes are the session's versions. The routes
that manage stores themselves stay with API keys."""

import json
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest
from django.utils.dateparse import parse_datetime
from ninja import Router

from api.errors import bad_request
from api.pagination import page_body
from api.wire import to_utc
from memory import services
from memory.models import MemoryStore
from selfhosted.auth import (
    API_KEY_OR_SESSIONS_TOKEN,
    check_memory_store_access,
    refuse_sessions_token,
    worker_scope,
)

router = Router(tags=["memory_stores"], auth=API_KEY_OR_SESSIONS_TOKEN)


def _body(request: HttpRequest) -> dict[str, Any]:
    raw = request.body
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("body: not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    return body


def _int(request: HttpRequest, name: str) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name}: expected an integer, got {raw!r}.") from None


def _bool(request: HttpRequest, name: str) -> bool:
    raw = (request.GET.get(name) or "").lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise bad_request(f"{name}: expected true or false, got {raw!r}.")


def _created_at(request: HttpRequest) -> dict[str, datetime | None]:
    bounds: dict[str, datetime | None] = {}
    for op in ("gte", "lte"):
        raw = request.GET.get(f"created_at[{op}]")
        if not raw:
            continue
        try:
            parsed = parse_datetime(raw.strip().replace(" ", "+"))
        except ValueError:
            parsed = None
        if parsed is None:
            raise bad_request(f"created_at[{op}]: {raw!r} is not an RFC 3339 timestamp.")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        bounds[op] = to_utc(parsed, field=f"created_at[{op}]")
    return bounds


def _store(request: HttpRequest, store_id: str, *, write: bool = False) -> MemoryStore:
    check_memory_store_access(request, store_id, write=write)
    return services.store_get(workspace=request.workspace, store_id=store_id)  # type: ignore[attr-defined]


def _managed_store(request: HttpRequest, store_id: str, what: str) -> MemoryStore:
    refuse_sessions_token(request, what)
    return _store(request, store_id)


def _actor(request: HttpRequest) -> services.Actor | None:
    scope = worker_scope(request)
    if scope is not None and scope.session_id is not None:
        return services.actor_session(scope.session_id)  # as the sandbox's own sync attributes it
    return services.actor_api(request.auth)  # type: ignore[attr-defined]


# --- stores --------------------------------------------------------------------------------------------


@router.post("/memory_stores")
def stores_create(request: HttpRequest) -> dict[str, Any]:
    refuse_sessions_token(request, "create memory stores")
    store = services.store_create(workspace=request.workspace, body=_body(request))  # type: ignore[attr-defined]
    return services.store_wire(store)


@router.get("/memory_stores")
def stores_list(request: HttpRequest) -> dict[str, Any]:
    refuse_sessions_token(request, "list memory stores")
    found = services.store_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        include_archived=_bool(request, "include_archived"),
        created_at=_created_at(request),
        limit=_int(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return page_body(found, [services.store_wire(s) for s in found.items])


@router.get("/memory_stores/{store_id}")
def stores_retrieve(request: HttpRequest, store_id: str) -> dict[str, Any]:
    return services.store_wire(_store(request, store_id))


@router.post("/memory_stores/{store_id}")
def stores_update(request: HttpRequest, store_id: str) -> dict[str, Any]:
    store = _managed_store(request, store_id, "update memory stores")
    return services.store_wire(services.store_update(store=store, body=_body(request)))


@router.delete("/memory_stores/{store_id}")
def stores_delete(request: HttpRequest, store_id: str) -> dict[str, Any]:
    return services.store_delete(store=_managed_store(request, store_id, "delete memory stores"))


@router.post("/memory_stores/{store_id}/archive")
def stores_archive(request: HttpRequest, store_id: str) -> dict[str, Any]:
    store = _managed_store(request, store_id, "archive memory stores")
    return services.store_wire(services.store_archive(store=store))


# --- memories -----------------------------------------------------------------------------------------


@router.post("/memory_stores/{store_id}/memories")
def memories_create(request: HttpRequest, store_id: str) -> dict[str, Any]:
    store = _store(request, store_id, write=True)
    view = services.check_view(request.GET.get("view"), default="basic")
    body = _body(request)
    for key in body:
        if key not in ("path", "content"):
            raise bad_request(f"{key}: unknown field.")
    if "path" not in body:
        raise bad_request("path: field required.")
    if "content" not in body:
        raise bad_request("content: field required.")
    memory = services.memory_create(
        store=store, path=body["path"], content=body["content"], actor=_actor(request)
    )
    return services.memory_wire(memory, view=view)


@router.get("/memory_stores/{store_id}/memories")
def memories_list(request: HttpRequest, store_id: str) -> dict[str, Any]:
    store = _store(request, store_id)
    view = services.check_view(request.GET.get("view"), default="basic")
    items, next_page = services.memory_list(
        store=store,
        path_prefix=request.GET.get("path_prefix"),
        depth=_int(request, "depth"),
        view=view,
        limit=_int(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return {"data": [services.list_item_wire(i, view=view) for i in items], "next_page": next_page}


@router.get("/memory_stores/{store_id}/memories/{memory_id}")
def memories_retrieve(request: HttpRequest, store_id: str, memory_id: str) -> dict[str, Any]:
    store = _store(request, store_id)
    view = services.check_view(request.GET.get("view"), default="full")
    return services.memory_wire(services.memory_get(store=store, memory_id=memory_id), view=view)


@router.post("/memory_stores/{store_id}/memories/{memory_id}")
def memories_update(request: HttpRequest, store_id: str, memory_id: str) -> dict[str, Any]:
    store = _store(request, store_id, write=True)
    view = services.check_view(request.GET.get("view"), default="basic")
    memory = services.memory_get(store=store, memory_id=memory_id)
    memory = services.memory_update(store=store, memory=memory, body=_body(request), actor=_actor(request))
    return services.memory_wire(memory, view=view)


@router.delete("/memory_stores/{store_id}/memories/{memory_id}")
def memories_delete(request: HttpRequest, store_id: str, memory_id: str) -> dict[str, Any]:
    store = _store(request, store_id, write=True)
    memory = services.memory_get(store=store, memory_id=memory_id)
    return services.memory_delete(
        store=store,
        memory=memory,
        expected_sha=request.GET.get("expected_content_sha256") or None,
        actor=_actor(request),
    )


# --- versions ----------------------------------------------------------------------------------------


@router.get("/memory_stores/{store_id}/memory_versions")
def versions_list(request: HttpRequest, store_id: str) -> dict[str, Any]:
    store = _store(request, store_id)
    view = services.check_view(request.GET.get("view"), default="basic")
    found = services.version_list(
        store=store,
        memory_id=request.GET.get("memory_id") or None,
        operation=request.GET.get("operation") or None,
        session_id=request.GET.get("session_id") or None,
        api_key_id=request.GET.get("api_key_id") or None,
        service_account_id=request.GET.get("service_account_id") or None,
        created_at=_created_at(request),
        view=view,
        limit=_int(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return page_body(found, [services.version_wire(v, view=view) for v in found.items])


@router.get("/memory_stores/{store_id}/memory_versions/{version_id}")
def versions_retrieve(request: HttpRequest, store_id: str, version_id: str) -> dict[str, Any]:
    store = _store(request, store_id)
    view = services.check_view(request.GET.get("view"), default="full")
    return services.version_wire(services.version_get(store=store, version_id=version_id), view=view)


@router.post("/memory_stores/{store_id}/memory_versions/{version_id}/redact")
def versions_redact(request: HttpRequest, store_id: str, version_id: str) -> dict[str, Any]:
    store = _managed_store(request, store_id, "redact memory versions")
    version = services.version_get(store=store, version_id=version_id)
    version = services.version_redact(store=store, version=version, actor=_actor(request))
    return services.version_wire(version, view="full")

"""Memory stores in the console: browse a store by path, view and edit a memory (with the
content_sha256 it was read at as the precondition, so a concurrent change is not overwritten),
its versions with a diff against the one before, and redaction. Changes are attributed to the
console user (user_actor)."""

import difflib
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from api.errors import ApiError
from console.access import console_view, render_page
from memory import services
from memory.models import Memory, MemoryStore, MemoryVersion

VERSIONS_SHOWN = 50


def _store(request: HttpRequest, store_id: str) -> MemoryStore:
    store = MemoryStore.objects.filter(pk=store_id, workspace=request.access.workspace).first()  # type: ignore[attr-defined]
    if store is None:
        raise Http404("No such memory store")
    return store


def _memory(store: MemoryStore, memory_id: str) -> Memory:
    memory = Memory.objects.filter(pk=memory_id, store=store).first()
    if memory is None:
        raise Http404("No such memory")
    return memory


def _actor(request: HttpRequest) -> services.Actor:
    return services.actor_user(request.user)  # type: ignore[arg-type]


@console_view(Role.VIEWER)
def memory_store_list(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not request.access.can_edit:  # type: ignore[attr-defined]
            raise Http404("Editors create memory stores")
        try:
            store = services.store_create(
                workspace=workspace,
                body={
                    "name": request.POST.get("name", "").strip(),
                    "description": request.POST.get("description", "").strip(),
                },
            )
        except ApiError as exc:
            errors["name"] = exc.message
        else:
            messages.success(request, f"Memory store {store.name!r} created.")
            return HttpResponseRedirect(f"/memory/{store.pk}")
    stores = MemoryStore.objects.filter(workspace=workspace).order_by("archived_at", "name")
    return render_page(
        request,
        "console/memory_list.html",
        {"nav": "memory", "stores": stores, "errors": errors, "form": request.POST},
        status=400 if errors else 200,
    )


def _crumbs(prefix: str) -> list[tuple[str, str]]:
    parts = [p for p in prefix.strip("/").split("/") if p]
    return [(part, "/" + "/".join(parts[: i + 1]) + "/") for i, part in enumerate(parts)]


@console_view(Role.VIEWER)
def memory_store_detail(request: HttpRequest, store_id: str) -> HttpResponse:
    store = _store(request, store_id)
    prefix = request.GET.get("prefix") or "/"
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not request.access.can_edit:  # type: ignore[attr-defined]
            raise Http404("Editors write memories")
        try:
            memory = services.memory_create(
                store=store,
                path=request.POST.get("path", "").strip(),
                content=request.POST.get("content", "").replace("\r\n", "\n"),
                actor=_actor(request),
            )
        except ApiError as exc:
            errors["path"] = exc.message
        else:
            messages.success(request, f"Memory {memory.path} saved.")
            return HttpResponseRedirect(f"/memory/{store.pk}/m/{memory.pk}")
    try:
        items, more = services.memory_list(store=store, path_prefix=prefix, depth=1, limit=100)
    except ApiError as exc:
        messages.error(request, exc.message)
        prefix, (items, more) = "/", services.memory_list(store=store, depth=1, limit=100)
    context = {
        "nav": "memory",
        "store": store,
        "prefix": prefix,
        "crumbs": _crumbs(prefix),
        "items": items,
        "more": bool(more),
        "errors": errors,
        "form": request.POST,
        "sessions": store.attachments.select_related("session").order_by("-session__created_at")[:20],
    }
    return render_page(request, "console/memory_store.html", context, status=400 if errors else 200)


@require_POST
@console_view(Role.EDITOR)
def memory_store_archive(request: HttpRequest, store_id: str) -> HttpResponse:
    store = services.store_archive(store=_store(request, store_id))
    messages.success(request, f"Memory store {store.name!r} archived: it can be read, not changed.")
    return HttpResponseRedirect(f"/memory/{store.pk}")


def _diff_rows(old: str, new: str) -> list[dict[str, str]]:
    left, right = old.splitlines(), new.splitlines()
    rows = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        olds, news = left[i1:i2], right[j1:j2]
        for k in range(max(len(olds), len(news))):
            rows.append(
                {
                    "tag": tag,
                    "old": olds[k] if k < len(olds) else "",
                    "new": news[k] if k < len(news) else "",
                }
            )
    return rows


def _versions(store: MemoryStore, memory_id: str) -> list[dict[str, Any]]:
    rows = list(
        MemoryVersion.objects.filter(store=store, memory_id=memory_id).order_by("-created_at", "-id")[
            :VERSIONS_SHOWN
        ]
    )
    shown = []
    for index, version in enumerate(rows):
        before = rows[index + 1] if index + 1 < len(rows) else None
        old = (before.content or "") if before is not None and before.redacted_at is None else ""
        new = version.content or ""
        diff = _diff_rows(old, new) if version.redacted_at is None and version.operation != "deleted" else []
        shown.append({"version": version, "actor": version.created_by or {}, "diff": diff})
    return shown


@console_view(Role.VIEWER)
def memory_detail(request: HttpRequest, store_id: str, memory_id: str) -> HttpResponse:
    store = _store(request, store_id)
    memory = Memory.objects.filter(pk=memory_id, store=store).first()
    errors: dict[str, str] = {}
    if request.method == "POST":
        if not request.access.can_edit:  # type: ignore[attr-defined]
            raise Http404("Editors edit memories")
        if memory is None:
            raise Http404("No such memory")
        body: dict[str, Any] = {
            "content": request.POST.get("content", "").replace("\r\n", "\n"),
            "precondition": {"type": "content_sha256", "content_sha256": request.POST.get("sha", "")},
        }
        path = request.POST.get("path", "").strip()
        if path and path != memory.path:
            body["path"] = path
        try:
            memory = services.memory_update(store=store, memory=memory, body=body, actor=_actor(request))
        except ApiError as exc:
            errors["content"] = (
                "Someone changed this memory since you opened it; your edit was not saved. "
                "The current content is below."
                if exc.status == 409 and exc.error_type == "memory_precondition_failed_error"
                else exc.message
            )
            memory.refresh_from_db()
        else:
            messages.success(request, "Memory saved.")
            return HttpResponseRedirect(f"/memory/{store.pk}/m/{memory.pk}")
    versions = _versions(store, memory_id)
    if memory is None and not versions:
        raise Http404("No such memory")
    context = {
        "nav": "memory",
        "store": store,
        "memory": memory,
        "memory_id": memory_id,
        "versions": versions,
        "errors": errors,
        "crumbs": _crumbs(memory.path.rsplit("/", 1)[0] + "/") if memory is not None else [],
    }
    return render_page(request, "console/memory_detail.html", context, status=400 if errors else 200)


@require_POST
@console_view(Role.EDITOR)
def memory_delete(request: HttpRequest, store_id: str, memory_id: str) -> HttpResponse:
    store = _store(request, store_id)
    memory = _memory(store, memory_id)
    try:
        services.memory_delete(
            store=store, memory=memory, expected_sha=request.POST.get("sha") or None, actor=_actor(request)
        )
    except ApiError as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(f"/memory/{store.pk}/m/{memory.pk}")
    messages.success(request, f"Memory {memory.path} deleted; its versions are kept.")
    return HttpResponseRedirect(f"/memory/{store.pk}")


@require_POST
@console_view(Role.EDITOR)
def memory_version_redact(request: HttpRequest, store_id: str, version_id: str) -> HttpResponse:
    store = _store(request, store_id)
    version = MemoryVersion.objects.filter(pk=version_id, store=store).first()
    if version is None:
        raise Http404("No such memory version")
    try:
        services.version_redact(store=store, version=version, actor=_actor(request))
    except ApiError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Version redacted: its content and path are gone for good.")
    return HttpResponseRedirect(f"/memory/{store.pk}/m/{version.memory_id}")

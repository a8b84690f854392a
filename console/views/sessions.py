import datetime as dt
import json
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.loader import render_to_string
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_POST

from accounts.models import Role
from agents.models import Agent
from api.errors import ApiError
from console.access import console_view, render_page
from console.timeline import (
    ChatContext,
    chat_item,
    pending_actions,
    session_cost,
    status_label,
    trace_references,
    trace_rows,
    with_costs,
    work_state,
)
from console.trace import trace_events, trace_markdown, trace_tree, trace_view_json
from files.models import ResourceType
from selfhosted.views import session_worker_context
from sessions.models import Event, Session, Status

CHAT_WINDOW = 300  # events read for the chat; older ones are one click away
TRACE_PAGE = 2000  # events per trace.json page: the replay fetches the JSON of opened rows in such ranges
TRACE_KINDS = [
    ("message", "Messages"),
    ("tool", "Tool calls"),
    ("span", "Model requests"),
    ("error", "Errors"),
    ("status", "Status changes"),
]


def _session(request: HttpRequest, session_id: str) -> Session:
    session = (
        Session.objects.select_related("agent", "environment")
        .filter(
            pk=session_id,
            workspace=request.access.workspace,  # type: ignore[attr-defined]
        )
        .first()
    )
    if session is None:
        raise Http404("No such session")
    return session


def _parse_date(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


@console_view()
def session_list(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    q = request.GET
    qs = Session.objects.filter(workspace=workspace).select_related("agent")
    if not q.get("archived"):
        qs = qs.filter(archived_at=None)
    if q.get("agent"):
        qs = qs.filter(agent_id=q["agent"])
    if q.get("status") in Status.values:
        qs = qs.filter(status=q["status"])
    start, end = _parse_date(q.get("from", "")), _parse_date(q.get("to", ""))
    if start:
        qs = qs.filter(created_at__gte=dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC))
    if end:
        qs = qs.filter(
            created_at__lt=dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
        )
    meta = q.get("metadata", "").strip()
    if meta:
        key, _, value = (part.strip() for part in meta.partition("="))
        # `key=value` or just `key`; the key is checked so it cannot become a lookup path.
        if key.replace("-", "_").isidentifier() and "__" not in key:
            qs = qs.filter(**{f"metadata__{key}": value}) if value else qs.filter(metadata__has_key=key)
        else:
            qs = qs.none()
    text = q.get("q", "").strip()
    if text:
        qs = qs.filter(Q(title__icontains=text) | Q(id__icontains=text) | Q(agent__name__icontains=text))
    qs = qs.order_by("-created_at", "-id")
    page = Paginator(qs, 25).get_page(q.get("page"))
    with_costs(list(page.object_list))
    params = q.copy()
    params.pop("page", None)
    context = {
        "nav": "sessions",
        "page": page,
        "agents": Agent.objects.filter(workspace=workspace).order_by("name").only("id", "name"),
        "statuses": Status.values,
        "filters": q,
        "query": params.urlencode(),
        "filtered": any(q.get(k) for k in ("agent", "status", "from", "to", "metadata", "q")),
    }
    template = "console/_session_results.html" if request.htmx else "console/session_list.html"  # type: ignore[attr-defined]
    return render_page(request, template, context)


def chat_events(session: Session, *, before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
    qs = Event.objects.filter(session=session)
    if before:
        qs = qs.filter(seq__lt=before)
    rows = list(qs.order_by("-seq")[:CHAT_WINDOW])
    rows.reverse()
    context = ChatContext(threads=dict(session.threads.values_list("id", "agent_name")))
    context.observe(rows)  # a decision comes after the call it decides: read them all first
    items = [item for item in (chat_item(e, context=context) for e in rows) if item is not None]
    earlier = rows[0].seq if rows and rows[0].seq > 1 else None
    return items, earlier


@console_view()
def session_detail(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    before = request.GET.get("before")
    items, earlier = chat_events(session, before=int(before) if before and before.isdigit() else None)
    context = {
        "nav": "sessions",
        "session": session,
        "items": items,
        "earlier": earlier,
        "last_seq": session.last_seq,
        "actions": pending_actions(session),
        "cost": session_cost(session),
        "paged": bool(before),
        "repositories": session.resources.filter(type=ResourceType.GITHUB_REPOSITORY).order_by(
            "created_at", "id"
        ),
        "status_label": status_label(session),
        "working": work_state(session),
        **_outcomes_and_budget(session),
        **session_worker_context(session),  # self_hosted: "waiting for a worker since …"
    }
    return render_page(request, "console/session_detail.html", context)


def _answer(request: HttpRequest, session: Session, *, error: str | None, done: str) -> HttpResponse:
    """htmx posts get a note for the page's live region and stay on the page (the websocket brings
    the events); plain posts redirect back, as before."""
    if request.htmx:  # type: ignore[attr-defined]
        html = render_to_string("console/_live_note.html", {"error": error, "done": done})
        response = HttpResponse(html)
        response["X-Galley-Result"] = "error" if error else "ok"
        return response
    if error:
        messages.error(request, error)
    else:
        messages.success(request, done)
    return HttpResponseRedirect(f"/sessions/{session.pk}")


def _outcomes_and_budget(session: Session) -> dict[str, Any]:
    from console.timeline import money
    from harness import budget
    from harness.outcomes import outcome_history

    limit = budget.limit_cents(session.budget)
    shown = None
    if limit is not None:
        spent = budget.spent_cents(session)
        shown = {"spent": money(spent * 10_000), "limit": money(limit * 10_000), "reached": spent >= limit}
    return {"outcomes": outcome_history(session.pk), "budget": shown}


def _send(request: HttpRequest, session: Session, events: list[dict[str, Any]], done: str) -> HttpResponse:
    from sessions.services import events_send  # core-b's service: the API's validation path

    try:
        with transaction.atomic():
            events_send(session=session, events=events)
    except ApiError as exc:
        return _answer(request, session, error=exc.message, done=done)
    return _answer(request, session, error=None, done=done)


@require_POST
@console_view(Role.EDITOR)
def session_send(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    text = request.POST.get("text", "").strip()
    if not text:
        return _answer(request, session, error="Write a message before sending.", done="")
    return _send(
        request,
        session,
        [{"type": "user.message", "content": [{"type": "text", "text": text}]}],
        "Message sent.",
    )


@require_POST
@console_view(Role.EDITOR)
def session_interrupt(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    return _send(request, session, [{"type": "user.interrupt"}], "Interrupt sent.")


@require_POST
@console_view(Role.EDITOR)
def session_confirm(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    result = request.POST.get("result")
    if result not in ("allow", "deny"):
        return _answer(request, session, error="Choose approve or deny.", done="")
    event: dict[str, Any] = {
        "type": "user.tool_confirmation",
        "tool_use_id": request.POST.get("tool_use_id", ""),
        "result": result,
    }
    if result == "deny" and request.POST.get("deny_message", "").strip():
        event["deny_message"] = request.POST["deny_message"].strip()
    if request.POST.get("session_thread_id"):
        event["session_thread_id"] = request.POST["session_thread_id"]
    return _send(request, session, [event], "Approved." if result == "allow" else "Denied.")


@require_POST
@console_view(Role.EDITOR)
def session_custom_result(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    event: dict[str, Any] = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": request.POST.get("custom_tool_use_id", ""),
        "content": [{"type": "text", "text": request.POST.get("text", "")}],
        "is_error": request.POST.get("is_error") == "on",
    }
    if request.POST.get("session_thread_id"):
        event["session_thread_id"] = request.POST["session_thread_id"]
    return _send(request, session, [event], "Answer sent.")


@require_POST
@console_view(Role.EDITOR)
def session_archive(request: HttpRequest, session_id: str) -> HttpResponse:
    from sessions.services import session_archive as archive

    session = _session(request, session_id)
    try:
        with transaction.atomic():
            archive(session=session)
    except ApiError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Session archived.")
    return HttpResponseRedirect(f"/sessions/{session.pk}")


@console_view()
def session_trace(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    return render_page(
        request,
        "console/session_trace.html",
        {"nav": "sessions", "session": session, "cost": session_cost(session), "kinds": TRACE_KINDS},
    )


@console_view()
def session_trace_json(request: HttpRequest, session_id: str) -> HttpResponse:
    """The trace as JSON: pages of TRACE_PAGE events after `after` for the replay, or the whole log
    with `download=1` (the export)."""
    session = _session(request, session_id)
    download = bool(request.GET.get("download"))
    after_text = request.GET.get("after", "0")
    after = int(after_text) if after_text.isdigit() else 0
    limit_text = request.GET.get("limit", "")
    limit = min(int(limit_text), TRACE_PAGE) if limit_text.isdigit() and int(limit_text) > 0 else TRACE_PAGE
    qs = Event.objects.filter(session=session, seq__gt=after).order_by("seq")
    events = list(qs) if download else list(qs[: limit + 1])
    more = len(events) > limit and not download
    events = events[:limit] if more else events
    refs = trace_references(events)
    earlier = {e.id: e for e in Event.objects.filter(session=session, id__in=refs)} if refs else {}
    body = {
        "session_id": session.pk,
        "agent": session.agent_snapshot,
        "status": session.status,
        "threads": {t.id: t.agent_name for t in session.threads.all()},
        "rows": trace_rows(session, events, earlier),
        "next_after": events[-1].seq if more else None,
    }
    if request.GET.get("lean") and not download:
        # The replay's pages: each row's full event is fetched when it is opened (limit=1).
        for row in body["rows"]:
            row.pop("event", None)
    response = JsonResponse(body, json_dumps_params={"ensure_ascii": False})
    if download:
        response["Content-Disposition"] = f'attachment; filename="{session.pk}-trace.json"'
    return response


@console_view()
def session_trace_tree(request: HttpRequest, session_id: str) -> HttpResponse:
    """The trace tree (turns, model requests, tool calls, roll-ups) as JSON, or as markdown with
    `format=md`: the whole trace (the "copy the whole trace" button), or one turn's with `lane` and
    `turn` (its index)."""
    session = _session(request, session_id)
    tree = trace_tree(session, trace_events(session))
    if request.GET.get("format") != "md":
        return JsonResponse(tree, json_dumps_params={"ensure_ascii": False})
    if "turn" not in request.GET:
        return HttpResponse(trace_markdown(tree), content_type="text/markdown; charset=utf-8")
    lane_id, index = request.GET.get("lane", "main"), request.GET.get("turn", "")
    for lane in tree["lanes"]:
        for turn in lane["turns"] if lane["id"] == lane_id else []:
            if str(turn["index"]) == index:
                return HttpResponse(turn["markdown"], content_type="text/markdown; charset=utf-8")
    raise Http404("No such turn")


@console_view()
@gzip_page
def session_trace_data(request: HttpRequest, session_id: str) -> HttpResponse:
    """What the trace page draws, in one compact response (`console.trace.trace_view`); with
    `after=<last_seq>`, what changed since (the live page's polls)."""
    session = _session(request, session_id)
    after_text = request.GET.get("after", "")
    if after_text and not after_text.isdigit():
        return JsonResponse(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "after: expected a sequence number."},
            },
            status=400,
        )
    after = int(after_text) if after_text else None
    return HttpResponse(trace_view_json(session, after=after), content_type="application/json")


def render_chat_item(item: dict[str, Any]) -> str:
    return render_to_string("console/_chat_item.html", {"item": item})


def json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)

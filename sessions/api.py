"""/v1 sessions, events, streams and threads (spec 5, 7, 8, 9). Thin: parse, one service call, render.

Threads: events of the primary thread are stored with `thread` null (or the primary's id); a child
thread's events carry its id. So `GET .../events`, the session stream and the primary thread's
`.../threads/{tid}/events` and `/stream` all show the same events, and a child thread's routes show
only its own. The primary thread's status and timing are its session's.

Bodies and query strings are read by hand: the SDK sends bracketed names (`statuses[]`,
`created_at[gte]`) and every rejection must name the field in the spec's error shape.
"""

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from ninja import Router

from api.errors import bad_request, not_found
from api.ids import has_prefix
from api.pagination import page_body
from files import services as file_services
from selfhosted.auth import API_KEY_OR_WORKER, check_session_access
from sessions import schemas, services, streaming
from sessions.models import Session, SessionThread

router = Router(tags=["sessions"])


# --- request parsing -------------------------------------------------------------------------------


def _json_body(request: HttpRequest) -> dict[str, Any]:
    raw = request.body  # RequestDataTooBig (-> 413) is raised here for oversized bodies
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("body: not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    return body


def _list_param(request: HttpRequest, name: str) -> list[str]:
    return [*request.GET.getlist(f"{name}[]"), *request.GET.getlist(name)]


def _int_param(request: HttpRequest, name: str) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name}: expected an integer, got {raw!r}.") from None


def _bool_param(request: HttpRequest, name: str) -> bool:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise bad_request(f"{name}: expected true or false, got {raw!r}.")


def _range(request: HttpRequest, name: str) -> dict[str, str | None]:
    return {op: request.GET.get(f"{name}[{op}]") for op in ("gt", "gte", "lt", "lte")}


def _session(request: HttpRequest, session_id: str) -> Session:
    if not has_prefix(session_id, "sesn"):
        raise not_found("session", session_id)
    session = services.session_get(workspace=request.workspace, session_id=session_id)  # type: ignore[attr-defined]
    check_session_access(request, session)  # a self-hosted worker's credential reaches its own sessions only
    return session


def _thread(session: Session, thread_id: str) -> SessionThread:
    services.check_prefix(thread_id, "sthr", "thread")
    return services.thread_get(session=session, thread_id=thread_id)


def _event_deltas(request: HttpRequest) -> frozenset[str]:
    values = _list_param(request, "event_deltas")
    if len(values) > 100:
        raise bad_request("event_deltas: at most 100 values are allowed.")
    for value in values:
        if value not in schemas.DELTA_TYPES:
            raise bad_request(
                f"event_deltas: {value!r} cannot be previewed; use agent.message or agent.thinking."
            )
    return frozenset(values)


# --- sessions ---------------------------------------------------------------------------------------


@router.post("/sessions")
def session_create(request: HttpRequest) -> HttpResponse:
    session = services.session_create(
        workspace=request.workspace,  # type: ignore[attr-defined]
        body=_json_body(request),
        api_key=request.auth,  # type: ignore[attr-defined]
    )
    return JsonResponse(services.session_wire(session))


@router.get("/sessions")
def session_list(request: HttpRequest) -> HttpResponse:
    page = services.session_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        agent_id=request.GET.get("agent_id") or None,
        agent_version=_int_param(request, "agent_version"),
        created_at=_range(request, "created_at"),
        include_archived=_bool_param(request, "include_archived"),
        statuses=_list_param(request, "statuses"),
        deployment_id=request.GET.get("deployment_id") or None,
        memory_store_id=request.GET.get("memory_store_id") or None,
        order=request.GET.get("order") or "desc",
        limit=_int_param(request, "limit"),
        page=request.GET.get("page") or None,
    )
    ids = [s.pk for s in page.items]
    outcomes = services.outcome_evaluations_by_session(ids)
    resources = file_services.session_resources_wire_many(ids)
    data = [services.session_wire(s, outcomes=outcomes[s.pk], resources=resources[s.pk]) for s in page.items]
    return JsonResponse(page_body(page, data, with_prev=True))


@router.get("/sessions/{session_id}", auth=API_KEY_OR_WORKER)
def session_retrieve(request: HttpRequest, session_id: str) -> HttpResponse:
    return JsonResponse(services.session_wire(_session(request, session_id)))


@router.post("/sessions/{session_id}")
def session_update(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    session = services.session_update(session=session, body=_json_body(request))
    return JsonResponse(services.session_wire(session))


@router.post("/sessions/{session_id}/archive")
def session_archive(request: HttpRequest, session_id: str) -> HttpResponse:
    session = services.session_archive(session=_session(request, session_id))
    return JsonResponse(services.session_wire(session))


@router.delete("/sessions/{session_id}")
def session_delete(request: HttpRequest, session_id: str) -> HttpResponse:
    return JsonResponse(services.session_delete(session=_session(request, session_id)))


# --- events -----------------------------------------------------------------------------------------


@router.post("/sessions/{session_id}/events", auth=API_KEY_OR_WORKER)
def events_send(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    body = _json_body(request)
    if "events" not in body:
        raise bad_request("events: field required.")
    rows = services.events_send(session=session, events=body["events"])
    return JsonResponse({"data": [row.wire() for row in rows]})


def _events_page(
    request: HttpRequest, session: Session, thread: SessionThread | None, *, filters: bool
) -> HttpResponse:
    page = services.events_list(
        session=session,
        thread=thread,
        types=_list_param(request, "types") if filters else None,
        created_at=_range(request, "created_at") if filters else None,
        order=(request.GET.get("order") or "asc") if filters else "asc",
        limit=_int_param(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return JsonResponse(page_body(page, [row.wire() for row in page.items]))


@router.get("/sessions/{session_id}/events", auth=API_KEY_OR_WORKER)
def events_list(request: HttpRequest, session_id: str) -> HttpResponse:
    return _events_page(request, _session(request, session_id), None, filters=True)


def _stream(request: HttpRequest, session: Session, thread: SessionThread | None) -> HttpResponseBase:
    deltas = _event_deltas(request)
    # Live only by default (spec 8): start after the last event committed at connect time.
    # Last-Event-ID (our `id:` lines carry the seq) resumes after that event instead.
    after = session.last_seq
    resume = request.headers.get("Last-Event-ID")
    if resume:
        try:
            after = max(0, int(resume))
        except ValueError:
            raise bad_request(f"Last-Event-ID: expected an event sequence number, got {resume!r}.") from None
    primary = thread is None or thread.parent_id is None
    body = streaming.sse_events(
        session_id=session.pk, thread=thread, primary=primary, after_seq=after, deltas=deltas
    )
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@router.get("/sessions/{session_id}/events/stream", auth=API_KEY_OR_WORKER)
def events_stream(request: HttpRequest, session_id: str) -> HttpResponseBase:
    session = _session(request, session_id)
    # The session stream is the primary thread's: its previews may be tagged with the primary's id.
    return _stream(request, session, SessionThread.objects.filter(session=session, parent=None).first())


# --- threads ----------------------------------------------------------------------------------------


@router.get("/sessions/{session_id}/threads")
def thread_list(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _session(request, session_id)
    page = services.thread_list(
        session=session,
        statuses=_list_param(request, "statuses"),
        limit=_int_param(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return JsonResponse(page_body(page, [services.thread_wire(t, session=session) for t in page.items]))


@router.get("/sessions/{session_id}/threads/{thread_id}")
def thread_retrieve(request: HttpRequest, session_id: str, thread_id: str) -> HttpResponse:
    session = _session(request, session_id)
    return JsonResponse(services.thread_wire(_thread(session, thread_id), session=session))


@router.post("/sessions/{session_id}/threads/{thread_id}/archive")
def thread_archive(request: HttpRequest, session_id: str, thread_id: str) -> HttpResponse:
    session = _session(request, session_id)
    thread = services.thread_archive(session=session, thread=_thread(session, thread_id))
    return JsonResponse(services.thread_wire(thread, session=session))


@router.get("/sessions/{session_id}/threads/{thread_id}/events")
def thread_events_list(request: HttpRequest, session_id: str, thread_id: str) -> HttpResponse:
    session = _session(request, session_id)
    return _events_page(request, session, _thread(session, thread_id), filters=False)


@router.get("/sessions/{session_id}/threads/{thread_id}/stream")
def thread_events_stream(request: HttpRequest, session_id: str, thread_id: str) -> HttpResponseBase:
    session = _session(request, session_id)
    return _stream(request, session, _thread(session, thread_id))

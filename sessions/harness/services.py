"""The agent loop (design.md, "A turn, step by step").

A step claims the session with a lease, then advances it one persisted move at a time: take queued
input, call the model, record its answer, run or hand out tool calls, until there is nothing left
to do (idle) or the session waits on the user (idle with requires_action). Every move is written
before the next is taken, so any worker can resume a session from its log alone.
"""

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from console.ids import new_id
from memory.attachments import memory_system_prompt
from selfhosted import harness as selfhosted_harness
from sessions import streaming
from sessions.harness import budget, outcomes, pricing
from sessions.harness.context import CONTEXT_TYPES, INTERRUPTED, Context, context_build
from sessions.harness.keeper import StepHandle, keeper
from sessions.harness.mcp import McpConnection, McpError
from sessions.harness.providers import ModelAnswer, ModelError, ModelRequest, ModelUsage, provider_for
from sessions.harness.providers.base import ModelCancelled
from sessions.harness.tools import (
    READ_ONLY,
    ToolRun,
    ToolSpec,
    mcp_servers,
    mcp_specs,
    run_builtin,
    tool_catalog,
)
from sessions.models import Event, Session, SessionThread, Status
from sessions.services import NewEvent, events_append, session_set_status
from skills.runtime import skills_system_prompt

log = logging.getLogger(__name__)

# Queued user events that give a step something to do.
ACTIONABLE = ("user.message", "system.message", "user.interrupt", "user.tool_confirmation")
LOST = (
    "The worker running this tool stopped before it finished, so its result was lost. It was not run again "
    "because it may have had side effects; check its effects before retrying."
)
COMPACT_PROMPT = (
    "Summarise the conversation so far for your own later use: the user's goals and instructions, "
    "what has been done, tool results that still matter, decisions made, and open work. Be complete "
    "but concise. Reply with the summary only."
)
RESULT_TYPES = ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result", "user.tool_result")
ERROR_TYPES = {
    "rate_limited": "model_rate_limited_error",
    "overloaded": "model_overloaded_error",
    "failed": "model_request_failed_error",
}
DEFAULT_CONTEXT_WINDOW = 200_000


class LeaseLost(Exception):
    """Another step owns the session now (our lease expired): stop without writing."""


@dataclass
class StepState:
    handle: StepHandle
    ended_empty: bool = False  # the model's last answer had nothing to record
    # The session's primary-thread log as far as this step has read it: each move reads only
    # what was appended since (one query), and our own processed_at marks are applied in place.
    events: list[Event] = field(default_factory=list)
    last_seq: int = 0
    own_uses: set[str] = field(default_factory=set)  # allowed tool calls this step recorded
    agent: dict[str, Any] = field(default_factory=dict)
    vault_ids: list[str] = field(default_factory=list)
    # MCP servers this step talked to, and the tools each offered (discovered once per step).
    mcp: dict[str, McpConnection] = field(default_factory=dict)
    mcp_tools: dict[str, list[ToolSpec]] = field(default_factory=dict)
    primary_thread_id: str | None = None
    remote: bool = False  # a self_hosted session: built-in tools run on the user's worker
    waiting_on_worker: bool = False  # the last move found only calls the worker has to answer

    def mcp_connection(self, server: str) -> McpConnection | None:
        if server not in self.mcp:
            found = mcp_servers(self.agent).get(server)
            if found is None:
                return None
            self.mcp[server] = McpConnection(server_name=server, url=found[0], vault_ids=self.vault_ids)
        return self.mcp[server]

    def refresh(self, session_id: str) -> None:
        fresh = list(Event.objects.filter(session_id=session_id, seq__gt=self.last_seq).order_by("seq"))
        if fresh:
            self.last_seq = fresh[-1].seq
            self.events.extend(e for e in fresh if e.thread_id is None)

    def context(self, session: Session) -> Context:
        from sessions.harness.threads import cross_posted

        return context_build(
            session=session,
            events=[
                e
                for e in self.events
                if e.type in CONTEXT_TYPES and e.seq > session.context_summary_seq and not cross_posted(e)
            ],
            primary_thread_id=self.primary_thread_id,
        )

    def queued(self) -> list[Event]:
        return [e for e in self.events if e.processed_at is None]


def _mark_processed(events: list[Event]) -> None:
    if not events:
        return
    now = timezone.now()
    Event.objects.filter(pk__in=[e.pk for e in events]).update(processed_at=now)
    for event in events:
        event.processed_at = now


# --- leases -----------------------------------------------------------------------------------------


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def session_lease_claim(*, session_id: str, owner: str) -> bool:
    now = timezone.now()
    # Conditional UPDATE: only one step wins a free (or expired) lease; the others see 0 rows.
    claimed = (
        Session.objects.filter(pk=session_id)
        .filter(Q(lease_owner__isnull=True) | Q(lease_expires_at__lt=now))
        .exclude(status=Status.TERMINATED)
        .update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=settings.GALLEY_LEASE_SECONDS))
    )
    return claimed == 1


def session_lease_release(*, session_id: str, owner: str) -> None:
    Session.objects.filter(pk=session_id, lease_owner=owner).update(lease_owner=None, lease_expires_at=None)


# What a move reads of the session row (the agent snapshot is read once per step).
ROW_FIELDS = (
    "id",
    "status",
    "stop_reason",
    "running_since",
    "active_seconds",
    "archived_at",
    "lease_owner",
    "last_seq",
    "context_summary",
    "context_summary_seq",
)


def _locked(session_id: str, owner: str) -> Session:
    """The session row, locked for this transaction, if our lease still holds it."""
    session = Session.objects.select_for_update().only(*ROW_FIELDS).get(pk=session_id)
    if session.lease_owner != owner:
        raise LeaseLost(session_id)
    return session


def _has_work(session_id: str) -> bool:
    return (
        Event.objects.filter(session_id=session_id, thread=None, processed_at=None, type__in=ACTIONABLE)
        .exclude(session__status=Status.TERMINATED)
        .exists()
    )


# --- the step ------------------------------------------------------------------------------------------


def session_step(*, session_id: str) -> None:
    """Run the session until it waits for the user. Safe to call twice: the lease admits one step."""
    while True:
        owner = _new_owner()
        if not session_lease_claim(session_id=session_id, owner=owner):
            return
        handle = keeper.register(session_id, owner)
        state = StepState(handle)
        agent, vault_ids = Session.objects.values_list("agent_snapshot", "vault_ids").get(pk=session_id)
        state.agent = agent or {}
        state.vault_ids = [v for v in vault_ids or [] if isinstance(v, str)]
        state.primary_thread_id = (
            SessionThread.objects.filter(session_id=session_id, parent=None)
            .values_list("id", flat=True)
            .first()
        )
        state.remote = selfhosted_harness.session_is_remote(session_id)
        try:
            while _advance(session_id, state):
                pass
        except LeaseLost:
            log.warning("harness step for %s lost its lease; another worker continues", session_id)
            return
        finally:
            keeper.unregister(handle)
            session_lease_release(session_id=session_id, owner=owner)
        # An event that arrived while we held the lease found it taken and its step gave up.
        if not _has_work(session_id):
            return


def _advance(session_id: str, state: StepState) -> bool:
    """One persisted move. Returns False when the session waits for input."""
    # Fast path, without the write lock: a running session with only new messages (or tool
    # results) to send goes straight to the model; the request's own transaction re-checks the lease.
    state.refresh(session_id)
    session = Session.objects.only(*ROW_FIELDS).get(pk=session_id)
    queued = state.queued()
    if (
        session.status == Status.RUNNING
        and session.archived_at is None
        and all(e.type in ("user.message", "system.message") for e in queued)
    ):
        ctx = state.context(session)
        if (
            ctx.open_span_id is None
            and not ctx.unresolved()
            and (queued or (ctx.needs_model() and not state.ended_empty))
        ):
            state.ended_empty = False
            return _call_model(session, state, take=queued, refresh=False)
    moved = _advance_locked(session_id, state)
    if not moved and state.waiting_on_worker:
        state.waiting_on_worker = False
        # Keep the lease a little while for the worker's answer: a quick tool's result then
        # continues this step instead of waiting for a new one to be scheduled.
        return selfhosted_harness.worker_answer_wait(
            session_id, after=state.last_seq, cancel=state.handle.fresh_cancel()
        )
    return moved


def _advance_locked(session_id: str, state: StepState) -> bool:
    owner = state.handle.owner
    run_now: list[Event] = []
    recovered: list[Event] = []
    due: outcomes.OpenOutcome | None = None
    with transaction.atomic():
        session = _locked(session_id, owner)
        if session.status == Status.TERMINATED or session.archived_at is not None:
            return False
        state.refresh(session_id)
        queued = state.queued()
        interrupt = next((e for e in queued if e.type == "user.interrupt"), None)
        target = (interrupt.payload.get("session_thread_id") if interrupt is not None else None) or None
        if interrupt is not None and target not in (None, state.primary_thread_id):
            # Aimed at a child thread that is not running now (a running one takes its own): close
            # what it waits on, if anything; the coordinator's open call then resumes it.
            from sessions.harness import threads

            threads.close_waiting(session, state.primary_thread_id, only=target)
            _mark_processed([interrupt])
            return True
        if interrupt is not None:
            _take_interrupt(session, state, interrupt)
            return True
        if budget.budget_holds(session=session, queued=queued):
            return False
        ctx = state.context(session)
        confirmed_now: set[str] = set()
        denied = False
        confirmations = [e for e in queued if e.type == "user.tool_confirmation"]
        _mark_processed(confirmations)
        for event in confirmations:
            use = ctx.uses.get(event.payload.get("tool_use_id", ""))
            if use is None or use.resolved or use.custom or use.permission != "ask":
                continue
            if event.payload.get("result") == "allow":
                confirmed_now.add(use.event.id)
                use.confirmation = event
            else:
                note = event.payload.get("deny_message") or "The user denied this tool call."
                events_append(
                    session=session,
                    events=[_tool_result(use.event, f"Permission denied by the user: {note}", is_error=True)],
                )
                use.resolved = True
                denied = True
        if ctx.open_span_id is not None:
            # A model request whose worker died: close its span; the request runs again below.
            events_append(
                session=session,
                events=[
                    NewEvent(
                        "span.model_request_end",
                        {
                            "model_request_start_id": ctx.open_span_id,
                            "is_error": True,
                            "model_usage": ModelUsage().wire(),
                        },
                    )
                ],
            )
            ctx.open_span_id = None
        pending: list[str] = []
        remote: list[str] = []  # self_hosted: calls the user's worker runs and answers
        for use in ctx.unresolved():
            if _is_send(state, use.event):
                from sessions.harness import threads

                waiting = threads.waiting_ids(session, state, use.event)
                if waiting:
                    pending.extend(waiting)  # its child waits on the user
                elif state.remote and threads.remote_ids(session, state, use.event):
                    remote.append(use.event.id)  # its child waits on the worker
                else:
                    run_now.append(use.event)  # the child thread resumes from its own log
                continue
            if use.custom:
                pending.append(use.event.id)
            elif state.remote and selfhosted_harness.runs_on_worker(use.event) and _remote_ready(use):
                remote.append(use.event.id)
            elif use.permission == "ask":
                if use.event.id in confirmed_now:
                    run_now.append(use.event)
                elif use.confirmation is not None and use.confirmation.payload.get("result") == "allow":
                    recovered.append(use.event)  # confirmed earlier, its run was lost
                else:
                    pending.append(use.event.id)
            elif use.event.id in state.own_uses:
                run_now.append(use.event)  # recorded by this step, not run yet (a stale cancel)
            else:
                recovered.append(use.event)  # allowed and recorded, but no result: a crashed run
        for event in recovered:
            # MCP tools are side-effecting whatever their name: only built-in read-only tools rerun.
            if event.type == "agent.tool_use" and event.payload.get("name") in READ_ONLY:
                run_now.append(event)
            else:
                events_append(session=session, events=[_tool_result(event, LOST, is_error=True)])
        if run_now:
            if session.status != Status.RUNNING:
                session_set_status(session=session, status=Status.RUNNING)
        elif pending:
            stop = {"type": "requires_action", "event_ids": pending}
            if session.status != Status.IDLE or session.stop_reason != stop:
                session_set_status(session=session, status=Status.IDLE, stop_reason=stop)
            return False
        elif remote:
            # The worker answers with user.tool_result, which kicks the next step; until then the
            # session stays running (an idle would start the worker's leave countdown).
            if session.status != Status.RUNNING:
                session_set_status(session=session, status=Status.RUNNING)
            selfhosted_harness.remote_wait(session_id)
            state.waiting_on_worker = True
            return False
        else:
            messages = [e for e in queued if e.type in ("user.message", "system.message")]
            wants_model = (
                bool(messages) or denied or bool(recovered) or (ctx.needs_model() and not state.ended_empty)
            )
            # The agent ended a turn on an open outcome: grade it before idling.
            due = None if wants_model else outcomes.outcome_open(state.events)
            if not wants_model and due is None:
                if session.status != Status.IDLE or (session.stop_reason or {}).get("type") != "end_turn":
                    session_set_status(session=session, status=Status.IDLE, stop_reason={"type": "end_turn"})
                return False
            if recovered:
                return True  # results were written; read them back and call the model
            # Queued messages join the context in the same transaction as the request's span.
            state.ended_empty = False
    if due is not None:
        return outcomes.outcome_evaluate(session, state, due)
    if run_now:
        _run_tools(session, state, run_now)
        return True
    return _call_model(session, state, take=messages, refresh=True)


def _take_interrupt(session: Session, state: StepState, interrupt: Event) -> None:
    """user.interrupt jumps the queue: close open tool calls and idle with end_turn (spec 7.1)."""
    from sessions.harness import threads

    ctx = state.context(session)
    threads.close_waiting(session, state.primary_thread_id)
    closing = [_tool_result(use.event, INTERRUPTED, is_error=True) for use in ctx.unresolved()]
    if ctx.open_span_id is not None:
        closing.append(
            NewEvent(
                "span.model_request_end",
                {
                    "model_request_start_id": ctx.open_span_id,
                    "is_error": True,
                    "model_usage": ModelUsage().wire(),
                },
            )
        )
    events_append(session=session, events=closing)
    outcomes.outcome_interrupt(session=session, events=state.events)
    _mark_processed([interrupt])
    stop = session.stop_reason or {}
    if session.status != Status.IDLE or stop.get("type") != "end_turn" or closing:
        session_set_status(session=session, status=Status.IDLE, stop_reason={"type": "end_turn"})


# --- tools ----------------------------------------------------------------------------------------------


def _run_tools(session: Session, state: StepState, uses: list[Event]) -> None:
    session_id = session.pk
    for use in uses:
        cancel = state.handle.fresh_cancel()
        if cancel.is_set():
            return
        _release_connection()
        errors: list[NewEvent] = []
        if use.type == "agent.mcp_tool_use":
            outcome = _run_mcp(state, use, errors, cancel)
        elif _is_send(state, use):
            from sessions.harness import threads

            sent = threads.send_to_agent(session, state, use)
            if sent is None:
                return  # an interrupt stopped the session; the next move closes this call
            if not isinstance(sent, ToolRun):
                continue  # PAUSED: the child waits on the user; the next move idles with requires_action
            outcome = sent
        elif state.remote and selfhosted_harness.runs_on_worker(use):
            continue  # the self-hosted worker runs it; its user.tool_result closes the call
        else:
            outcome = run_builtin(
                session=session,
                name=use.payload.get("name", ""),
                tool_input=use.payload.get("input") or {},
                tool_use_id=use.id,
                cancel=cancel,
            )
        with transaction.atomic():
            # Only this step writes the log while it holds the lease, so nothing closed the call meanwhile.
            locked = _locked(session_id, state.handle.owner)
            events_append(
                session=locked,
                events=[*errors, _tool_result(use, outcome.content, is_error=outcome.is_error)],
            )
        if state.handle.cancel.is_set():
            return


def _remote_ready(use: Any) -> bool:
    """A self_hosted call the worker may run: allowed, or confirmed by the user."""
    if use.permission == "allow":
        return True
    return use.confirmation is not None and use.confirmation.payload.get("result") == "allow"


def _is_send(state: StepState, use: Event) -> bool:
    from sessions.harness import threads

    return use.payload.get("name") == threads.SEND_TOOL and threads.coordinator_spec(state.agent) is not None


def _tool_result(use: Event, content: str | list[dict[str, Any]], *, is_error: bool) -> NewEvent:
    """The result event that closes a built-in or MCP tool call."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if use.type == "agent.mcp_tool_use":
        return NewEvent(
            "agent.mcp_tool_result", {"mcp_tool_use_id": use.id, "content": content, "is_error": is_error}
        )
    return NewEvent("agent.tool_result", {"tool_use_id": use.id, "content": content, "is_error": is_error})


def _mcp_error(server: str, exc: McpError) -> NewEvent:
    kind = (
        "mcp_authentication_failed_error" if exc.kind == "authentication" else "mcp_connection_failed_error"
    )
    return NewEvent(
        "session.error",
        {
            "error": {
                "type": kind,
                "mcp_server_name": server,
                "message": exc.message,
                "retry_status": {"type": "exhausted"},
            }
        },
    )


def _run_mcp(state: StepState, use: Event, errors: list[NewEvent], cancel: threading.Event) -> ToolRun:
    """Call an MCP tool from the harness (not the sandbox: the environment's networking does not apply).

    The call runs in a helper thread so that an interrupt stops waiting for it at once; the
    abandoned request finishes on its own (it touches no database) and its answer is dropped."""
    server = use.payload.get("mcp_server_name", "")
    name = use.payload.get("name", "")
    conn = state.mcp_connection(server)
    if conn is None:
        return ToolRun([{"type": "text", "text": f"MCP server {server!r} is not configured."}], True)
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = conn.call_tool(name, use.payload.get("input") or {})
        except McpError as exc:
            box["error"] = exc
        except Exception as exc:  # a bug in the client must not kill the turn
            log.warning("MCP call %s on %s failed: %s", name, server, type(exc).__name__)
            box["error"] = McpError("connection", f"Calling {name!r} on MCP server {server!r} failed.")
        finally:
            connection.close()  # this thread's own connection, opened if an OAuth refresh was stored

    worker = threading.Thread(target=call, name=f"mcp-{use.id}", daemon=True)
    worker.start()
    while worker.is_alive():
        if cancel.wait(0.05):
            state.mcp.pop(server, None)  # the abandoned call still uses that client
            return ToolRun([{"type": "text", "text": INTERRUPTED}], True)
    if "error" in box:
        exc = box["error"]
        errors.append(_mcp_error(server, exc))
        return ToolRun([{"type": "text", "text": f"{name} did not run: {exc.message}"}], True)
    content, is_error = box["value"]
    return ToolRun(content, is_error)


def _catalog(session_id: str, state: StepState) -> dict[str, ToolSpec]:
    """The tools to offer the model: the snapshot's, plus the enabled tools of its MCP servers,
    listed once per step. A server that cannot be listed is reported once and left out."""
    from sessions.harness import threads

    catalog = tool_catalog(state.agent)
    send = threads.coordinator_spec(state.agent)
    if send is not None:
        catalog.setdefault(send.name, send)
    errors: list[NewEvent] = []
    for server, (_url, toolset) in mcp_servers(state.agent).items():
        if server not in state.mcp_tools:
            conn = state.mcp_connection(server)
            try:
                tools = conn.list_tools() if conn is not None else []
            except McpError as exc:
                errors.append(_mcp_error(server, exc))
                tools = []
            state.mcp_tools[server] = mcp_specs(server, toolset, tools)
        for spec in state.mcp_tools[server]:
            catalog.setdefault(spec.name, spec)
    if errors:
        with transaction.atomic():
            events_append(session=_locked(session_id, state.handle.owner), events=errors)
    return catalog


def _release_connection() -> None:
    # Long waits must not pin a database connection: hundreds of running sessions would exhaust
    # PostgreSQL's connection limit. With the pool (the default) closing only returns the connection,
    # so it always goes back; without one, reconnecting costs milliseconds, so a worker with few running
    # steps keeps its connections. SQLite connections are cheap file handles and always stay.
    if settings.IS_SQLITE or connection.in_atomic_block:
        return
    pooled = getattr(connection, "pool", None) is not None
    if pooled or keeper.active_steps() > settings.GALLEY_HARNESS_KEEP_CONNECTIONS:
        connection.close()


# --- the model -------------------------------------------------------------------------------------------


class _Previews:
    """Publishes event_start / event_delta previews for text and thinking blocks as they stream."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.ids: dict[int, str] = {}

    def block_start(self, index: int, block_type: str) -> None:
        if block_type not in ("text", "thinking"):
            return
        event_id = new_id("sevt")
        self.ids[index] = event_id
        kind = "agent.message" if block_type == "text" else "agent.thinking"
        streaming.publish_preview(
            self.session_id, None, {"type": "event_start", "event": {"type": kind, "id": event_id}}
        )

    def text_delta(self, index: int, text: str) -> None:
        event_id = self.ids.get(index)
        if event_id is None or not text:
            return
        streaming.publish_preview(
            self.session_id,
            None,
            {
                "type": "event_delta",
                "event_id": event_id,
                "delta": {"type": "content_delta", "index": 0, "content": {"type": "text", "text": text}},
            },
        )


def _model_id(agent: dict[str, Any]) -> str:
    model = agent.get("model")
    if isinstance(model, dict):
        return str(model.get("id") or "")
    return str(model or "")


def compaction_threshold(model: str) -> int:
    if settings.GALLEY_COMPACTION_THRESHOLD_TOKENS:
        return settings.GALLEY_COMPACTION_THRESHOLD_TOKENS
    from providers.registry import model_config

    configured = model_config(model)
    window = 1_000_000 if model.endswith("[1m]") else DEFAULT_CONTEXT_WINDOW
    if configured is not None and configured.context_window:
        window = configured.context_window
    return int(window * 0.8)


def _call_model(session: Session, state: StepState, *, take: list[Event], refresh: bool) -> bool:
    session_id = session.pk
    owner = state.handle.owner
    agent = state.agent
    model = _model_id(agent)
    _release_connection()
    catalog = _catalog(session_id, state)
    if refresh:
        state.refresh(session_id)  # what this move appended (denials, closed spans)
    taken_at = timezone.now()
    for event in take:
        event.processed_at = taken_at  # in the context from here; stored with the request's span
    ctx = state.context(session)
    if ctx.last_prompt_tokens >= compaction_threshold(model) and len(ctx.turns) > 2:
        if not _compact(session, state, ctx, model, catalog, take=take):
            return True
        take = []
        ctx = state.context(session)
    request = ModelRequest(
        model=model,
        system=memory_system_prompt(session_id, skills_system_prompt(agent.get("system"), agent)),
        tools=[spec.definition for spec in catalog.values()],
        messages=ctx.messages(session.context_summary),
        max_tokens=settings.GALLEY_MODEL_MAX_TOKENS,
    )
    result = _model_request(session_id, state, request, take=take)
    if result is None:
        return True  # interrupted, or retried into a new state; the next move looks again
    if not isinstance(result, tuple):
        return False
    answer, span_id = result
    allowed = _record_answer(session_id, owner, answer, span_id, catalog)
    state.own_uses.update(e.id for e in allowed)
    if not answer.blocks:
        state.ended_empty = True
    if allowed:
        _run_tools(session, state, allowed)
    return True


def _model_request(
    session_id: str, state: StepState, request: ModelRequest, take: list[Event] | None = None
) -> tuple[ModelAnswer, str] | bool | None:
    """Call the model with visible retries. Returns (answer, span id), None to re-plan, False to stop."""
    owner = state.handle.owner
    provider = provider_for(request.model)
    attempt = 0
    while True:
        with transaction.atomic():
            session = _locked(session_id, owner)
            if take:
                _mark_processed(take)
                take = None
            if budget.budget_stop(session=session):
                return False
            if session.status != Status.RUNNING:
                session_set_status(session=session, status=Status.RUNNING)
            span = events_append(session=session, events=[NewEvent("span.model_request_start", {})])[0]
        cancel = state.handle.fresh_cancel()
        previews = _Previews(session_id)
        _release_connection()
        try:
            answer = provider.complete(request, listener=previews, cancel=cancel)
            answer.text_event_ids = previews.ids
            return answer, span.id
        except ModelCancelled:
            _close_span(session_id, owner, span.id)
            return None
        except ModelError as exc:
            if not exc.retryable:
                _fail(session_id, owner, span.id, exc, retry_status="terminal" if exc.fatal else "exhausted")
                return False
            if attempt >= settings.GALLEY_MODEL_MAX_RETRIES:
                _fail(session_id, owner, span.id, exc, retry_status="exhausted")
                return False
            attempt += 1
            with transaction.atomic():
                session = _locked(session_id, owner)
                events_append(
                    session=session,
                    events=[
                        _span_end(span.id, exc.usage, is_error=True),
                        _error_event(exc, "retrying"),
                    ],
                )
                session_set_status(session=session, status=Status.RESCHEDULING)
            delay = min(
                settings.GALLEY_MODEL_RETRY_MAX_SECONDS,
                settings.GALLEY_MODEL_RETRY_BASE_SECONDS * 2 ** (attempt - 1),
            )
            if state.handle.cancel.wait(delay):
                return None  # an interrupt arrived while we waited


def _span_end(span_id: str, usage: ModelUsage, *, is_error: bool = False) -> NewEvent:
    payload: dict[str, Any] = {"model_request_start_id": span_id, "model_usage": usage.wire()}
    if is_error:
        payload["is_error"] = True
    return NewEvent("span.model_request_end", payload)


def _error_event(exc: ModelError, retry_status: str) -> NewEvent:
    return NewEvent(
        "session.error",
        {
            "error": {
                "type": ERROR_TYPES[exc.kind],
                "message": exc.message,
                "retry_status": {"type": retry_status},
            }
        },
    )


def _close_span(session_id: str, owner: str, span_id: str) -> None:
    with transaction.atomic():
        session = _locked(session_id, owner)
        events_append(session=session, events=[_span_end(span_id, ModelUsage(), is_error=True)])


def _fail(session_id: str, owner: str, span_id: str, exc: ModelError, *, retry_status: str) -> None:
    with transaction.atomic():
        session = _locked(session_id, owner)
        events_append(
            session=session,
            events=[_span_end(span_id, exc.usage, is_error=True), _error_event(exc, retry_status)],
        )
        if retry_status == "terminal":
            from sessions.harness import threads

            threads.terminate_children(session)
            session_set_status(session=session, status=Status.TERMINATED)
            return
        # "This turn is dead; queued inputs are flushed and the session returns to idle."
        Event.objects.filter(
            session_id=session_id, processed_at=None, type__in=("user.message", "system.message")
        ).update(processed_at=timezone.now())
        session_set_status(session=session, status=Status.IDLE, stop_reason={"type": "retries_exhausted"})


def _usage_update(
    session_id: str, model: str, usage: ModelUsage, *, thread_id: str = "", agent_name: str = ""
) -> None:
    cost = pricing.token_cost_micros(
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_write_5m_tokens=usage.cache_creation_5m_tokens,
        cache_write_1h_tokens=usage.cache_creation_1h_tokens,
    )
    Session.objects.filter(pk=session_id).update(
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
        cache_read_input_tokens=F("cache_read_input_tokens") + usage.cache_read_input_tokens,
        cache_creation_5m_tokens=F("cache_creation_5m_tokens") + usage.cache_creation_5m_tokens,
        cache_creation_1h_tokens=F("cache_creation_1h_tokens") + usage.cache_creation_1h_tokens,
        web_search_requests=F("web_search_requests") + usage.web_search_requests,
        token_cost_micros=F("token_cost_micros") + cost,
    )
    from providers.services import model_call_record

    model_call_record(
        session_id=session_id,
        model=model,
        usage=usage,
        cost_micros=cost,
        thread_id=thread_id,
        agent_name=agent_name,
    )


def _record_answer(
    session_id: str, owner: str, answer: ModelAnswer, span_id: str, catalog: dict[str, ToolSpec]
) -> list[Event]:
    """Append the answer's events and its span end in one transaction; return tool calls to run now."""
    events: list[NewEvent] = []
    refusals: list[int] = []
    for index, block in enumerate(answer.blocks):
        kind = block.get("type")
        if kind == "thinking":
            events.append(NewEvent("agent.thinking", {}, id=answer.text_event_ids.get(index)))
        elif kind == "text" and block.get("text"):
            events.append(
                NewEvent(
                    "agent.message",
                    {"content": [{"type": "text", "text": block["text"]}]},
                    id=answer.text_event_ids.get(index),
                )
            )
        elif kind == "tool_use":
            name = block.get("name", "")
            spec = catalog.get(name)
            tool_input = block.get("input") or {}
            if spec is None:
                events.append(
                    NewEvent(
                        "agent.tool_use", {"name": name, "input": tool_input, "evaluated_permission": "deny"}
                    )
                )
                refusals.append(len(events) - 1)
            elif spec.kind == "custom":
                events.append(NewEvent("agent.custom_tool_use", {"name": name, "input": tool_input}))
            else:
                ask = spec.policy == "always_ask"
                evaluation: dict[str, Any] = {"type": spec.policy}
                if spec.policy == "auto":
                    evaluation["evaluated_permission"] = {"type": "allow"}
                payload: dict[str, Any] = {
                    "name": name,
                    "input": tool_input,
                    "evaluated_permission": "ask" if ask else "allow",
                    "evaluation": evaluation,
                }
                if spec.kind == "mcp":
                    payload = {"mcp_server_name": spec.mcp_server_name, **payload, "name": spec.mcp_tool}
                events.append(
                    NewEvent("agent.mcp_tool_use" if spec.kind == "mcp" else "agent.tool_use", payload)
                )
    for event in events:
        if event.id is None:
            event.id = new_id("sevt")
    for position in refusals:
        tool_use = events[position]
        events.append(
            NewEvent(
                "agent.tool_result",
                {
                    "tool_use_id": tool_use.id,
                    "is_error": True,
                    "content": [
                        {
                            "type": "text",
                            "text": f"Tool {tool_use.payload['name']!r} is not available in this session.",
                        }
                    ],
                },
            )
        )
    events.append(_span_end(span_id, answer.usage))
    with transaction.atomic():
        session = _locked(session_id, owner)
        rows = events_append(session=session, events=events)
        _usage_update(session_id, answer.model, answer.usage)
    return [
        row
        for row in rows
        if row.type in ("agent.tool_use", "agent.mcp_tool_use")
        and row.payload.get("evaluated_permission") == "allow"
    ]


# --- compaction ------------------------------------------------------------------------------------------


def _compact(
    session: Session,
    state: StepState,
    ctx: Context,
    model: str,
    catalog: dict[str, ToolSpec],
    *,
    take: list[Event],
) -> bool:
    """Summarise older turns and replace them in the context (agent.thread_context_compacted).

    Keeps the tail the next request needs: the last user turn, and the assistant turn before it
    when that user turn answers its tool calls."""
    turns = ctx.turns
    keep_from = len(turns) - 1
    if any(b["type"] == "tool_result" for b in turns[-1].blocks) and keep_from > 0:
        keep_from -= 1
    if keep_from <= 0:
        return True
    # Everything from the kept turns on stays; seqs are not in context order (a message sent during
    # a model call is taken after its answer), so cut below the lowest seq the kept turns hold.
    boundary = min(turn.first_seq for turn in turns[keep_from:]) - 1
    older = Context(turns=turns[:keep_from])
    messages = older.messages(session.context_summary)
    if messages[-1]["role"] == "user":
        messages[-1]["content"].append({"type": "text", "text": COMPACT_PROMPT})
    else:
        messages.append({"role": "user", "content": [{"type": "text", "text": COMPACT_PROMPT}]})
    request = ModelRequest(
        model=model,
        system=state.agent.get("system"),
        tools=[spec.definition for spec in catalog.values()],
        messages=messages,
        max_tokens=settings.GALLEY_MODEL_MAX_TOKENS,
    )
    result = _model_request(session.pk, state, request, take=take)
    if not isinstance(result, tuple):
        return False
    answer, span_id = result
    summary = "\n".join(b.get("text", "") for b in answer.blocks if b.get("type") == "text").strip()
    with transaction.atomic():
        locked = _locked(session.pk, state.handle.owner)
        events_append(
            session=locked,
            events=[_span_end(span_id, answer.usage), NewEvent("agent.thread_context_compacted", {})],
        )
        _usage_update(session.pk, answer.model, answer.usage)
        Session.objects.filter(pk=session.pk).update(
            context_summary=summary or None, context_summary_seq=boundary
        )
    session.context_summary = summary or None
    session.context_summary_seq = boundary
    return True


# --- the sweeper -----------------------------------------------------------------------------------------


def session_reschedule_expired(*, session_id: str, owner: str) -> bool:
    """Take back the expired lease of a step whose worker died and tell the log: the session is
    `rescheduling` (session.status_rescheduled) until the next step resumes it. False when the lease
    was renewed or taken meanwhile."""
    now = timezone.now()
    with transaction.atomic():
        # Conditional UPDATE: only the expired lease of that very owner is released, so a step that
        # renewed it in time, or another sweeper that got here first, leaves nothing to do.
        released = Session.objects.filter(
            pk=session_id, lease_owner=owner, lease_expires_at__lt=now, status=Status.RUNNING
        ).update(lease_owner=None, lease_expires_at=None)
        if released != 1:
            return False
        session = Session.objects.select_for_update().get(pk=session_id)
        session_set_status(session=session, status=Status.RESCHEDULING)
    log.warning("session %s: the lease of %s expired; rescheduled", session_id, owner)
    return True


def sessions_sweep(*, limit: int = 500) -> list[str]:
    """Session ids that need a step and have no live one: a crashed worker's expired lease (the
    session is marked rescheduled first), or queued input whose kick was lost."""
    now = timezone.now()
    expired = Session.objects.filter(
        lease_owner__isnull=False, lease_expires_at__lt=now, status=Status.RUNNING
    ).values_list("id", "lease_owner")[:limit]
    for session_id, owner in list(expired):
        if owner:
            session_reschedule_expired(session_id=session_id, owner=owner)
    free = Q(lease_owner__isnull=True) | Q(lease_expires_at__lt=now)
    stuck = set(
        Session.objects.filter(free, status__in=(Status.RUNNING, Status.RESCHEDULING)).values_list(
            "id", flat=True
        )[:limit]
    )
    waiting = set(
        Event.objects.filter(
            processed_at=None, type__in=ACTIONABLE, thread=None, created_at__lt=now - timedelta(seconds=1)
        )
        .exclude(session__status=Status.TERMINATED)
        .filter(Q(session__lease_owner__isnull=True) | Q(session__lease_expires_at__lt=now))
        .values_list("session_id", flat=True)
        .distinct()[:limit]
    )
    return sorted(stuck | waiting)

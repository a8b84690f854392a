"""The agent loop (design.md, "A turn, step by step").

A step claims the session with a lease, then advances it one persisted move at a time: take queued
input, call the model, record its answer, run or hand out tool calls, until there is nothing left
to do (idle) or the session waits on the user (idle with requires_action). Every move is written
before the next is taken, so any worker can resume a session from its log alone.
"""

import json
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
from django.db.models import Exists, F, OuterRef, Q, Subquery
from django.utils import timezone

from agents.models import Environment
from api.ids import new_id
from galley.prepared import prepared_exists, prepared_rows
from harness import budget, logcache, outcomes, pricing
from harness.context import CONTEXT_TYPES, INTERRUPTED, Context, ContextCache, context_build_cached
from harness.keeper import StepHandle, keeper
from harness.mcp import McpConnection, McpError
from harness.providers import ModelAnswer, ModelError, ModelRequest, ModelUsage, provider_for
from harness.providers.base import ModelCancelled
from harness.tools import (
    READ_ONLY,
    ToolRun,
    ToolSpec,
    mcp_servers,
    mcp_specs,
    prewarm_builtin,
    run_builtin,
    tool_catalog,
)
from memory.attachments import memory_mounted_exists, memory_system_prompt
from selfhosted import harness as selfhosted_harness
from sessions import streaming
from sessions.models import Event, Session, SessionThread, Status
from sessions.services import (
    LeaseLost,
    NewEvent,
    SessionLogFull,
    events_append,
    log_limit_waived,
    session_set_status,
)
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
    thread: SessionThread | None = None  # the child thread a thread step runs; None for the session's
    remote: bool = False  # a self_hosted session: built-in tools run on the user's worker
    waiting_on_worker: bool = False  # the last move found only calls the worker has to answer
    children_at_work: list[str] = field(default_factory=list)  # the children the last move waits on
    # The system prompt with its memory section: attachments are fixed when the session is created.
    has_memory: bool = True
    system: str | None = None
    system_ready: bool = False
    turn_over: bool = False  # the model's last answer asked for no tool: its turn is over
    look: Session | None = None  # the row as the step's load read it, for its first unlocked look
    # The context of the events read so far, built only from what came since the last build.
    context_cache: ContextCache = field(default_factory=ContextCache)

    def mcp_connection(self, server: str) -> McpConnection | None:
        if server not in self.mcp:
            found = mcp_servers(self.agent).get(server)
            if found is None:
                return None
            self.mcp[server] = McpConnection(server_name=server, url=found[0], vault_ids=self.vault_ids)
        return self.mcp[server]

    def refresh(self, session_id: str, known_seq: int | None = None) -> None:
        """Read what was appended since the last read; nothing to read when the session row's
        `known_seq` (read or locked just before) says no event came since."""
        if known_seq is not None and known_seq <= self.last_seq:
            return
        fresh: list[Event] = prepared_rows(
            "harness.fresh",
            lambda pk, seq: Event.objects.filter(session_id=pk, seq__gt=seq).order_by("seq"),
            session_id,
            self.last_seq,
        )
        if fresh:
            self.last_seq = fresh[-1].seq
            self.events.extend(e for e in fresh if e.thread_id is None)

    def context(self, session: Session) -> Context:
        ctx, self.context_cache = context_build_cached(
            self.context_cache,
            self.events,
            summary_seq=session.context_summary_seq,
            relevant=_in_context,
            primary_thread_id=self.primary_thread_id,
        )
        return ctx

    def queued(self) -> list[Event]:
        return [e for e in self.events if e.processed_at is None]

    def absorb(self, rows: list[Event]) -> None:
        """Events this step has just appended (and committed): when nothing else was appended since
        the last read they extend it, and the next refresh need not read them back."""
        if rows and rows[0].seq == self.last_seq + 1:
            self.last_seq = rows[-1].seq
            self.events.extend(e for e in rows if e.thread_id is None)

    def system_prompt(self, session_id: str) -> str | None:
        if not self.system_ready:
            agent = self.agent
            system = skills_system_prompt(agent.get("system"), agent)
            self.system = memory_system_prompt(session_id, system) if self.has_memory else system
            self.system_ready = True
        return self.system


def _in_context(event: Event) -> bool:
    from harness.threads import cross_posted

    return event.type in CONTEXT_TYPES and not cross_posted(event)


def _mark_processed(events: list[Event], *, at: Any = None) -> None:
    """Marks queued events taken, at `at` (the time the step's context already gave them) or now."""
    if not events:
        return
    now = at or timezone.now()
    Event.objects.filter(pk__in=[e.pk for e in events]).update(processed_at=now)
    for event in events:
        event.processed_at = now


# --- leases -----------------------------------------------------------------------------------------


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _lease_update(where: str, values: list[Any], *, owner: str | None, expires: Any) -> int:
    """UPDATE the session's lease columns under `where` (SQL over its columns), written by hand
    because it runs twice per step and the ORM compiles its UPDATE each time. Rows changed."""
    db = connection
    expiry = Session._meta.get_field("lease_expires_at").get_db_prep_value(expires, db)  # type: ignore[union-attr]
    table = Session._meta.db_table
    with db.cursor() as cursor:
        cursor.execute(
            f'UPDATE "{table}" SET "lease_owner" = %s, "lease_expires_at" = %s WHERE {where}',
            [owner, expiry, *values],
        )
        return int(cursor.rowcount)


def session_lease_claim(*, session_id: str, owner: str) -> bool:
    now = timezone.now()
    expires = now + timedelta(seconds=settings.GALLEY_LEASE_SECONDS)
    stamp = Session._meta.get_field("lease_expires_at").get_db_prep_value(now, connection)  # type: ignore[union-attr]
    # Conditional UPDATE: only one step wins a free (or expired) lease; the others see 0 rows.
    claimed = _lease_update(
        '"id" = %s AND ("lease_owner" IS NULL OR "lease_expires_at" < %s) AND "status" <> %s',
        [session_id, stamp, Status.TERMINATED.value],
        owner=owner,
        expires=expires,
    )
    return claimed == 1


def session_lease_release(*, session_id: str, owner: str) -> None:
    _lease_update('"id" = %s AND "lease_owner" = %s', [session_id, owner], owner=None, expires=None)


# What a move reads of the session row (the agent snapshot is read once per step): with the
# workspace the webhooks outbox needs no lookup, with the budget and cost the budget check none.
ROW_FIELDS = (
    "id",
    "workspace",
    "budget",
    "token_cost_micros",
    "web_search_requests",
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


def _row(session_id: str, *, lock: bool) -> Session:
    """The session's ROW_FIELDS (a query compiled once: galley/prepared.py), locked for this
    transaction with `lock`."""
    if lock:
        rows = prepared_rows(
            "harness.locked",
            lambda pk: Session.objects.select_for_update().only(*ROW_FIELDS).filter(pk=pk),
            session_id,
        )
    else:
        rows = prepared_rows(
            "harness.row", lambda pk: Session.objects.only(*ROW_FIELDS).filter(pk=pk), session_id
        )
    if not rows:
        raise Session.DoesNotExist(f"session {session_id!r} does not exist")
    return rows[0]  # type: ignore[no-any-return]


def _locked(session_id: str, owner: str, *, thread_id: str | None = None) -> Session:
    """The session row, locked for this transaction, if our lease still holds the thread we run:
    the session's own lease for its (primary) step, the child thread's for a child's step. Every
    write of the log takes this lock, so a lease taken back stops its step's writes at once."""
    session = _row(session_id, lock=True)
    if thread_id is None:
        if session.lease_owner != owner:
            raise LeaseLost(session_id)
    elif not SessionThread.objects.filter(pk=thread_id, lease_owner=owner).exists():
        raise LeaseLost(thread_id)
    return session


def _has_work(session_id: str) -> bool:
    return prepared_exists(
        "harness.has_work",
        lambda pk: (
            Event.objects.filter(session_id=pk, thread=None, processed_at=None, type__in=ACTIONABLE)
            .exclude(session__status=Status.TERMINATED)
            .values_list("pk")[:1]
        ),
        session_id,
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
        log_seq = _step_load(session_id, state)
        cached_seq, cached, context = logcache.take(session_id)  # what an earlier step here read
        if cached_seq <= log_seq:  # (a log cut back, as tests do to stage a crash, is read afresh)
            state.last_seq, state.events = cached_seq, cached
            if context is not None:
                state.context_cache = context
        try:
            while _advance(session_id, state):
                pass
            logcache.keep(session_id, state.last_seq, state.events, state.context_cache)
        except LeaseLost:
            log.warning("harness step for %s lost its lease; another worker continues", session_id)
            return
        except SessionLogFull as exc:
            session_end_log_full(session_id=session_id, exc=exc)
            return
        finally:
            keeper.unregister(handle)
            session_lease_release(session_id=session_id, owner=owner)
        # An event that arrived while we held the lease found it taken and its step gave up; so did
        # the kick of a child that stopped meanwhile.
        if state.children_at_work:
            from harness import threads

            if threads.children_stopped(state.children_at_work):
                continue
        if not _has_work(session_id):
            return


def _step_load(session_id: str, state: StepState) -> int:
    """What a step reads once, in one query: the agent snapshot, the vaults, the primary thread,
    whether the environment is self-hosted and whether the session mounts memory stores, with the
    row's ROW_FIELDS for the first move's unlocked look. Returns the log's last seq."""
    rows = prepared_rows(
        "harness.step_load",
        lambda pk: (
            Session.objects.only("agent_snapshot", "vault_ids", *ROW_FIELDS)
            .annotate(
                primary_thread=Subquery(
                    SessionThread.objects.filter(session_id=OuterRef("pk"), parent=None).values("id")[:1]
                ),
                has_memory=memory_mounted_exists(),
                environment_config=F("environment__config"),
            )
            .filter(pk=pk)
        ),
        session_id,
    )
    if not rows:
        raise Session.DoesNotExist(f"session {session_id!r} does not exist")
    session = rows[0]
    state.agent = session.agent_snapshot or {}
    state.vault_ids = [v for v in session.vault_ids or [] if isinstance(v, str)]
    state.primary_thread_id = session.primary_thread
    state.has_memory = bool(session.has_memory)
    config = session.environment_config  # a raw annotation: JSON text
    config = json.loads(config) if isinstance(config, (str, bytes)) else config
    state.remote = Environment(config=config or {}).is_self_hosted
    state.look = session
    return int(session.last_seq)


def _advance(session_id: str, state: StepState) -> bool:
    """One persisted move. Returns False when the session waits for input."""
    state.children_at_work = []
    if state.turn_over:
        # The model has just ended its turn: only the locked move can idle (or grade an outcome, or
        # take what was sent meanwhile), so the unlocked look below would be a wasted read.
        state.turn_over = False
        state.look = None
        return _advance_after_look(session_id, state)
    # Fast path, without the write lock: a running session with only new messages (or tool
    # results) to send goes straight to the model; the request's own transaction re-checks the lease.
    session = state.look or _row(session_id, lock=False)  # the step's first move: read with its load
    state.look = None
    state.refresh(session_id, session.last_seq)
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
    return _advance_after_look(session_id, state)


def _advance_after_look(session_id: str, state: StepState) -> bool:
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
        state.refresh(session_id, session.last_seq)
        queued = state.queued()
        interrupt = next((e for e in queued if e.type == "user.interrupt"), None)
        target = (interrupt.payload.get("session_thread_id") if interrupt is not None else None) or None
        if interrupt is not None and target not in (None, state.primary_thread_id):
            # Aimed at a child thread: stop it (its step, if one is at work, writes nothing more).
            from harness import threads

            threads.thread_interrupt(session, state.context(session), target)
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
        sends = [use.event for use in ctx.unresolved() if _is_send(state, use.event)]
        if sends:
            from harness import threads

            moved = threads.sends_advance(session, state, ctx, sends)
            if moved.moved:
                return True  # the children's answers are the calls' results: read them back
            pending.extend(moved.pending)
            state.children_at_work = moved.at_work
        for use in ctx.unresolved():
            if _is_send(state, use.event):
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
        elif state.children_at_work:
            # Each child runs as its own step; the one that answers (or starts waiting) last kicks
            # the session, and the coordinator's next step takes it from there.
            if session.status != Status.RUNNING:
                session_set_status(session=session, status=Status.RUNNING)
            return False
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
    from harness import threads

    ctx = state.context(session)
    threads.children_stop(session, state.primary_thread_id)
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


def _run_tools(session: Session, state: StepState, uses: list[Event]) -> bool:
    """Run allowed calls, the session's or a child thread's, one after another, each result
    appended under the step's lease. False when an interrupt cancelled the run."""
    session_id = session.pk
    thread_id = state.thread.pk if state.thread is not None else None
    for use in uses:
        cancel = state.handle.fresh_cancel()
        if cancel.is_set():
            return False
        _release_connection()
        errors: list[NewEvent] = []
        if _is_send(state, use):
            continue  # the next move delivers it to its child thread, which runs as its own step
        if use.type == "agent.mcp_tool_use":
            outcome = _run_mcp(state, use, errors, cancel)
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
            # Only this step writes the log while it holds the lease, so nothing closed the call
            # meanwhile.
            results = [*errors, _tool_result(use, outcome.content, is_error=outcome.is_error)]
            if thread_id is None:  # the append checks the session's lease in its own UPDATE
                rows = events_append(session=session_id, events=results, owner=state.handle.owner)
            else:  # a child thread's step: its own lease, checked under the session row's lock
                locked = _locked(session_id, state.handle.owner, thread_id=thread_id)
                for result in results:
                    result.thread = state.thread
                events_append(session=locked, events=results)
                rows = []
        state.absorb(rows)
        if state.handle.cancel.is_set():
            return False
    return True


def _remote_ready(use: Any) -> bool:
    """A self_hosted call the worker may run: allowed, or confirmed by the user."""
    if use.permission == "allow":
        return True
    return use.confirmation is not None and use.confirmation.payload.get("result") == "allow"


def _is_send(state: StepState, use: Event) -> bool:
    from harness import threads

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
    from harness import threads

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
    """Publishes event_start / event_delta previews for text and thinking blocks as they stream: each at
    once, or, once the provider has called `hold()`, what one network read brought as one message at its
    `read_done()` (a read often carries several deltas; each message wakes every subscribing process)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.ids: dict[int, str] = {}
        self.held = False
        self.frames: list[dict[str, Any]] = []

    def hold(self) -> None:
        self.held = True

    def read_done(self) -> None:
        frames, self.frames = self.frames, []
        if frames:
            streaming.publish_previews(self.session_id, None, frames)

    def _emit(self, frame: dict[str, Any]) -> None:
        if self.held:
            self.frames.append(frame)
        else:
            streaming.publish_preview(self.session_id, None, frame)

    def block_start(self, index: int, block_type: str) -> None:
        if block_type not in ("text", "thinking"):
            return
        event_id = new_id("sevt")
        self.ids[index] = event_id
        kind = "agent.message" if block_type == "text" else "agent.thinking"
        self._emit({"type": "event_start", "event": {"type": kind, "id": event_id}})

    def text_delta(self, index: int, text: str) -> None:
        event_id = self.ids.get(index)
        if event_id is None or not text:
            return
        self._emit(
            {
                "type": "event_delta",
                "event_id": event_id,
                "delta": {"type": "content_delta", "index": 0, "content": {"type": "text", "text": text}},
            }
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
        # What this move appended (denials, closed spans): the locked row's last_seq counts them.
        state.refresh(session_id, session.last_seq)
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
        system=state.system_prompt(session_id),
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
    allowed, idled = _record_answer(session_id, owner, answer, span_id, catalog, state=state)
    if idled:
        return False  # the turn ended with the answer's own append
    state.own_uses.update(e.id for e in allowed)
    state.turn_over = not any(block.get("type") == "tool_use" for block in answer.blocks)
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
                _mark_processed(take, at=take[0].processed_at)  # when _call_model took them
                take = None
            if budget.budget_stop(session=session):
                return False
            if session.status != Status.RUNNING:
                session_set_status(session=session, status=Status.RUNNING)
            span = events_append(session=session, events=[NewEvent("span.model_request_start", {})])[0]
        state.absorb([span])
        cancel = state.handle.fresh_cancel()
        previews = _Previews(session_id)
        _release_connection()
        if attempt == 0 and not state.remote:
            prewarm_builtin(session_id=session_id, agent=state.agent)
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
            from harness import threads

            threads.terminate_children(session)
            session_set_status(session=session, status=Status.TERMINATED)
            return
        # "This turn is dead; queued inputs are flushed and the session returns to idle."
        Event.objects.filter(
            session_id=session_id, processed_at=None, type__in=("user.message", "system.message")
        ).update(processed_at=timezone.now())
        session_set_status(session=session, status=Status.IDLE, stop_reason={"type": "retries_exhausted"})


def _usage_increments(model: str, usage: ModelUsage) -> tuple[dict[str, int], int]:
    """The session row's counters a priced model call adds to, and its cost in micros."""
    cost = pricing.token_cost_micros(
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_write_5m_tokens=usage.cache_creation_5m_tokens,
        cache_write_1h_tokens=usage.cache_creation_1h_tokens,
    )
    increments = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_5m_tokens": usage.cache_creation_5m_tokens,
        "cache_creation_1h_tokens": usage.cache_creation_1h_tokens,
        "web_search_requests": usage.web_search_requests,
        "token_cost_micros": cost,
    }
    return increments, cost


def _usage_update(
    session_id: str,
    model: str,
    usage: ModelUsage,
    *,
    thread_id: str = "",
    agent_name: str = "",
    counted: int | None = None,
) -> None:
    """Add a model call's usage to the session's counters and the cost ledger. `counted`: the
    cost of a call whose counters the caller's append already added (row_increments)."""
    cost = counted
    if cost is None:
        increments, cost = _usage_increments(model, usage)
        Session.objects.filter(pk=session_id).update(
            **{name: F(name) + amount for name, amount in increments.items()}
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
    session_id: str,
    owner: str,
    answer: ModelAnswer,
    span_id: str,
    catalog: dict[str, ToolSpec],
    *,
    state: StepState | None = None,
) -> tuple[list[Event], bool]:
    """Append the answer's events and its span end in one transaction. Returns the tool calls to run
    now, and whether the session went idle with them (a turn that ended with nothing else to do)."""
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
    increments, cost = _usage_increments(answer.model, answer.usage)
    ends_turn = (
        state is not None
        and state.thread is None
        and not any(block.get("type") == "tool_use" for block in answer.blocks)
        and any(event.type == "agent.message" for event in events)
    )
    with transaction.atomic():
        quiet = _quiet_row(session_id, owner, state) if ends_turn and state else None
        if quiet is not None:
            # The turn is over and nothing came meanwhile: the answer and the idle are one append,
            # as the next (locked) move would have decided, without its transaction and its wake-up.
            rows = session_set_status(
                session=quiet,
                status=Status.IDLE,
                stop_reason={"type": "end_turn"},
                extra_events=events,
                row_increments=increments,
            )
        else:
            # One UPDATE checks the lease, reserves the seqs and adds the usage counters.
            rows = events_append(session=session_id, events=events, row_increments=increments, owner=owner)
        _usage_update(session_id, answer.model, answer.usage, counted=cost)
    if state is not None:
        state.absorb(rows)
    allowed = [
        row
        for row in rows
        if row.type in ("agent.tool_use", "agent.mcp_tool_use")
        and row.payload.get("evaluated_permission") == "allow"
    ]
    return allowed, quiet is not None


def _quiet_row(session_id: str, owner: str, state: StepState) -> Session | None:
    """The locked session row when a turn that ends now may idle at once: it still runs, nothing was
    appended since this step's last read (no message, interrupt or archive to look at), nothing it read
    waits to be taken, and no outcome is open to grade. Otherwise None, and the locked move decides."""
    if state.queued() or state.children_at_work or outcomes.outcome_open(state.events) is not None:
        return None
    session = _locked(session_id, owner)
    if session.last_seq != state.last_seq or session.status != Status.RUNNING or session.archived_at:
        return None
    return session


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


# --- the log's size limit ---------------------------------------------------------------------------------


def session_end_log_full(*, session_id: str, exc: SessionLogFull) -> None:
    """A step's append was refused because the log reached GALLEY_SESSION_LOG_BYTES: nothing the
    session did next could be recorded, so it ends here and says why (a terminal session.error,
    its threads and itself terminated; these last events are counted but not refused)."""
    from harness import threads

    error = NewEvent(
        "session.error",
        {
            "error": {
                "type": "unknown_error",
                "message": f"The session was ended: {exc.message}",
                "retry_status": {"type": "terminal"},
            }
        },
    )
    with transaction.atomic(), log_limit_waived():
        session = _row(session_id, lock=True)
        if session.status == Status.TERMINATED:
            return
        threads.terminate_children(session)
        session_set_status(session=session, status=Status.TERMINATED, extra_events=[error])
    log.warning("session %s reached its log limit of %d bytes; terminated", session_id, exc.limit)


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
    # A coordinator waiting on a child at work holds no lease: the child kicks it when it stops.
    child_at_work = SessionThread.objects.filter(
        session=OuterRef("pk"), parent__isnull=False, status=Status.RUNNING, lease_expires_at__gte=now
    )
    stuck = set(
        Session.objects.filter(free, status__in=(Status.RUNNING, Status.RESCHEDULING))
        .exclude(Exists(child_at_work))
        .values_list("id", flat=True)[:limit]
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

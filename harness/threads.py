"""Multi-agent coordinator threads at run time (spec 9).

A coordinator session offers its model one extra tool, `send_to_agent`. A call starts (or continues)
a child thread running that roster member: a SessionThread whose events carry thread=<child> and
whose context is built from those events only. The coordinator's step delivers the message and
ends; the child runs as its own unit of harness work (`thread_step`, the Celery task
`harness.run_thread_step`) under its own lease (the thread row's `lease_owner`), so the children of
one answer run at the same time. A child's answer (its last agent.message) kicks the session; once
no child is at work, the coordinator's step appends the answers as the calls' results, in call
order. Summaries are cross-posted on the primary log: session.thread_created,
session.thread_status_*, and agent.thread_message_sent / _received.

Interrupts are the coordinator step's to take (a child's step only stops when the keeper cancels
it): `_stop` takes the child's lease back, closes its open calls and request and idles it.

Child threads run built-in tools in the session's sandbox (threads share the container's
filesystem). Their always_ask and custom tool calls are stored on the primary log with
session_thread_id set; the session idles with requires_action listing them, and the user's answer
(routed by tool_use_id) resumes the child. MCP servers are not offered to children.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from api.ids import new_id
from harness import budget
from harness import services as loop
from harness.context import CONTEXT_TYPES, INTERRUPTED, context_build
from harness.dispatch import session_kick, thread_kick
from harness.keeper import keeper
from harness.providers import ModelError, ModelRequest, ModelUsage, provider_for
from harness.providers.base import ModelCancelled
from harness.tools import READ_ONLY, ToolRun, ToolSpec, tool_catalog
from selfhosted import harness as selfhosted_harness
from sessions.models import Event, Session, SessionThread, Status
from sessions.services import NewEvent, events_append
from skills.runtime import skills_system_prompt

log = logging.getLogger(__name__)

SEND_TOOL = "send_to_agent"
# A child's requests to the user and the user's answers: stored on the primary log (the stream
# clients watch) with session_thread_id naming the child.
CROSS_POSTED = (
    "agent.tool_use",
    "agent.custom_tool_use",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "user.tool_result",
)
MAX_THREADS = 25
CHILD_CONTEXT_TYPES = (*CONTEXT_TYPES, "agent.thread_message_received")


def roster(agent: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Roster member name -> its full definition. `self` is the coordinator's own definition."""
    multi = agent.get("multiagent")
    if not isinstance(multi, dict) or multi.get("type") != "coordinator":
        return {}
    members: dict[str, dict[str, Any]] = {}
    for entry in multi.get("agents") or []:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == "self":
            entry = {k: v for k, v in agent.items() if k != "multiagent"}
        elif entry.get("type") not in (None, "agent") or not entry.get("name"):
            continue  # an advisor is not a delegate
        members.setdefault(str(entry["name"]), entry)
    return members


def coordinator_spec(agent: dict[str, Any]) -> ToolSpec | None:
    members = roster(agent)
    if not members:
        return None
    lines = [
        f"- {name}: {(m.get('description') or '').strip() or 'no description'}" for name, m in members.items()
    ]
    definition = {
        "name": SEND_TOOL,
        "description": "Send a message to another agent and wait for its answer. Each agent works in its "
        "own thread with its own context (it sees only the messages you send it, and keeps them across "
        "calls) and shares this session's files. The result is the agent's final reply. Agents:\n"
        + "\n".join(lines),
        "input_schema": {
            "type": "object",
            "properties": {
                "agent_name": {"type": "string", "enum": list(members), "description": "Who to send to."},
                "message": {"type": "string", "description": "The task or follow-up, self-contained."},
            },
            "required": ["agent_name", "message"],
        },
    }
    return ToolSpec(SEND_TOOL, "builtin", "always_allow", definition)


class _Quiet:
    def block_start(self, index: int, block_type: str) -> None:
        pass

    def text_delta(self, index: int, text: str) -> None:
        pass


@dataclass
class _Child:
    session_id: str
    state: "loop.StepState"
    thread: SessionThread
    primary_id: str

    @property
    def owner(self) -> str:
        return self.state.handle.owner

    def events(self) -> list[Event]:
        return child_events(self.session_id, self.thread.pk)

    def locked(self) -> Session:
        """The session row, locked for this transaction, if this step still holds the thread's lease."""
        return loop._locked(self.session_id, self.owner, thread_id=self.thread.pk)

    def append(self, session: Session, child: list[NewEvent], primary: list[NewEvent] | None = None) -> None:
        for item in child:
            item.thread = self.thread
        events_append(session=session, events=[*child, *(primary or [])])

    def set_status(self, session: Session, status: str, stop_reason: dict[str, Any] | None = None) -> None:
        thread = self.thread
        now = timezone.now()
        if thread.running_since is not None and status != Status.RUNNING:
            thread.active_seconds += (now - thread.running_since).total_seconds()
            thread.running_since = None
        if status == Status.RUNNING and thread.running_since is None:
            thread.running_since = now
        thread.status = status
        thread.stop_reason = stop_reason if status == Status.IDLE else thread.stop_reason
        thread.updated_at = now
        thread.save(update_fields=["status", "stop_reason", "active_seconds", "running_since", "updated_at"])
        own: dict[str, Any] = {"stop_reason": stop_reason} if status == Status.IDLE else {}
        cross = {"session_thread_id": thread.pk, "agent_name": thread.agent_name, **own}
        name = "rescheduled" if status == Status.RESCHEDULING else status
        self.append(
            session,
            [NewEvent(f"session.status_{name}", own)],
            [NewEvent(f"session.thread_status_{name}", cross)],
        )


def child_events(session_id: str, thread_id: str) -> list[Event]:
    """A child's context events: its own, plus its requests to the user and the user's answers,
    which live on the primary log with session_thread_id set."""
    return list(
        Event.objects.filter(session_id=session_id, type__in=CHILD_CONTEXT_TYPES)
        .filter(
            Q(thread_id=thread_id)
            | Q(thread=None, type__in=CROSS_POSTED, payload__session_thread_id=thread_id)
        )
        .order_by("seq")
    )


def cross_posted(event: Event) -> bool:
    return event.type in CROSS_POSTED and bool(event.payload.get("session_thread_id"))


@dataclass
class _Plan:
    run: list[Event]  # confirmed, or read-only calls a crash left without a result
    closing: list[NewEvent]  # denials and lost results
    pending: list[str]  # waiting on the user
    remote: list[str] = field(default_factory=list)  # self_hosted: waiting on the user's worker


def _plan(ctx: Any, thread: SessionThread, *, remote: bool = False) -> _Plan:
    plan = _Plan([], [], [])
    for use in ctx.unresolved():
        if use.custom:
            plan.pending.append(use.event.id)
        elif remote and selfhosted_harness.runs_on_worker(use.event) and loop._remote_ready(use):
            plan.remote.append(use.event.id)
        elif use.permission == "ask":
            if use.confirmation is None:
                plan.pending.append(use.event.id)
            elif use.confirmation.payload.get("result") == "allow":
                plan.run.append(use.event)
            else:
                note = use.confirmation.payload.get("deny_message") or "The user denied this tool call."
                result = loop._tool_result(use.event, f"Permission denied by the user: {note}", is_error=True)
                plan.closing.append(result)
        elif use.event.payload.get("name") in READ_ONLY:
            plan.run.append(use.event)
        else:
            plan.closing.append(loop._tool_result(use.event, loop.LOST, is_error=True))
    for item in plan.closing:
        item.thread = thread
    return plan


def _child_context(session: Session, thread: SessionThread) -> Any:
    return context_build(session=session, events=child_events(session.pk, thread.pk))


# --- the coordinator's side: one locked move over its open send_to_agent calls ------------------------


@dataclass
class Sends:
    """What the coordinator's open send_to_agent calls wait on after one move."""

    moved: bool = False  # results were appended: the coordinator's model goes next
    at_work: list[str] = field(default_factory=list)  # children at work; each kicks the session when it stops
    pending: list[str] = field(default_factory=list)  # child requests waiting on the user


def _refusal(members: dict[str, Any], name: Any, message: Any) -> ToolRun | None:
    if not isinstance(name, str) or name not in members:
        return ToolRun(
            [{"type": "text", "text": f"No agent named {name!r}; choose one of {sorted(members)}."}], True
        )
    if not isinstance(message, str) or not message.strip():
        return ToolRun([{"type": "text", "text": "message must be a non-empty string."}], True)
    return None


def sends_advance(session: Session, state: "loop.StepState", ctx: Any, uses: list[Event]) -> Sends:
    """Move the coordinator's open send_to_agent calls on, in call order, with the session row
    locked: deliver each call's message to its child (which then runs as its own step, so the
    children of one answer run at the same time), resume children whose wait is over, and once no
    child is at work or waiting on the user, append the answers as the calls' results in call
    order. Two calls to one agent take turns: the second is delivered after the first's result."""
    members = roster(state.agent)
    primary_id = state.primary_thread_id or ""
    out = Sends()
    children: dict[str, SessionThread] = {}
    for thread in SessionThread.objects.filter(
        session_id=session.pk, parent_id=primary_id, archived_at=None
    ).order_by("created_at", "id"):
        children.setdefault(thread.agent_name, thread)
    answered: list[tuple[Event, ToolRun]] = []
    busy: set[str] = set()
    kicks: list[str] = []
    for use in uses:
        tool_input = use.payload.get("input") or {}
        name, message = tool_input.get("agent_name"), tool_input.get("message")
        refusal = _refusal(members, name, message)
        if refusal is not None:
            answered.append((use, refusal))
            continue
        thread = children.get(name)
        if thread is not None and thread.pk in busy:
            continue  # the agent is still on an earlier call of this answer
        sent = _sent_for(session, ctx, use, thread) if thread is not None else None
        if sent is None:
            delivered = _deliver(session, use, name, members[name], thread, primary_id, message)
            if isinstance(delivered, ToolRun):
                answered.append((use, delivered))
                continue
            children[name] = delivered
            busy.add(delivered.pk)
            kicks.append(delivered.pk)
            out.at_work.append(delivered.pk)
            continue
        busy.add(thread.pk)
        answer = (
            Event.objects.filter(
                session_id=session.pk,
                thread=None,
                seq__gt=sent.seq,
                type="agent.thread_message_received",
                payload__from_session_thread_id=thread.pk,
            )
            .order_by("seq")
            .first()
        )
        if answer is not None:
            answered.append((use, ToolRun(answer.payload.get("content") or [], False)))
            continue
        child = _Child(session.pk, state, thread, primary_id)
        stop = (thread.stop_reason or {}).get("type")
        if thread.status in (Status.RUNNING, Status.RESCHEDULING):
            out.at_work.append(thread.pk)
            if thread.lease_owner is None:
                # Nobody runs it: its wait may be over (a worker's answer). An expired lease is the
                # sweeper's, which says so in the log (session.thread_status_rescheduled) first.
                kicks.append(thread.pk)
        elif thread.status == Status.TERMINATED:
            answered.append((use, ToolRun([{"type": "text", "text": f"{name}'s thread has ended."}], True)))
        elif stop == "retries_exhausted":
            answered.append((use, _failed(session, thread)))
        elif stop == "requires_action" and (plan := _plan(_child_context(session, thread), thread)).pending:
            if not plan.run and not plan.closing:
                out.pending.extend(plan.pending)
                continue
            child.set_status(session, Status.RUNNING)
            kicks.append(thread.pk)
            out.at_work.append(thread.pk)
        else:
            # Its request was answered or closed, or the budget that paused it was raised.
            child.set_status(session, Status.RUNNING)
            kicks.append(thread.pk)
            out.at_work.append(thread.pk)
    if answered and not out.at_work and not out.pending:
        events_append(
            session=session,
            events=[loop._tool_result(use, run.content, is_error=run.is_error) for use, run in answered],
        )
        out.moved = True
    for thread_id in kicks:
        transaction.on_commit(lambda thread_id=thread_id: thread_kick(session.pk, thread_id))
    return out


def children_stopped(thread_ids: list[str]) -> bool:
    """Whether one of these children stopped: its kick may have found the coordinator's lease held."""
    return (
        SessionThread.objects.filter(pk__in=thread_ids)
        .exclude(status__in=(Status.RUNNING, Status.RESCHEDULING))
        .exists()
    )


def _sent_for(session: Session, ctx: Any, use: Event, thread: SessionThread) -> Event | None:
    """The message a call delivered to its child, if it did. A child takes one call at a time, so
    it is the first message sent to that thread after the call and the results of the earlier
    calls to the same agent (a rerun after a crash finds it again instead of sending it twice)."""
    name = (use.payload.get("input") or {}).get("agent_name")
    floor = use.seq
    for seq, tool_use_id in Event.objects.filter(
        session_id=session.pk, thread=None, seq__gt=use.seq, type="agent.tool_result"
    ).values_list("seq", "payload__tool_use_id"):
        earlier = ctx.uses.get(tool_use_id)
        if earlier is not None and earlier.event.payload.get("name") == SEND_TOOL:
            if (earlier.event.payload.get("input") or {}).get("agent_name") == name:
                floor = max(floor, seq)
    return (
        Event.objects.filter(
            session_id=session.pk,
            thread=None,
            seq__gt=floor,
            type="agent.thread_message_sent",
            payload__to_session_thread_id=thread.pk,
        )
        .order_by("seq")
        .first()
    )


def _deliver(
    session: Session,
    use: Event,
    name: str,
    member: dict[str, Any],
    thread: SessionThread | None,
    primary_id: str,
    message: str,
) -> SessionThread | ToolRun:
    """Start (or continue) the member's child thread with the call's message."""
    content = [{"type": "text", "text": message}]
    if thread is None:
        if SessionThread.objects.filter(session_id=session.pk).count() > MAX_THREADS:
            return ToolRun([{"type": "text", "text": f"At most {MAX_THREADS} threads per session."}], True)
        now = timezone.now()
        thread = SessionThread.objects.create(
            id=new_id("sthr"),
            session_id=session.pk,
            parent_id=primary_id,
            agent_name=name,
            agent_snapshot=member,
            created_at=now,
            updated_at=now,
        )
        events_append(
            session=session,
            events=[NewEvent("session.thread_created", {"session_thread_id": thread.pk, "agent_name": name})],
        )
    child = _Child(session.pk, None, thread, primary_id)  # type: ignore[arg-type]
    child.append(
        session,
        [
            NewEvent(
                "agent.thread_message_received", {"from_session_thread_id": primary_id, "content": content}
            )
        ],
        [
            NewEvent(
                "agent.thread_message_sent",
                {"to_session_thread_id": thread.pk, "to_agent_name": name, "content": content},
            )
        ],
    )
    if thread.status != Status.RUNNING:
        child.set_status(session, Status.RUNNING)
    return thread


def _failed(session: Session, thread: SessionThread) -> ToolRun:
    error = (
        Event.objects.filter(session_id=session.pk, thread=thread, type="session.error")
        .order_by("-seq")
        .first()
    )
    message = ((error.payload.get("error") or {}).get("message") if error else None) or "its model failed"
    return ToolRun([{"type": "text", "text": f"{thread.agent_name} failed: {message}"}], True)


def _stop(session: Session, thread: SessionThread) -> None:
    """Stop a child thread for an interrupt (or a waiting one's request): take its lease back, so
    its step, if one is still at work, writes nothing more, close its open calls and model
    request, and idle it."""
    SessionThread.objects.filter(pk=thread.pk).update(lease_owner=None, lease_expires_at=None)
    ctx = _child_context(session, thread)
    closing = [
        NewEvent(
            "agent.tool_result",
            {"tool_use_id": u.event.id, "content": [{"type": "text", "text": INTERRUPTED}], "is_error": True},
        )
        for u in ctx.unresolved()
    ]
    if ctx.open_span_id is not None:
        closing.append(loop._span_end(ctx.open_span_id, ModelUsage(), is_error=True))
    child = _Child(session.pk, None, thread, thread.parent_id or "")  # type: ignore[arg-type]
    child.append(session, closing)
    child.set_status(session, Status.IDLE, {"type": "end_turn"})


def _stoppable(thread: SessionThread) -> bool:
    if thread.status in (Status.RUNNING, Status.RESCHEDULING):
        return True
    return thread.status == Status.IDLE and (thread.stop_reason or {}).get("type") == "requires_action"


def children_stop(session: Session, primary_id: str | None) -> None:
    """An interrupt of the whole session stops every child at work or waiting on the user."""
    for thread in SessionThread.objects.filter(session_id=session.pk, parent_id=primary_id, archived_at=None):
        if _stoppable(thread):
            _stop(session, thread)


def thread_interrupt(session: Session, ctx: Any, target: str) -> None:
    """An interrupt naming a child thread. A child at work stops and its open call returns that it
    was interrupted; a child waiting on the user has its request closed and answers from there
    (the coordinator's open call resumes it)."""
    thread = SessionThread.objects.filter(session_id=session.pk, pk=target, parent__isnull=False).first()
    if thread is None or not _stoppable(thread):
        return
    working = thread.status != Status.IDLE
    _stop(session, thread)
    if not working:
        return
    use = next(
        (
            u.event
            for u in ctx.unresolved()
            if u.event.payload.get("name") == SEND_TOOL
            and (u.event.payload.get("input") or {}).get("agent_name") == thread.agent_name
        ),
        None,
    )
    if use is not None:
        text = f"The user interrupted {thread.agent_name}'s thread."
        events_append(session=session, events=[loop._tool_result(use, text, is_error=True)])


def terminate_children(session: Session) -> None:
    """The session is ending for good: so do its child threads (session.thread_status_terminated)."""
    live = SessionThread.objects.filter(session_id=session.pk, parent__isnull=False).exclude(
        status=Status.TERMINATED
    )
    for thread in live:
        SessionThread.objects.filter(pk=thread.pk).update(lease_owner=None, lease_expires_at=None)
        _Child(session.pk, None, thread, thread.parent_id or "").set_status(session, Status.TERMINATED)  # type: ignore[arg-type]


def _text(content: list[dict[str, Any]]) -> str:
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text").strip()


# --- the child's side: a child thread's step, under its own lease -------------------------------------


def thread_lease_claim(*, thread_id: str, owner: str) -> bool:
    now = timezone.now()
    # Conditional UPDATE, as for the session: one step wins a free (or expired) lease.
    claimed = (
        SessionThread.objects.filter(pk=thread_id, status__in=(Status.RUNNING, Status.RESCHEDULING))
        .filter(Q(lease_owner__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=settings.GALLEY_LEASE_SECONDS))
    )
    return claimed == 1


def thread_lease_release(*, thread_id: str, owner: str) -> None:
    SessionThread.objects.filter(pk=thread_id, lease_owner=owner).update(
        lease_owner=None, lease_expires_at=None
    )


def _interrupt_waits(session_id: str, thread_id: str) -> bool:
    """An interrupt for this child (or the whole session) is queued: the coordinator's step takes it."""
    return any(
        (target or "") in ("", thread_id)
        for target in Event.objects.filter(
            session_id=session_id, thread=None, type="user.interrupt", processed_at=None
        ).values_list("payload__session_thread_id", flat=True)
    )


def thread_step(*, session_id: str, thread_id: str) -> None:
    """Run a child thread until its turn ends or it waits (on the user, the worker, the budget).
    Safe to call twice: the thread's lease admits one step. Its answer, or its wait on the user,
    kicks the session, whose step hands the answer to the coordinator."""
    owner = loop._new_owner()
    if not thread_lease_claim(thread_id=thread_id, owner=owner):
        return
    handle = keeper.register(session_id, owner, thread_id)
    try:
        thread = SessionThread.objects.get(pk=thread_id)
        if _interrupt_waits(session_id, thread_id):
            return
        state = loop.StepState(handle, thread=thread)
        state.remote = selfhosted_harness.session_is_remote(session_id)
        child = _Child(session_id, state, thread, thread.parent_id or "")
        if thread.status == Status.RESCHEDULING:
            with transaction.atomic():
                child.set_status(child.locked(), Status.RUNNING)
        _run_child(child)
    except loop.LeaseLost:
        log.warning(
            "thread %s of %s lost its lease; it was stopped or another worker continues",
            thread_id,
            session_id,
        )
    except loop.SessionLogFull as exc:  # the log is the session's: it ends, with all its threads
        loop.session_end_log_full(session_id=session_id, exc=exc)
    finally:
        keeper.unregister(handle)
        thread_lease_release(thread_id=thread_id, owner=owner)


def thread_reschedule_expired(*, thread_id: str, owner: str) -> bool:
    """Take back the expired lease of a child step whose worker died: the thread is `rescheduling`
    (session.thread_status_rescheduled) until its next step resumes it from its log."""
    now = timezone.now()
    session_id = SessionThread.objects.values_list("session_id", flat=True).get(pk=thread_id)
    with transaction.atomic():
        session = Session.objects.select_for_update().only(*loop.ROW_FIELDS).get(pk=session_id)
        released = SessionThread.objects.filter(
            pk=thread_id, lease_owner=owner, lease_expires_at__lt=now, status=Status.RUNNING
        ).update(lease_owner=None, lease_expires_at=None)
        if released != 1:
            return False
        thread = SessionThread.objects.get(pk=thread_id)
        _Child(session_id, None, thread, thread.parent_id or "").set_status(session, Status.RESCHEDULING)  # type: ignore[arg-type]
    log.warning("thread %s of %s: the lease of %s expired; rescheduled", thread_id, session_id, owner)
    return True


def threads_sweep(*, limit: int = 500) -> list[tuple[str, str]]:
    """(session id, thread id) of child threads that need a step and have none: a crashed worker's
    expired lease (the thread is marked rescheduled first), or a lost kick."""
    now = timezone.now()
    expired = SessionThread.objects.filter(
        lease_owner__isnull=False, lease_expires_at__lt=now, status=Status.RUNNING
    ).values_list("id", "lease_owner")[:limit]
    for thread_id, owner in list(expired):
        thread_reschedule_expired(thread_id=thread_id, owner=owner)
    free = Q(lease_owner__isnull=True) | Q(lease_expires_at__lt=now)
    return list(
        SessionThread.objects.filter(free, status__in=(Status.RUNNING, Status.RESCHEDULING))
        .exclude(session__status=Status.TERMINATED)
        .values_list("session_id", "id")
        .order_by("session_id", "id")[:limit]
    )


def _run_child(child: _Child) -> None:
    """The child's loop: resume from its log, call its model and run its tools until its turn ends
    (its answer is cross-posted and the session kicked) or it waits."""
    member = child.thread.agent_snapshot
    catalog = {n: s for n, s in tool_catalog(member).items() if s.kind in ("builtin", "custom")}
    while True:
        with transaction.atomic():
            session = child.locked()
            if session.status == Status.TERMINATED or session.archived_at is not None:
                return
            ctx = context_build(session=session, events=child.events())
            closing: list[NewEvent] = []
            if ctx.open_span_id is not None:
                closing.append(loop._span_end(ctx.open_span_id, ModelUsage(), is_error=True))
            plan = _plan(ctx, child.thread, remote=child.state.remote)
            rerun = plan.run
            child.append(session, [*closing, *plan.closing])
            if plan.pending and not rerun and not plan.closing:
                stop = {"type": "requires_action", "event_ids": plan.pending}
                if child.thread.status != Status.IDLE or child.thread.stop_reason != stop:
                    child.set_status(session, Status.IDLE, stop)
                transaction.on_commit(lambda: session_kick(child.session_id))
                return
            if plan.remote and not rerun and not plan.closing:
                # Running: the worker's user.tool_result kicks the session, whose step kicks us.
                selfhosted_harness.remote_wait(child.session_id)
                return
            if plan.closing:
                continue
        if rerun:
            if not loop._run_tools(session, child.state, rerun):
                return
            continue
        if not ctx.needs_model():
            _finish(child)
            return
        request = ModelRequest(
            model=loop._model_id(member),
            system=skills_system_prompt(member.get("system"), member),
            tools=[spec.definition for spec in catalog.values()],
            messages=ctx.messages(),
            max_tokens=settings.GALLEY_MODEL_MAX_TOKENS,
        )
        with transaction.atomic():
            session = child.locked()
            if budget.budget_stop(session=session, child=child):
                return  # paused at the budget; raising it kicks the session, whose step resumes us
            span = events_append(
                session=session, events=[NewEvent("span.model_request_start", {}, thread=child.thread)]
            )[0]
        cancel = child.state.handle.fresh_cancel()
        loop._release_connection()
        try:
            answer = provider_for(request.model).complete(request, listener=_Quiet(), cancel=cancel)
        except ModelCancelled:
            return  # an interrupt: the coordinator's step stops this thread and closes the request
        except ModelError as exc:
            with transaction.atomic():
                session = child.locked()
                child.append(
                    session,
                    [loop._span_end(span.id, exc.usage, is_error=True), loop._error_event(exc, "exhausted")],
                )
                child.set_status(session, Status.IDLE, {"type": "retries_exhausted"})
                transaction.on_commit(lambda: session_kick(child.session_id))
            return
        uses = _record(child, answer, span.id, catalog)
        if not answer.blocks:
            _finish(child)
            return
        if uses and not loop._run_tools(session, child.state, uses):
            return


def _record(child: _Child, answer: Any, span_id: str, catalog: dict[str, ToolSpec]) -> list[Event]:
    events: list[NewEvent] = []
    denials: list[tuple[int, str]] = []
    for block in answer.blocks:
        kind = block.get("type")
        if kind == "thinking":
            events.append(NewEvent("agent.thinking", {}))
        elif kind == "text" and block.get("text"):
            events.append(NewEvent("agent.message", {"content": [{"type": "text", "text": block["text"]}]}))
        elif kind == "tool_use":
            name = block.get("name", "")
            spec = catalog.get(name)
            payload: dict[str, Any] = {"name": name, "input": block.get("input") or {}}
            if spec is not None and spec.kind == "custom":
                payload["session_thread_id"] = child.thread.pk
                events.append(NewEvent("agent.custom_tool_use", payload, thread=None))
                continue
            if spec is None:
                payload["evaluated_permission"] = "deny"
                denials.append((len(events), f"Tool {name!r} is not available in this thread."))
            elif spec.policy == "always_ask":
                payload["evaluated_permission"] = "ask"
                payload["evaluation"] = {"type": "always_ask"}
                payload["session_thread_id"] = child.thread.pk
                events.append(NewEvent("agent.tool_use", payload, thread=None))
                continue
            else:
                payload["evaluated_permission"] = "allow"
                payload["evaluation"] = {"type": spec.policy}
                if child.state.remote and name in selfhosted_harness.WORKER_TOOLS:
                    # On the primary log, where the self-hosted worker's stream sees it.
                    payload["session_thread_id"] = child.thread.pk
                    events.append(NewEvent("agent.tool_use", payload, thread=None))
                    continue
            events.append(NewEvent("agent.tool_use", payload, thread=child.thread))
    for event in events:
        event.id = new_id("sevt")
    for position, reason in denials:
        events.append(
            NewEvent(
                "agent.tool_result",
                {
                    "tool_use_id": events[position].id,
                    "is_error": True,
                    "content": [{"type": "text", "text": reason}],
                },
            )
        )
    events.append(loop._span_end(span_id, answer.usage))
    for event in events:
        if not event.payload.get("session_thread_id"):
            event.thread = child.thread
    with transaction.atomic():
        session = child.locked()
        rows = events_append(session=session, events=events)
        loop._usage_update(
            child.session_id,
            answer.model,
            answer.usage,
            thread_id=child.thread.pk,
            agent_name=child.thread.agent_name,
        )
    return [
        r for r in rows if r.type == "agent.tool_use" and r.payload.get("evaluated_permission") == "allow"
    ]


def _finish(child: _Child) -> None:
    """The child's turn ended: its last message goes back to the coordinator (agent.thread_message_*)
    and the session is kicked, whose step makes it the call's result."""
    with transaction.atomic():
        session = child.locked()
        last = (
            Event.objects.filter(session_id=child.session_id, thread=child.thread, type="agent.message")
            .order_by("-seq")
            .first()
        )
        content = [{"type": "text", "text": _text(last.payload.get("content") or [])}] if last else []
        if not content or not content[0]["text"]:
            content = [
                {"type": "text", "text": f"({child.thread.agent_name} ended its turn without a reply.)"}
            ]
        name = child.thread.agent_name
        child.append(
            session,
            [
                NewEvent(
                    "agent.thread_message_sent",
                    {"to_session_thread_id": child.primary_id, "content": content},
                )
            ],
            [
                NewEvent(
                    "agent.thread_message_received",
                    {"from_session_thread_id": child.thread.pk, "from_agent_name": name, "content": content},
                )
            ],
        )
        child.set_status(session, Status.IDLE, {"type": "end_turn"})
        transaction.on_commit(lambda: session_kick(child.session_id))

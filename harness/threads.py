"""Multi-agent coordinator threads at run time (spec 9).

A coordinator session offers its model one extra tool, `send_to_agent`. A call starts (or continues)
a child thread running that roster member: a SessionThread whose events carry thread=<child> and
whose context is built from those events only. The call returns when the child's turn ends, with the
child's last agent.message as the tool result. Calls run one after another inside the coordinator's
step (the session's lease covers them), so at most one child runs at a time. Summaries are
cross-posted on the primary log: session.thread_created, session.thread_status_*, and
agent.thread_message_sent / _received.

Child threads run built-in tools in the session's sandbox (threads share the container's
filesystem). Their always_ask and custom tool calls are stored on the primary log with
session_thread_id set; the session idles with requires_action listing them, and the user's answer
(routed by tool_use_id) resumes the child. MCP servers are not offered to children.
"""

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from api.ids import new_id
from harness import budget
from harness import services as loop
from harness.context import CONTEXT_TYPES, INTERRUPTED, context_build
from harness.providers import ModelError, ModelRequest, ModelUsage, provider_for
from harness.providers.base import ModelCancelled
from harness.tools import READ_ONLY, ToolRun, ToolSpec, run_builtin, tool_catalog
from selfhosted import harness as selfhosted_harness
from sessions.models import Event, Session, SessionThread, Status
from sessions.services import NewEvent, events_append
from skills.runtime import skills_system_prompt

SEND_TOOL = "send_to_agent"
PAUSED = False  # send_to_agent's answer when the child waits on the user
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
        self.append(
            session,
            [NewEvent(f"session.status_{status}", own)],
            [NewEvent(f"session.thread_status_{status}", cross)],
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


def waiting_ids(session: Session, state: "loop.StepState", use: Event) -> list[str]:
    """The child requests a coordinator's unfinished send_to_agent call waits on."""
    name = (use.payload.get("input") or {}).get("agent_name")
    primary_id = state.primary_thread_id
    thread = SessionThread.objects.filter(
        session_id=session.pk, parent_id=primary_id, agent_name=name, archived_at=None, status=Status.IDLE
    ).first()
    if thread is None or (thread.stop_reason or {}).get("type") != "requires_action":
        return []
    ctx = context_build(session=session, events=child_events(session.pk, thread.pk))
    return _plan(ctx, thread).pending


def remote_ids(session: Session, state: "loop.StepState", use: Event) -> list[str]:
    """The calls of a self_hosted child thread that a send_to_agent call waits on the worker for."""
    name = (use.payload.get("input") or {}).get("agent_name")
    thread = SessionThread.objects.filter(
        session_id=session.pk, parent_id=state.primary_thread_id, agent_name=name, archived_at=None
    ).first()
    if thread is None:
        return []
    ctx = context_build(session=session, events=child_events(session.pk, thread.pk))
    return _plan(ctx, thread, remote=True).remote


def close_waiting(session: Session, primary_id: str | None, *, only: str | None = None) -> None:
    """An interrupt closes the requests children (or the one it names) wait on."""
    threads = SessionThread.objects.filter(
        session_id=session.pk, parent_id=primary_id, status=Status.IDLE, archived_at=None
    )
    if only is not None:
        threads = threads.filter(pk=only)
    for thread in threads:
        if (thread.stop_reason or {}).get("type") != "requires_action":
            continue
        ctx = context_build(session=session, events=child_events(session.pk, thread.pk))
        closing = [
            NewEvent(
                "agent.tool_result",
                {
                    "tool_use_id": u.event.id,
                    "content": [{"type": "text", "text": INTERRUPTED}],
                    "is_error": True,
                },
                thread=thread,
            )
            for u in ctx.unresolved()
        ]
        child = _Child(session.pk, None, thread, primary_id or "")  # type: ignore[arg-type]
        child.append(session, closing)
        child.set_status(session, Status.IDLE, {"type": "end_turn"})


def terminate_children(session: Session) -> None:
    """The session is ending for good: so do its child threads (session.thread_status_terminated)."""
    live = SessionThread.objects.filter(session_id=session.pk, parent__isnull=False).exclude(
        status=Status.TERMINATED
    )
    for thread in live:
        _Child(session.pk, None, thread, thread.parent_id or "").set_status(session, Status.TERMINATED)  # type: ignore[arg-type]


def _text(content: list[dict[str, Any]]) -> str:
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text").strip()


def _thread_for(
    session_id: str, primary_id: str, name: str, member: dict[str, Any]
) -> tuple[SessionThread, bool]:
    found = (
        SessionThread.objects.filter(
            session_id=session_id, parent_id=primary_id, agent_name=name, archived_at=None
        )
        .order_by("created_at", "id")
        .first()
    )
    if found is not None:
        return found, False
    now = timezone.now()
    thread = SessionThread(
        id=new_id("sthr"),
        session_id=session_id,
        parent_id=primary_id,
        agent_name=name,
        agent_snapshot=member,
        created_at=now,
        updated_at=now,
    )
    return thread, True


def send_to_agent(session: Session, state: "loop.StepState", use: Event) -> ToolRun | None | bool:
    """Run the coordinator's send_to_agent call. None means an interrupt stopped the session,
    PAUSED that the child waits on the user (the call stays open)."""
    members = roster(state.agent)
    tool_input = use.payload.get("input") or {}
    name, message = tool_input.get("agent_name"), tool_input.get("message")
    if not isinstance(name, str) or name not in members:
        return ToolRun(
            [{"type": "text", "text": f"No agent named {name!r}; choose one of {sorted(members)}."}], True
        )
    if not isinstance(message, str) or not message.strip():
        return ToolRun([{"type": "text", "text": "message must be a non-empty string."}], True)
    primary_id = SessionThread.objects.values_list("id", flat=True).get(session_id=session.pk, parent=None)
    content = [{"type": "text", "text": message}]
    with transaction.atomic():
        locked = loop._locked(session.pk, state.handle.owner)
        thread, new = _thread_for(session.pk, primary_id, name, members[name])
        child = _Child(session.pk, state, thread, primary_id)
        # A rerun after a crash: the message may already be delivered, or even answered. Calls run
        # in answer order, so this call's message comes after the results of the calls before it.
        floor = (
            Event.objects.filter(
                session_id=session.pk, thread=None, seq__gt=use.seq, type__in=loop.RESULT_TYPES
            ).aggregate(top=Max("seq"))["top"]
            or use.seq
        )
        sent = (
            Event.objects.filter(
                session_id=session.pk,
                thread=None,
                seq__gt=floor,
                type="agent.thread_message_sent",
                payload__to_session_thread_id=thread.pk,
            )
            .order_by("seq")
            .first()
            if not new
            else None
        )
        if sent is not None:
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
                return ToolRun(answer.payload.get("content") or [], False)
        else:
            if new:
                if SessionThread.objects.filter(session_id=session.pk).count() > MAX_THREADS:
                    return ToolRun(
                        [{"type": "text", "text": f"At most {MAX_THREADS} threads per session."}], True
                    )
                thread.save(force_insert=True)
                events_append(
                    session=locked,
                    events=[
                        NewEvent(
                            "session.thread_created", {"session_thread_id": thread.pk, "agent_name": name}
                        )
                    ],
                )
            child.append(
                locked,
                [
                    NewEvent(
                        "agent.thread_message_received",
                        {"from_session_thread_id": primary_id, "content": content},
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
            child.set_status(locked, Status.RUNNING)
    return _run_child(child)


def _run_child(child: _Child) -> ToolRun | None | bool:
    member = child.thread.agent_snapshot
    catalog = {n: s for n, s in tool_catalog(member).items() if s.kind in ("builtin", "custom")}
    while True:
        with transaction.atomic():
            session = loop._locked(child.session_id, child.owner)
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
                return PAUSED
            if plan.remote and not rerun and not plan.closing:
                return PAUSED  # running: the worker's user.tool_result resumes the child
            if plan.closing:
                continue
        if rerun:
            if _run_tools(child, session, rerun) is None:
                return _stopped(child)
            continue
        if not ctx.needs_model():
            return _finish(child)
        request = ModelRequest(
            model=loop._model_id(member),
            system=skills_system_prompt(member.get("system"), member),
            tools=[spec.definition for spec in catalog.values()],
            messages=ctx.messages(),
            max_tokens=settings.GALLEY_MODEL_MAX_TOKENS,
        )
        with transaction.atomic():
            session = loop._locked(child.session_id, child.owner)
            if budget.budget_stop(session=session, child=child):
                return None  # paused at the budget; the coordinator's call resumes the child
            span = events_append(
                session=session, events=[NewEvent("span.model_request_start", {}, thread=child.thread)]
            )[0]
        cancel = child.state.handle.fresh_cancel()
        loop._release_connection()
        try:
            answer = provider_for(request.model).complete(request, listener=_Quiet(), cancel=cancel)
        except ModelCancelled:
            with transaction.atomic():
                session = loop._locked(child.session_id, child.owner)
                child.append(session, [loop._span_end(span.id, ModelUsage(), is_error=True)])
            return _stopped(child)
        except ModelError as exc:
            with transaction.atomic():
                session = loop._locked(child.session_id, child.owner)
                child.append(
                    session,
                    [loop._span_end(span.id, exc.usage, is_error=True), loop._error_event(exc, "exhausted")],
                )
                child.set_status(session, Status.IDLE, {"type": "retries_exhausted"})
            return ToolRun(
                [{"type": "text", "text": f"{child.thread.agent_name} failed: {exc.message}"}], True
            )
        uses = _record(child, answer, span.id, catalog)
        if not answer.blocks:
            return _finish(child)
        if uses and _run_tools(child, session, uses) is None:
            return _stopped(child)


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
        session = loop._locked(child.session_id, child.owner)
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


def _run_tools(child: _Child, session: Session, uses: list[Event]) -> bool | None:
    for use in uses:
        cancel = child.state.handle.fresh_cancel()
        if cancel.is_set():
            return None
        if child.state.remote and selfhosted_harness.runs_on_worker(use):
            continue  # the self-hosted worker runs it; its user.tool_result resumes the child
        loop._release_connection()
        outcome = run_builtin(
            session=session,
            name=use.payload.get("name", ""),
            tool_input=use.payload.get("input") or {},
            tool_use_id=use.id,
            cancel=cancel,
        )
        with transaction.atomic():
            locked = loop._locked(child.session_id, child.owner)
            child.append(locked, [loop._tool_result(use, outcome.content, is_error=outcome.is_error)])
        if child.state.handle.cancel.is_set():
            return None
    return True


def _stopped(child: _Child) -> ToolRun | None:
    """An interrupt cancelled the child: close its open calls and idle it. Returns the tool result
    when the interrupt named this thread only; None when it stops the whole session."""
    with transaction.atomic():
        session = loop._locked(child.session_id, child.owner)
        interrupts = list(
            Event.objects.filter(
                session_id=child.session_id, thread=None, type="user.interrupt", processed_at=None
            ).order_by("seq")
        )
        ctx = context_build(session=session, events=child.events())
        child.append(
            session, [loop._tool_result(u.event, INTERRUPTED, is_error=True) for u in ctx.unresolved()]
        )
        if child.thread.status != Status.IDLE:
            child.set_status(session, Status.IDLE, {"type": "end_turn"})
        own = [e for e in interrupts if e.payload.get("session_thread_id") == child.thread.pk]
        if interrupts and len(own) == len(interrupts):
            loop._mark_processed(own)
            return ToolRun(
                [{"type": "text", "text": f"The user interrupted {child.thread.agent_name}'s thread."}], True
            )
    return None


def _finish(child: _Child) -> ToolRun:
    with transaction.atomic():
        session = loop._locked(child.session_id, child.owner)
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
    return ToolRun(content, False)

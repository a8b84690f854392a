"""How the console shows a session's log: chat items for the session page and trace rows for the
replay. Both read `Event.wire()`, the same JSON the API returns."""

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from harness import pricing
from sessions.models import Event, Session, SessionThread

if TYPE_CHECKING:
    from console.trace import LogEvent


def step_cost_micros(model_id: str, usage: dict[str, Any]) -> int:
    """List cost of one model request in USD millionths, from the harness's price table."""
    return pricing.token_cost_micros(
        model=model_id,
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
        # model_usage does not split cache writes by lifetime; price them as 5-minute writes.
        cache_write_5m_tokens=int(usage.get("cache_creation_input_tokens") or 0),
    )


@functools.lru_cache(maxsize=4096)  # a long trace prices thousands of requests at a few costs
def money(micros: int | float) -> str:
    dollars = Decimal(int(micros)) / Decimal(1_000_000)
    if dollars and abs(dollars) < Decimal("0.01"):
        return f"${dollars:.4f}"
    return f"${dollars:,.2f}"


def session_cost(session: Session) -> str:
    """The session's list cost so far: tokens, running time and web searches."""
    return money(
        pricing.total_cost_micros(
            token_cost_micros=session.token_cost_micros,
            active_seconds=session.active_seconds_now(),
            web_search_requests=session.web_search_requests,
        )
    )


def with_costs(sessions: list[Session]) -> list[Session]:
    for session in sessions:
        session.cost = session_cost(session)  # type: ignore[attr-defined]
    return sessions


def content_text(content: Any) -> str:
    """Plain text of a content block list (text blocks joined; other blocks named)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            parts.append(f"[{block.get('type', 'block')}]")
    return "\n".join(parts)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


SUMMARY_KEYS = ("command", "file_path", "path", "url", "query", "pattern", "message")
PREVIEW_CHARS = 140


def one_line(text: str, limit: int = PREVIEW_CHARS) -> str:
    """The first non-empty line of text, cut to limit characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def tool_summary(tool_input: Any) -> str:
    """What a tool call acts on, in one line: the command, the file, the URL, the query."""
    if not isinstance(tool_input, dict):
        return ""
    for key in SUMMARY_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            return one_line(value)
    return one_line(json.dumps(tool_input, ensure_ascii=False)) if tool_input else ""


@dataclass
class ChatContext:
    """What a chat bubble needs from the rest of the log: sub-agent names, the decisions taken on tool
    calls (tool_use_id -> allow/deny), and whether an interrupt is waiting for its idle."""

    threads: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    def observe(self, events: list[Event]) -> None:
        for event in events:
            if event.type == "user.tool_confirmation" and event.payload.get("tool_use_id"):
                self.decisions[str(event.payload["tool_use_id"])] = str(event.payload.get("result"))


def chat_item(
    event: Event, threads: dict[str, str] | None = None, context: ChatContext | None = None
) -> dict[str, Any] | None:
    """One chat bubble for an event, or None for events the chat does not show (spans, usage).
    `threads` names sub-agent threads (id -> agent name) so everything they do says who did it;
    `context` (read in log order) names approvals and stops as a person would."""
    context = context or ChatContext(threads=dict(threads or {}))
    if threads:
        context.threads.update(threads)
    item = _chat_item(event)
    if item is None:
        return None
    if event.thread_id:
        name = context.threads.get(event.thread_id) or "Sub-agent"
        if item.get("who") == "Agent":
            item["who"] = name
        elif item.get("who"):
            item["who"] = f"{name} · {item['who']}"
        item["agent_name"] = name
    if item["type"] in ("agent.tool_use", "agent.mcp_tool_use") and item.get("permission") == "ask":
        decision = context.decisions.get(event.id)
        item["permission"] = {"allow": "approved", "deny": "denied"}.get(decision or "", "ask")
    if item["type"] == "user.tool_confirmation":
        item["decides"] = str(event.payload.get("tool_use_id") or "")
        item["decision"] = "approved" if event.payload.get("result") == "allow" else "denied"
    if item["type"] == "user.interrupt":
        context.interrupted = True
    if item["type"] == "session.status_idle" and context.interrupted and not event.thread_id:
        context.interrupted = False
        if (event.payload.get("stop_reason") or {}).get("type") == "end_turn":
            item["text"] = "Stopped by you."
    return item


STATUS_LABELS = {"running": "working", "rescheduling": "retrying", "terminated": "ended"}


def status_label(session: Session) -> str:
    """The session's state as a person would name it."""
    if session.status == "idle" and (session.stop_reason or {}).get("type") == "requires_action":
        return "waiting for you"
    return STATUS_LABELS.get(session.status, session.status)


def work_state(session: Session) -> dict[str, Any] | None:
    """What the agent is doing right now, for the "thinking…" / "running bash (3 s)" line: the newest
    model request or tool call that has no end yet. None when the session is not working."""
    if session.status not in ("running", "rescheduling"):
        return None
    recent = list(Event.objects.filter(session=session).order_by("-seq")[:40])
    ended: set[str] = set()
    for event in recent:  # newest first: an end is seen before its start
        p = event.payload
        if event.type == "span.model_request_end":
            ended.add(str(p.get("model_request_start_id")))
        elif event.type in ("agent.tool_result", "agent.mcp_tool_result"):
            ended.add(str(p.get("tool_use_id") or p.get("mcp_tool_use_id")))
        elif event.type == "span.model_request_start" and event.id not in ended:
            who = "Sub-agent" if event.thread_id else "Agent"
            if event.thread_id:
                who = (
                    SessionThread.objects.filter(pk=event.thread_id)
                    .values_list("agent_name", flat=True)
                    .first()
                    or who
                )
            return {"label": f"{who} is thinking…", "since": event.created_at.isoformat()}
        elif event.type in ("agent.tool_use", "agent.mcp_tool_use") and event.id not in ended:
            if p.get("evaluated_permission") == "ask":
                continue  # waiting for a person, not running
            summary = tool_summary(p.get("input"))
            label = f"Running {p.get('name', 'a tool')}" + (f": {summary}" if summary else "")
            return {"label": label, "since": event.created_at.isoformat()}
    return {"label": "Working…", "since": None}


def _chat_item(event: Event) -> dict[str, Any] | None:
    p = event.payload
    t = event.type
    item: dict[str, Any] = {
        "id": event.id,
        "seq": event.seq,
        "type": t,
        "at": event.created_at,
        "thread": event.thread_id,
    }
    if t in ("user.message", "system.message"):
        return item | {
            "kind": "user",
            "who": "You" if t == "user.message" else "System",
            "text": content_text(p.get("content")),
        }
    if t == "agent.message":
        return item | {"kind": "agent", "who": "Agent", "text": content_text(p.get("content"))}
    if t in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
        name = p.get("name", "tool")
        if t == "agent.mcp_tool_use":
            name = f"{p.get('mcp_server_name', 'mcp')}.{name}"
        label = "Custom tool call" if t == "agent.custom_tool_use" else "Tool call"
        perm = p.get("evaluated_permission")
        return item | {
            "kind": "tool",
            "who": f"{label}: {name}",
            "summary": tool_summary(p.get("input")),
            "detail": pretty(p.get("input", {})),
            "permission": perm,
        }
    if t in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result", "user.tool_result"):
        who = "Tool result (error)" if p.get("is_error") else "Tool result"
        detail = content_text(p.get("content"))
        return item | {
            "kind": "tool",
            "who": who,
            "summary": one_line(detail) or "(no output)",
            "detail": detail,
            "error": bool(p.get("is_error")),
        }
    if t == "user.tool_confirmation":
        verdict = "approved" if p.get("result") == "allow" else "denied"
        return item | {
            "kind": "status",
            "text": f"You {verdict} a tool call."
            + (f" ({p['deny_message']})" if p.get("deny_message") else ""),
        }
    if t == "user.interrupt":
        return item | {"kind": "status", "text": "You interrupted the agent."}
    if t == "session.error":
        err = p.get("error") or {}
        return item | {
            "kind": "agent",
            "error": True,
            "who": f"Error: {err.get('type', 'error')}",
            "text": err.get("message", ""),
        }
    if t == "session.status_idle":
        reason = (p.get("stop_reason") or {}).get("type", "")
        text = {
            "requires_action": "Waiting for your decision.",
            "end_turn": "Done.",
            "budget_reached": "Budget reached.",
            "retries_exhausted": "Stopped after repeated errors.",
            "refusal": "The model refused.",
        }.get(reason, "Idle.")
        return item | {"kind": "status", "text": text}
    if t == "session.status_terminated":
        return item | {"kind": "status", "text": "The session ended."}
    if t in ("agent.thread_message_sent", "agent.thread_message_received"):
        peer = p.get("to_agent_name") or p.get("from_agent_name") or "another agent"
        arrow = "to" if t.endswith("sent") else "from"
        return item | {
            "kind": "tool",
            "who": f"Message {arrow} {peer}",
            "detail": content_text(p.get("content")),
        }
    if t == "session.thread_created":
        return item | {"kind": "status", "text": f"Started sub-agent {p.get('agent_name', '')}."}
    return None


def pending_actions(session: Session) -> list[dict[str, Any]]:
    """Tool confirmations and custom tool calls the session is waiting on."""
    stop = session.stop_reason or {}
    if session.status != "idle" or stop.get("type") != "requires_action":
        return []
    ids = [str(i) for i in stop.get("event_ids") or []]
    rows = Event.objects.filter(session=session, id__in=ids).order_by("seq")
    actions = []
    for event in rows:
        p = event.payload
        kind = "custom" if event.type == "agent.custom_tool_use" else "confirm"
        actions.append(
            {
                "id": event.id,
                "kind": kind,
                "name": p.get("name", ""),
                "input": pretty(p.get("input", {})),
                "thread": p.get("session_thread_id") or "",
            }
        )
    return actions


_KIND = {
    "span": "span",
    "agent.tool_use": "tool",
    "agent.tool_result": "tool",
    "agent.mcp_tool_use": "tool",
    "agent.mcp_tool_result": "tool",
    "agent.custom_tool_use": "tool",
    "user.custom_tool_result": "tool",
}


REFERENCE_KEYS = ("model_request_start_id", "tool_use_id", "mcp_tool_use_id", "custom_tool_use_id")


def trace_references(events: list[Event]) -> set[str]:
    """Ids of earlier events (span starts, tool uses) that events of this page point back to."""
    ids = {e.id for e in events}
    refs = {str(e.payload.get(key)) for e in events for key in REFERENCE_KEYS if e.payload.get(key)}
    return refs - ids


class RowValues(NamedTuple):
    """One replay row's own values (`trace_row_values`); the event gives its seq, type and lane."""

    kind: str
    summary: str
    latency_ms: int | None
    duration_ms: int | None
    tokens: list[int] | None  # in TOKEN_KEYS order
    cost: str | None


TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_TOOL_USES = frozenset(("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"))
_TOOL_RESULTS = frozenset(("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"))
_MESSAGES = frozenset(("agent.message", "user.message", "system.message"))


def _kind(event_type: str) -> str:
    return _KIND.get(event_type) or (
        "span"
        if event_type.startswith("span.")
        else "error"
        if event_type.endswith("error")
        else "status"
        if ".status_" in event_type or event_type.startswith("session.")
        else "message"
    )


def trace_row_values(
    session: Session,
    events: "Sequence[Event | LogEvent]",
    earlier: dict[str, Any] | None = None,
    *,
    costs: dict[str, int] | None = None,
) -> list[RowValues]:
    """The replay's rows, one per event: latency and cost on model spans, duration on tools.
    `earlier` holds referenced events from before `events`, so a page boundary loses nothing;
    `costs`: model request costs already priced, by event id."""
    model_id = str((session.agent_snapshot or {}).get("model", {}).get("id", ""))
    before = earlier or {}
    starts: dict[str, Any] = {k: v for k, v in before.items() if v.type == "span.model_request_start"}
    tool_starts: dict[str, Any] = {k: v for k, v in before.items() if v.type != "span.model_request_start"}
    kinds: dict[str, str] = {}
    rows: list[RowValues] = []
    append = rows.append
    for event in events:
        p = event.payload
        t = event.type
        kind = kinds.get(t) or kinds.setdefault(t, _kind(t))
        if p.get("is_error"):
            kind = "error"
        latency = duration = tokens = cost = None
        if t == "span.model_request_start":
            starts[event.id] = event
            summary = "Model request started"
        elif t == "span.model_request_end":
            usage = p.get("model_usage") or {}
            start = starts.get(str(p.get("model_request_start_id")))
            if start is not None:
                latency = round((event.created_at - start.created_at).total_seconds() * 1000)
            tokens = [int(usage.get(k) or 0) for k in TOKEN_KEYS]
            priced = costs.get(event.id) if costs is not None else None
            cost = money(step_cost_micros(model_id, usage) if priced is None else priced)
            summary = f"Model request: {tokens[0]} in / {tokens[1]} out"
        elif t in _TOOL_USES:
            tool_starts[event.id] = event
            summary = f"Tool call {p.get('name', '')}"
        elif t in _TOOL_RESULTS:
            use_id = str(
                p.get("tool_use_id") or p.get("mcp_tool_use_id") or p.get("custom_tool_use_id") or ""
            )
            start = tool_starts.get(use_id)
            if start is not None:
                duration = round((event.created_at - start.created_at).total_seconds() * 1000)
                summary = f"Result of {start.payload.get('name', 'tool')}" + (
                    " (error)" if p.get("is_error") else ""
                )
            else:
                summary = "Tool result"
        elif t in _MESSAGES:
            summary = (t.split(".")[0].title() + ": " + content_text(p.get("content")))[:160]
        elif t == "session.error":
            summary = "Error: " + str((p.get("error") or {}).get("message", ""))[:160]
        else:
            summary = t
        append(RowValues(kind, summary, latency, duration, tokens, cost))
    return rows


def trace_rows(
    session: Session, events: list[Event], earlier: dict[str, Event] | None = None
) -> list[dict[str, Any]]:
    """The replay's rows as the trace JSON gives them: each with its event's JSON (`Event.wire()`)."""
    rows: list[dict[str, Any]] = []
    for event, values in zip(events, trace_row_values(session, events, earlier), strict=True):
        row: dict[str, Any] = {
            "seq": event.seq,
            "type": event.type,
            "kind": values.kind,
            "lane": event.thread_id or "main",
            "summary": values.summary,
            "id": event.id,
            "at": event.created_at.isoformat(),
            "event": event.wire(),
        }
        if values.tokens is not None:
            row["tokens"] = dict(zip(TOKEN_KEYS, values.tokens, strict=True))
        for key in ("latency_ms", "duration_ms", "cost"):
            if getattr(values, key) is not None:
                row[key] = getattr(values, key)
        rows.append(row)
    return rows

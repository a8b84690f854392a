"""How the console shows a session's log: chat items for the session page and trace rows for the
replay. Both read `Event.wire()`, the same JSON the API returns."""

import json
from decimal import Decimal
from typing import Any

from sessions.harness import pricing
from sessions.models import Event, Session


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


def chat_item(event: Event, threads: dict[str, str] | None = None) -> dict[str, Any] | None:
    """One chat bubble for an event, or None for events the chat does not show (spans, usage).
    `threads` names sub-agent threads (id -> agent name) so their messages say who spoke."""
    item = _chat_item(event)
    if item is not None and event.thread_id and item.get("who") == "Agent":
        item["who"] = (threads or {}).get(event.thread_id) or "Sub-agent"
    return item


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
            "detail": pretty(p.get("input", {})),
            "permission": perm,
        }
    if t in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result", "user.tool_result"):
        who = "Tool result (error)" if p.get("is_error") else "Tool result"
        return item | {
            "kind": "tool",
            "who": who,
            "detail": content_text(p.get("content")),
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


def trace_rows(
    session: Session, events: list[Event], earlier: dict[str, Event] | None = None
) -> list[dict[str, Any]]:
    """The replay's rows: one per event, with latency and cost on model spans and duration on tools.
    `earlier` holds referenced events from before this page, so a page boundary loses nothing."""
    model_id = str((session.agent_snapshot or {}).get("model", {}).get("id", ""))
    before = earlier or {}
    starts: dict[str, Event] = {k: v for k, v in before.items() if v.type == "span.model_request_start"}
    tool_starts: dict[str, Event] = {k: v for k, v in before.items() if v.type != "span.model_request_start"}
    rows: list[dict[str, Any]] = []
    for event in events:
        p = event.payload
        t = event.type
        kind = _KIND.get(t) or (
            "span"
            if t.startswith("span.")
            else "error"
            if t.endswith("error")
            else "status"
            if ".status_" in t or t.startswith("session.")
            else "message"
        )
        if p.get("is_error"):
            kind = "error"
        row: dict[str, Any] = {
            "seq": event.seq,
            "id": event.id,
            "type": t,
            "kind": kind,
            "lane": event.thread_id or "main",
            "at": event.created_at.isoformat(),
            "summary": "",
            "event": event.wire(),
        }
        if t == "span.model_request_start":
            starts[event.id] = event
            row["summary"] = "Model request started"
        elif t == "span.model_request_end":
            usage = p.get("model_usage") or {}
            start = starts.get(str(p.get("model_request_start_id")))
            if start is not None:
                row["latency_ms"] = round((event.created_at - start.created_at).total_seconds() * 1000)
            row["tokens"] = {
                k: int(usage.get(k) or 0)
                for k in (
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                )
            }
            row["cost"] = money(step_cost_micros(model_id, usage))
            row["summary"] = (
                f"Model request: {row['tokens']['input_tokens']} in / {row['tokens']['output_tokens']} out"
            )
        elif t in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
            tool_starts[event.id] = event
            row["summary"] = f"Tool call {p.get('name', '')}"
        elif t in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"):
            use_id = str(
                p.get("tool_use_id") or p.get("mcp_tool_use_id") or p.get("custom_tool_use_id") or ""
            )
            start = tool_starts.get(use_id)
            if start is not None:
                row["duration_ms"] = round((event.created_at - start.created_at).total_seconds() * 1000)
                row["summary"] = f"Result of {start.payload.get('name', 'tool')}" + (
                    " (error)" if p.get("is_error") else ""
                )
            else:
                row["summary"] = "Tool result"
        elif t in ("agent.message", "user.message", "system.message"):
            text = content_text(p.get("content"))
            row["summary"] = (t.split(".")[0].title() + ": " + text)[:160]
        elif t == "session.error":
            row["summary"] = "Error: " + str((p.get("error") or {}).get("message", ""))[:160]
        else:
            row["summary"] = t
        rows.append(row)
    return rows

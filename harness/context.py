"""Rebuild the model's context from the session log (design.md: the log is the truth)."""

from dataclasses import dataclass, field
from typing import Any

from harness import outcome_prompts
from harness.tools import mcp_tool_name
from sessions.models import Event, Session

CONTEXT_TYPES = (
    "user.message",
    "system.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "user.tool_result",
    "agent.message",
    "agent.tool_use",
    "agent.custom_tool_use",
    "agent.tool_result",
    "agent.mcp_tool_use",
    "agent.mcp_tool_result",
    "span.model_request_start",
    "span.model_request_end",
    "user.define_outcome",
    "span.outcome_evaluation_end",
)
TAKEN = ("user.message", "system.message", "user.interrupt")
INTERRUPTED = "The user interrupted the session before this tool call completed."


@dataclass
class ToolUse:
    event: Event
    custom: bool
    permission: str  # allow | ask | deny ("custom" for custom tools)
    resolved: bool = False
    confirmation: Event | None = None


@dataclass
class Turn:
    role: str
    blocks: list[dict[str, Any]]
    first_seq: int  # the lowest seq among the turn's events (queued input can join late)


@dataclass
class Context:
    turns: list[Turn] = field(default_factory=list)
    uses: dict[str, ToolUse] = field(default_factory=dict)  # unresolved-or-not uses since the last interrupt
    open_span_id: str | None = None  # a span.model_request_start with no end (a crashed call)
    last_prompt_tokens: int = 0  # prompt size of the last completed model call
    interrupted: bool = False  # an interrupt ended the turn and nothing came after it

    def add(self, role: str, blocks: list[dict[str, Any]], seq: int) -> None:
        if not blocks:
            return
        self.interrupted = False
        if self.turns and self.turns[-1].role == role:
            self.turns[-1].blocks.extend(blocks)
            self.turns[-1].first_seq = min(self.turns[-1].first_seq, seq)
        else:
            self.turns.append(Turn(role, list(blocks), seq))

    def unresolved(self) -> list[ToolUse]:
        return [use for use in self.uses.values() if not use.resolved]

    def needs_model(self) -> bool:
        return bool(self.turns) and self.turns[-1].role == "user" and not self.interrupted

    def messages(self, summary: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if summary:
            out.append({"role": "user", "content": [{"type": "text", "text": summary_text(summary)}]})
        for turn in self.turns:
            blocks = turn.blocks
            if turn.role == "user":
                # tool_result blocks must come first in the turn that follows the tool_use turn.
                blocks = [b for b in blocks if b["type"] == "tool_result"] + [
                    b for b in blocks if b["type"] != "tool_result"
                ]
            if out and out[-1]["role"] == turn.role:
                out[-1]["content"].extend(blocks)
            else:
                out.append({"role": turn.role, "content": list(blocks)})
        if out and out[0]["role"] != "user":
            out.insert(0, {"role": "user", "content": [{"type": "text", "text": "(conversation continues)"}]})
        return out


def summary_text(summary: str) -> str:
    return "Summary of the earlier part of this conversation (older turns were compacted):\n\n" + summary


def _user_blocks(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": block.get("text", "")})
        elif kind in ("image", "document"):
            source = block.get("source") or {}
            if source.get("type") == "file":
                blocks.append(
                    {"type": "text", "text": f"[attached file {source.get('file_id')} is not readable here]"}
                )
            else:
                item = {"type": kind, "source": source}
                if kind == "document":
                    for key in ("title", "context"):
                        if block.get(key):
                            item[key] = block[key]
                blocks.append(item)
        elif kind == "search_result":
            blocks.append(
                {k: v for k, v in block.items() if k in ("type", "source", "title", "content", "citations")}
            )
    return blocks


def _result_content(content: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return _user_blocks(content or []) or []


def tool_result_block(
    tool_use_id: str, content: list[dict[str, Any]] | None, is_error: bool
) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    body = _result_content(content)
    if body:
        block["content"] = body
    if is_error:
        block["is_error"] = True
    return block


def context_build(
    *, session: Session, events: list[Event] | None = None, primary_thread_id: str | None = None
) -> Context:
    """The model's context from a thread's events. An interrupt naming another (child) thread than
    primary_thread_id does not end this thread's turn."""
    if events is None:
        events = list(
            Event.objects.filter(
                session_id=session.pk,
                thread=None,
                type__in=CONTEXT_TYPES,
                seq__gt=session.context_summary_seq,
            ).order_by("seq")
        )
    # Queued input joins the conversation when it is taken (processed_at), not when it was sent:
    # a message sent during a model call belongs after that call's answer.
    events = sorted(
        events, key=lambda e: (e.processed_at if e.type in TAKEN and e.processed_at else e.created_at, e.seq)
    )
    ctx = Context()
    for event in events:
        kind, payload = event.type, event.payload
        if kind == "user.message" and event.processed_at is not None:
            ctx.add("user", _user_blocks(payload.get("content", [])), event.seq)
        elif kind == "system.message" and event.processed_at is not None:
            texts = [b.get("text", "") for b in payload.get("content", []) if b.get("type") == "text"]
            ctx.add("user", [{"type": "text", "text": "[system] " + "\n".join(texts)}], event.seq)
        elif kind == "user.define_outcome":
            ctx.add("user", [{"type": "text", "text": outcome_prompts.define_turn(payload)}], event.seq)
        elif kind == "span.outcome_evaluation_end":
            feedback = outcome_prompts.evaluation_turn(payload)
            if feedback:
                ctx.add("user", [{"type": "text", "text": feedback}], event.seq)
        elif kind == "agent.thread_message_received":
            # A child thread's input: the coordinator's message (only child contexts read this type).
            ctx.add("user", _user_blocks(payload.get("content", [])), event.seq)
        elif kind == "agent.message":
            blocks = [
                {"type": "text", "text": b["text"]}
                for b in payload.get("content", [])
                if b.get("type") == "text" and b.get("text")
            ]
            ctx.add("assistant", blocks, event.seq)
        elif kind in ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use"):
            name = payload.get("name", "")
            if kind == "agent.mcp_tool_use":
                name = mcp_tool_name(payload.get("mcp_server_name", ""), name)
            ctx.add(
                "assistant",
                [
                    {
                        "type": "tool_use",
                        "id": event.id,
                        "name": name,
                        "input": payload.get("input") or {},
                    }
                ],
                event.seq,
            )
            custom = kind == "agent.custom_tool_use"
            ctx.uses[event.id] = ToolUse(
                event, custom, "custom" if custom else payload.get("evaluated_permission", "allow")
            )
        elif kind in (
            "agent.tool_result",
            "user.custom_tool_result",
            "agent.mcp_tool_result",
            "user.tool_result",
        ):
            use_id = payload.get(
                {
                    "agent.tool_result": "tool_use_id",
                    "user.tool_result": "tool_use_id",
                    "user.custom_tool_result": "custom_tool_use_id",
                    "agent.mcp_tool_result": "mcp_tool_use_id",
                }[kind]
            )
            use = ctx.uses.get(use_id or "")
            if use is None or use.resolved:
                continue  # a late answer to a call an interrupt already closed
            use.resolved = True
            ctx.add(
                "user",
                [tool_result_block(use.event.id, payload.get("content"), bool(payload.get("is_error")))],
                event.seq,
            )
        elif kind == "user.tool_confirmation":
            use = ctx.uses.get(payload.get("tool_use_id", ""))
            if use is not None and not use.resolved and use.confirmation is None:
                use.confirmation = event
        elif kind == "user.interrupt" and event.processed_at is not None:
            target = payload.get("session_thread_id")
            if target and primary_thread_id and target != primary_thread_id:
                continue
            closed = [
                tool_result_block(u.event.id, [{"type": "text", "text": INTERRUPTED}], True)
                for u in ctx.unresolved()
            ]
            ctx.add("user", closed, event.seq)
            ctx.uses.clear()
            ctx.interrupted = True
        elif kind == "span.model_request_start":
            ctx.open_span_id = event.id
        elif kind == "span.model_request_end":
            ctx.open_span_id = None
            usage = payload.get("model_usage") or {}
            if not payload.get("is_error"):
                ctx.last_prompt_tokens = (
                    int(usage.get("input_tokens", 0))
                    + int(usage.get("cache_read_input_tokens", 0))
                    + int(usage.get("cache_creation_input_tokens", 0))
                )
    return ctx

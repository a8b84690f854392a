"""Rebuild the model's context from the session log (design.md: the log is the truth)."""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
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

    def copy(self) -> "Context":
        """A copy a build may extend and its caller change: the earlier turns are shared (a fold
        only extends the last one), the tool uses are copied (their state changes)."""
        turns = list(self.turns)
        if turns:
            last = turns[-1]
            turns[-1] = Turn(last.role, list(last.blocks), last.first_seq)
        return Context(
            turns=turns,
            uses={k: replace(u) for k, u in self.uses.items()},
            open_span_id=self.open_span_id,
            last_prompt_tokens=self.last_prompt_tokens,
            interrupted=self.interrupted,
        )

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
    ctx = Context()
    _fold(ctx, sorted(events, key=_order), primary_thread_id)
    return ctx


def _order(event: Event) -> tuple[datetime, int]:
    # Queued input joins the conversation when it is taken (processed_at), not when it was sent:
    # a message sent during a model call belongs after that call's answer.
    taken = event.processed_at if event.type in TAKEN else None
    return (taken or event.created_at, event.seq)


@dataclass
class ContextCache:
    """A step's context kept between builds (and, with the log cache, between steps): the fold of
    the log's settled prefix, the events before the first one still unprocessed. A settled event
    never changes, so a build folds only what came after, on a copy; it starts over when the
    summary moved (compaction), the events are not the ones it folded (a log read afresh), or a
    newer event sorts before what it folded (input taken out of seq order)."""

    summary_seq: int = 0
    consumed: int = 0  # the events (in seq order, relevant or not) the prefix covers
    last: Event | None = None  # the last of them, to tell that the list is still the one folded
    ctx: Context = field(default_factory=Context)
    order: tuple[Any, ...] = ()  # the sort key of the last event folded

    def copy(self) -> "ContextCache":
        """A copy whose context a step may extend in place while another step holds this one."""
        return replace(self, ctx=self.ctx.copy())

    def fits(self, events: list[Event], summary_seq: int) -> bool:
        return (
            self.summary_seq == summary_seq
            and self.consumed <= len(events)
            and (self.consumed == 0 or events[self.consumed - 1] is self.last)
        )


def context_build_cached(
    cache: ContextCache,
    events: list[Event],
    *,
    summary_seq: int,
    relevant: Callable[[Event], bool],
    primary_thread_id: str | None,
) -> tuple[Context, ContextCache]:
    """What context_build gives for the `relevant` events of `events` (a thread's log in seq
    order) after `summary_seq`, folding only what `cache` has not; returns the cache to keep."""

    def ordered(part: list[Event]) -> list[Event]:
        return sorted((e for e in part if e.seq > summary_seq and relevant(e)), key=_order)

    if not cache.fits(events, summary_seq):
        cache = ContextCache(summary_seq=summary_seq)
    settled = next((i for i in range(cache.consumed, len(events)) if events[i].processed_at is None), None)
    settled = len(events) if settled is None else settled
    if settled > cache.consumed:
        fresh = ordered(events[cache.consumed : settled])
        if fresh and _order(fresh[0]) < cache.order:  # it sorts into what was folded: fold it all again
            cache = ContextCache(summary_seq=summary_seq)
            fresh = ordered(events[:settled])
        _fold(cache.ctx, fresh, primary_thread_id)
        if fresh:
            cache.order = _order(fresh[-1])
        cache.consumed, cache.last = settled, events[settled - 1]
    rest = ordered(events[settled:])
    if rest and _order(rest[0]) < cache.order:
        ctx = Context()  # unsettled input taken out of order: this build alone starts over
        _fold(ctx, ordered(events), primary_thread_id)
        return ctx, cache
    ctx = cache.ctx.copy()
    _fold(ctx, rest, primary_thread_id)
    return ctx, cache


def _fold(ctx: Context, events: list[Event], primary_thread_id: str | None) -> None:
    """Applies `events`, in context order, to `ctx`."""
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

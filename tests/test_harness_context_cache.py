"""A step's context built incrementally (harness/context.py, ContextCache) is the context built
from the whole log, whatever comes in between: input taken out of seq order, interrupts, tool
calls and results, a log read afresh, and callers that change the context they were given."""

import random
from datetime import UTC, datetime, timedelta

from harness.context import Context, ContextCache, context_build, context_build_cached
from sessions.models import Event

T0 = datetime(2026, 12, 2, tzinfo=UTC)


def _view(ctx: Context) -> tuple[object, ...]:
    uses = {
        k: (u.resolved, u.permission, u.confirmation.id if u.confirmation else None)
        for k, u in ctx.uses.items()
    }
    return (ctx.messages("earlier"), uses, ctx.open_span_id, ctx.last_prompt_tokens, ctx.interrupted)


class _Log:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.events: list[Event] = []
        self.clock = T0
        self.uses: list[str] = []

    def tick(self) -> datetime:
        self.clock += timedelta(milliseconds=self.rng.choice([0, 1, 1, 5]))
        return self.clock

    def add(self, kind: str, payload: dict, *, queued: bool = False) -> Event:
        seq = len(self.events) + 1
        at = self.tick()
        event = Event(
            id=f"sevt_{seq:04d}", seq=seq, type=kind, payload=payload, created_at=at,
            processed_at=None if queued else at,
        )  # fmt: skip
        self.events.append(event)
        return event

    def move(self) -> None:
        rng = self.rng
        choice = rng.random()
        queued = [e for e in self.events if e.processed_at is None]
        if queued and choice < 0.25:
            rng.choice(queued).processed_at = self.tick()  # taken, perhaps after later events
        elif choice < 0.45:
            kind = rng.choice(["user.message", "system.message", "user.interrupt"])
            self.add(kind, {"content": [{"type": "text", "text": f"m{len(self.events)}"}]}, queued=True)
        elif choice < 0.6:
            self.add("agent.message", {"content": [{"type": "text", "text": f"a{len(self.events)}"}]})
        elif choice < 0.72:
            use = self.add(
                "agent.tool_use", {"name": "bash", "input": {"n": 1}, "evaluated_permission": "ask"}
            )
            self.uses.append(use.id)
        elif choice < 0.82 and self.uses:
            self.add("agent.tool_result", {"tool_use_id": rng.choice(self.uses), "content": []})
        elif choice < 0.88 and self.uses:
            self.add(
                "user.tool_confirmation",
                {"tool_use_id": rng.choice(self.uses), "result": "allow"},
                queued=True,
            )
        elif choice < 0.94:
            self.add("span.model_request_start", {})
        else:
            self.add("span.model_request_end", {"model_usage": {"input_tokens": len(self.events)}})


def test_an_incremental_context_is_the_context_built_from_the_whole_log() -> None:
    for seed in range(60):
        rng = random.Random(seed)
        log = _Log(rng)
        cache = ContextCache()
        for _ in range(120):
            log.move()
            summary_seq = 0 if rng.random() < 0.97 else rng.randint(0, len(log.events))
            if rng.random() < 0.05:
                log.events = list(log.events)  # a log read afresh: the same events, another list
            ctx, cache = context_build_cached(
                cache, log.events, summary_seq=summary_seq, relevant=lambda e: True, primary_thread_id=None
            )
            whole = context_build(session=None, events=[e for e in log.events if e.seq > summary_seq])  # type: ignore[arg-type]
            assert _view(ctx) == _view(whole), seed
            # What a caller does with its context stays out of the cache.
            for use in ctx.uses.values():
                use.resolved = True
            ctx.open_span_id = None
            ctx.add("user", [{"type": "text", "text": "caller's"}], 10_000)

"""Status paths of the harness: retries, exhaustion, terminal errors, interrupts, steering,
compaction, usage and cost, live previews."""

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import pricing
from harness.providers.anthropic import AnthropicProvider
from sessions.models import Event, Session
from tests.harness_helpers import (
    custom_tool,
    events_of,
    harness_model,
    log_types,
    make_session,
    say,
    send,
    step,
    step_in_background,
    wait_for,
)
from tests.model_server import Reply, ScriptedModel, error, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def test_overloaded_and_rate_limited_answers_are_retried_visibly(model: ScriptedModel) -> None:
    session = make_session()
    model.push(
        error(529, "overloaded_error", "Overloaded"),
        error(429, "rate_limit_error", "slow down"),
        text("Finally."),
    )
    say(session, "hi")
    step(session)
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "span.model_request_end",
        "session.error",
        "session.status_rescheduled",
        "session.status_running",
        "span.model_request_start",
        "span.model_request_end",
        "session.error",
        "session.status_rescheduled",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    first, second = events_of(session, "session.error")
    assert first.payload["error"]["type"] == "model_overloaded_error"
    assert first.payload["error"]["retry_status"] == {"type": "retrying"}
    assert second.payload["error"]["type"] == "model_rate_limited_error"
    assert events_of(session, "span.model_request_end")[0].payload["is_error"] is True
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_exhausted_retries_idle_the_session_with_retries_exhausted(model: ScriptedModel, settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLEY_MODEL_MAX_RETRIES = 2
    session = make_session()
    model.push(error(500), error(503), error(529, "overloaded_error"))
    say(session, "hi")
    step(session)
    errors = events_of(session, "session.error")
    assert [e.payload["error"]["retry_status"]["type"] for e in errors] == [
        "retrying",
        "retrying",
        "exhausted",
    ]
    assert errors[-1].payload["error"]["type"] == "model_overloaded_error"
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {
        "type": "retries_exhausted"
    }
    assert Session.objects.get(pk=session.pk).status == "idle"
    assert len(model.requests) == 3


@pytest.mark.parametrize(
    "status,error_type,needle,ends",
    [
        (401, "authentication_error", "API key", "idle"),
        (404, "not_found_error", "Unknown model", "idle"),
        (400, "invalid_request_error", "prompt is too long", "terminated"),
    ],
)
def test_unrecoverable_model_errors_end_in_a_clear_error(
    model: ScriptedModel, status: int, error_type: str, needle: str, ends: str
) -> None:
    """A bad key or an unknown model ends the turn (the session stays usable once fixed); a
    request the model will never accept ends the session."""
    session = make_session()
    model.push(
        error(
            status,
            error_type,
            "prompt is too long: 250000 tokens > 200000 maximum" if status == 400 else "nope",
        )
    )
    say(session, "hi")
    step(session)
    failure = events_of(session, "session.error")[0].payload["error"]
    assert failure["type"] == "model_request_failed_error"
    assert needle in failure["message"]
    assert Session.objects.get(pk=session.pk).status == ends
    if ends == "terminated":
        assert failure["retry_status"] == {"type": "terminal"}
        assert log_types(session)[-1] == "session.status_terminated"
    else:
        assert failure["retry_status"] == {"type": "exhausted"}
        assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {
            "type": "retries_exhausted"
        }
    assert len(model.requests) == 1


def test_a_missing_api_key_is_a_clear_error_not_a_stuck_session(model: ScriptedModel, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ANTHROPIC_API_KEY = None
    AnthropicProvider._shared = None
    import os

    saved = os.environ.pop("ANTHROPIC_API_KEY", None)
    try:
        session = make_session()
        say(session, "hi")
        step(session)
    finally:
        if saved is not None:
            os.environ["ANTHROPIC_API_KEY"] = saved
    failure = events_of(session, "session.error")[0].payload["error"]
    assert "ANTHROPIC_API_KEY" in failure["message"]
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_interrupt_stops_a_slow_model_request_within_two_seconds(model: ScriptedModel) -> None:
    session = make_session()
    model.push(Reply(blocks=[{"type": "text", "text": "a very slow answer " * 20}], chunk_delay=0.5))
    say(session, "hi")
    worker = step_in_background(session)
    wait_for(lambda: events_of(session, "span.model_request_start"))
    time.sleep(0.3)
    sent = time.monotonic()
    send(session, "user.interrupt", {})
    wait_for(lambda: Session.objects.get(pk=session.pk).status == "idle", timeout=5)
    assert time.monotonic() - sent < 2.0
    worker.join(5)
    assert not worker.is_alive()
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert not events_of(session, "agent.message")
    assert events_of(session, "span.model_request_end")[-1].payload["is_error"] is True
    assert events_of(session, "user.interrupt")[0].processed_at is not None


def test_interrupt_while_waiting_on_a_custom_tool_closes_the_call(model: ScriptedModel) -> None:
    session = make_session(tools=[custom_tool("alpha")])
    model.push(tool_call("alpha", {}), text("Starting over."))
    say(session, "go")
    step(session)
    use = events_of(session, "agent.custom_tool_use")[0]
    send(session, "user.interrupt", {})
    step(session)
    result = events_of(session, "agent.tool_result")[0]
    assert result.payload["tool_use_id"] == use.id and result.payload["is_error"] is True
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert len(model.requests) == 1
    say(session, "never mind, say hi")
    step(session)
    messages = model.requests[-1]["messages"]
    assert messages[-1]["content"][0]["type"] == "tool_result"
    assert messages[-1]["content"][-1]["text"] == "never mind, say hi"


def test_a_message_sent_while_running_is_taken_at_the_next_model_call(model: ScriptedModel) -> None:
    session = make_session(
        tools=[
            custom_tool("alpha"),
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": True, "permission_policy": {"type": "always_allow"}},
                "configs": [],
            },
        ]
    )
    model.push(tool_call("grep", {"pattern": "TODO"}, delay=0.6), text("Done, and noted."))
    say(session, "Find TODOs")
    worker = step_in_background(session)
    wait_for(lambda: events_of(session, "span.model_request_start"))
    steer = say(session, "Also count them.")
    worker.join(10)
    assert not worker.is_alive()
    second = model.requests[1]["messages"][-1]["content"]
    assert second[0]["type"] == "tool_result"
    assert second[-1]["text"] == "Also count them."
    assert Event.objects.get(pk=steer.pk).processed_at is not None
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert len(model.requests) == 2


def test_long_contexts_are_compacted_and_the_log_stays_whole(model: ScriptedModel, settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLEY_COMPACTION_THRESHOLD_TOKENS = 1000
    session = make_session()
    model.push(
        text("First answer.", usage={"input_tokens": 1500}),
        text("SUMMARY: the user greeted us and we answered."),
        text("Second answer."),
    )
    say(session, "Hello, first question")
    step(session)
    say(session, "Second question")
    step(session)
    assert len(model.requests) == 3
    compact_request = model.requests[1]["messages"]
    assert "Summarise the conversation" in compact_request[-1]["content"][-1]["text"]
    final = model.requests[2]["messages"]
    assert "SUMMARY: the user greeted us" in final[0]["content"][0]["text"]
    assert final[0]["content"][-1]["text"] == "Second question"
    assert "Hello, first question" not in str(final)
    assert "agent.thread_context_compacted" in log_types(session)
    assert len(events_of(session, "user.message")) == 2
    assert [e.payload["content"][0]["text"] for e in events_of(session, "agent.message")] == [
        "First answer.",
        "Second answer.",
    ]
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_usage_counters_and_cost_follow_the_price_table(model: ScriptedModel) -> None:
    session = make_session(model="claude-opus-4-6")
    model.push(
        text(
            "One.",
            usage={
                "input_tokens": 1000,
                "output_tokens": 500,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 400,
            },
        ),
        text(
            "Two.",
            usage={
                "input_tokens": 10,
                "output_tokens": 20,
                "cache_read_input_tokens": 3000,
                "cache_creation_input_tokens": 0,
            },
        ),
    )
    say(session, "one")
    step(session)
    say(session, "two")
    step(session)
    row = Session.objects.get(pk=session.pk)
    assert (
        row.input_tokens,
        row.output_tokens,
        row.cache_read_input_tokens,
        row.cache_creation_5m_tokens,
    ) == (1010, 520, 5000, 400)
    # Opus 4.x: $5 / $25 per MTok, cache reads 10% of input, 5-minute cache writes 125%.
    assert row.token_cost_micros == (1000 * 5 + 500 * 25 + 2000 * 0.5 + 400 * 6.25) + (
        10 * 5 + 20 * 25 + 3000 * 0.5
    )
    first_end = events_of(session, "span.model_request_end")[0]
    assert first_end.payload["model_usage"] == {
        "input_tokens": 1000,
        "output_tokens": 500,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 400,
    }
    assert row.active_seconds > 0 and row.running_since is None
    total = pricing.total_cost_micros(
        token_cost_micros=row.token_cost_micros, active_seconds=3600, web_search_requests=100
    )
    assert total == row.token_cost_micros + 80_000 + 1_000_000
    assert model.requests[1]["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_the_price_table_can_be_replaced(settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLEY_PRICES = pricing.parse_price_table('{"models": {"my-model": {"input": 2, "output": 4}}}')
    assert pricing.token_cost_micros(model="my-model-v1", input_tokens=100, output_tokens=10) == 240
    assert pricing.token_cost_micros(model="claude-haiku-4-5", input_tokens=100, output_tokens=10) == 150
    with pytest.raises(pricing.PriceTableError):
        pricing.parse_price_table('{"models": {"x": {"input": "free"}}}')


def test_live_previews_carry_the_final_message_id(model: ScriptedModel) -> None:
    from sessions import streaming

    session = make_session()
    model.push(text("Streaming words arrive in pieces."))
    frames: list[dict[str, Any]] = []
    ready = threading.Event()
    done = threading.Event()

    async def listen() -> None:
        async with streaming.subscribe(session.pk) as sub:
            ready.set()
            while not done.is_set():
                message = await sub.get(0.05)
                if message and message.get("kind") == "preview":
                    frames.append(message["frame"])

    listener = threading.Thread(target=lambda: asyncio.run(listen()), daemon=True)
    listener.start()
    ready.wait(5)
    say(session, "hi")
    step(session)
    wait_for(lambda: any(f["type"] == "event_delta" for f in frames) and len(frames) >= 3, timeout=5)
    time.sleep(0.1)
    done.set()
    listener.join(5)
    final = events_of(session, "agent.message")[0]
    assert frames[0] == {"type": "event_start", "event": {"type": "agent.message", "id": final.id}}
    deltas = [f for f in frames if f["type"] == "event_delta"]
    assert all(f["event_id"] == final.id for f in deltas)
    assert "".join(f["delta"]["content"]["text"] for f in deltas) == "Streaming words arrive in pieces."
    assert not Event.objects.filter(session_id=session.pk, type__in=["event_start", "event_delta"]).exists()


@pytest.mark.parametrize(("reply", "messages"), [({"one_write": True}, 1), ({"chunk_delay": 0.05}, 6)])
def test_previews_of_one_network_read_go_out_as_one_message(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any], messages: int
) -> None:
    """Each message wakes every process that streams the session: what one read of the model's stream
    brought (a start and five deltas here) is one message; events read one by one are one each."""
    from sessions import streaming

    published: list[dict[str, Any]] = []
    original = streaming._publish
    monkeypatch.setattr(
        streaming, "_publish", lambda sid, message: (published.append(message), original(sid, message))
    )
    session = make_session()
    model.push(text("Streaming words arrive in pieces.", **reply))  # 33 characters: 5 deltas
    say(session, "hi")
    step(session)
    previews = [m for m in published if m["kind"] in ("preview", "previews")]
    frames = [f for m in previews for f in (m["frames"] if m["kind"] == "previews" else [m["frame"]])]
    final = events_of(session, "agent.message")[0]
    assert frames[0] == {"type": "event_start", "event": {"type": "agent.message", "id": final.id}}
    assert "".join(f["delta"]["content"]["text"] for f in frames[1:]) == "Streaming words arrive in pieces."
    assert len(frames) == 6 and len(previews) == messages, [m["kind"] for m in previews]


@pytest.mark.sandbox
def test_interrupt_stops_a_running_tool_within_two_seconds(model: ScriptedModel) -> None:
    from tests.harness_helpers import TOOLSET_ALL

    session = make_session(tools=[TOOLSET_ALL])
    model.push(tool_call("bash", {"command": "sleep 30"}), text("never"))
    say(session, "wait")
    worker = step_in_background(session)
    wait_for(lambda: events_of(session, "agent.tool_use"), timeout=10)
    time.sleep(0.5)
    sent = time.monotonic()
    send(session, "user.interrupt", {})
    wait_for(lambda: Session.objects.get(pk=session.pk).status == "idle", timeout=5)
    assert time.monotonic() - sent < 2.0
    worker.join(5)
    assert not worker.is_alive()
    use = events_of(session, "agent.tool_use")[0]
    results = events_of(session, "agent.tool_result")
    assert [r.payload["tool_use_id"] for r in results] == [use.id]
    assert results[0].payload["is_error"] is True
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert len(model.requests) == 1

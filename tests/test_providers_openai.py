"""The OpenAI-compatible provider inside the agent loop: the real `openai` client against a scripted
Chat Completions server on loopback (SSE chunks as OpenAI sends them)."""

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from providers import registry
from providers.config import providers_parse
from sessions.models import Session
from tests.harness_helpers import custom_tool, events_of, log_types, make_session, say, send, step
from tests.openai_server import Call, Reply, ScriptedOpenAI, error, scripted_openai, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-local-secret-4242"
READ_ONLY_TOOLS = {
    "type": "agent_toolset_20260401",
    "default_config": {"enabled": True, "permission_policy": {"type": "always_allow"}},
    "configs": [],
}


def configure(settings: Any, server: ScriptedOpenAI, **extra: Any) -> None:
    entry = {
        "name": "local",
        "type": "openai",
        "base_url": server.base_url,
        "api_key_env": "LOCAL_KEY",
        "models": [
            "gpt-test",
            {
                "id": "local-model",
                "input_price": 0.5,
                "output_price": 1.5,
                "context_window": 32000,
                "images": False,
            },
        ],
        **extra,
    }
    settings.GALLEY_PROVIDERS = providers_parse(json.dumps([entry]), {"LOCAL_KEY": KEY})
    settings.GALLEY_MODEL_RETRY_BASE_SECONDS = 0.01
    settings.GALLEY_MODEL_MAX_RETRIES = 2
    settings.GALLEY_INTERRUPT_POLL_SECONDS = 0.05
    registry.reset()


@pytest.fixture
def server(settings: Any) -> Iterator[ScriptedOpenAI]:
    with scripted_openai(api_key=KEY) as scripted:
        configure(settings, scripted)
        yield scripted
        registry.reset()


def test_streamed_text_becomes_one_agent_message_with_usage(server: ScriptedOpenAI) -> None:
    session = make_session(model="local/gpt-test")
    server.push(
        text(
            "Hello from an OpenAI-compatible model.", prompt_tokens=40, completion_tokens=9, cached_tokens=30
        )
    )
    say(session, "Hi")
    step(session)
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    message = events_of(session, "agent.message")[0]
    assert message.payload["content"] == [{"type": "text", "text": "Hello from an OpenAI-compatible model."}]
    end = events_of(session, "span.model_request_end")[0]
    assert end.payload["model_usage"] == {
        "input_tokens": 10,
        "output_tokens": 9,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 0,
    }
    request = server.requests[0]
    assert request["model"] == "gpt-test"  # the provider prefix is Galley's, not the server's
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ]
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"
    row = Session.objects.get(pk=session.pk)
    assert (row.input_tokens, row.output_tokens, row.cache_read_input_tokens) == (10, 9, 30)
    assert row.status == "idle"


def test_split_and_parallel_tool_calls_run_and_their_results_go_back_as_tool_messages(
    server: ScriptedOpenAI, settings: Any
) -> None:
    session = make_session(
        model="local/gpt-test", tools=[custom_tool("get_weather"), custom_tool("get_time")]
    )
    server.push(
        Reply(
            content="Checking both.",
            calls=[
                Call("get_weather", {"city": "Paris", "detail": "hourly forecast please"}, id="call_a"),
                Call("get_time", {"city": "Tokyo"}, id="call_b"),
            ],
        ),
        text("Paris is sunny; it is noon in Tokyo."),
    )
    say(session, "Weather in Paris and time in Tokyo?")
    step(session)
    uses = events_of(session, "agent.custom_tool_use")
    assert [(u.payload["name"], u.payload["input"]) for u in uses] == [
        ("get_weather", {"city": "Paris", "detail": "hourly forecast please"}),
        ("get_time", {"city": "Tokyo"}),
    ]
    idle = events_of(session, "session.status_idle")[-1]
    assert idle.payload["stop_reason"] == {"type": "requires_action", "event_ids": [u.id for u in uses]}
    tools = server.requests[0]["tools"]
    assert tools[0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The get_weather tool",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for use, answer in zip(uses, ("sunny, 21C", "12:00"), strict=True):
        send(
            session,
            "user.custom_tool_result",
            {"custom_tool_use_id": use.id, "content": [{"type": "text", "text": answer}]},
        )
    step(session)
    assert (
        events_of(session, "agent.message")[-1].payload["content"][0]["text"]
        == "Paris is sunny; it is noon in Tokyo."
    )
    messages = server.requests[1]["messages"]
    assistant = messages[2]
    assert assistant["role"] == "assistant" and assistant["content"] == "Checking both."
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == uses[0].payload["input"]
    assert messages[3:5] == [
        {"role": "tool", "tool_call_id": uses[0].id, "content": "sunny, 21C"},
        {"role": "tool", "tool_call_id": uses[1].id, "content": "12:00"},
    ]


@pytest.mark.sandbox
def test_always_ask_waits_for_confirmation_and_then_runs_in_the_sandbox(
    server: ScriptedOpenAI, sandbox_root: Any
) -> None:
    ask = {
        "type": "agent_toolset_20260401",
        "default_config": {"enabled": True, "permission_policy": {"type": "always_ask"}},
        "configs": [],
    }
    session = make_session(model="local/gpt-test", tools=[ask])
    server.push(tool_call("bash", {"command": "echo from-openai"}), text("It printed from-openai."))
    say(session, "Run echo")
    step(session)
    use = events_of(session, "agent.tool_use")[0]
    assert use.payload["evaluated_permission"] == "ask"
    assert Session.objects.get(pk=session.pk).stop_reason == {
        "type": "requires_action",
        "event_ids": [use.id],
    }
    send(session, "user.tool_confirmation", {"tool_use_id": use.id, "result": "allow"})
    step(session)
    result = events_of(session, "agent.tool_result")[0]
    assert not result.payload.get("is_error")
    assert "from-openai" in result.payload["content"][0]["text"]
    tool_message = server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and "from-openai" in tool_message["content"]


def test_reasoning_text_becomes_agent_thinking_before_the_message(server: ScriptedOpenAI) -> None:
    session = make_session(model="local/gpt-test")
    server.push(
        Reply(content="42.", reasoning="The user asks for the answer; it is 42."),
        Reply(content="Again 42.", reasoning="Same as before.", reasoning_key="reasoning"),
    )
    say(session, "What is the answer?")
    step(session)
    say(session, "And again?")
    step(session)
    kinds = [t for t in log_types(session) if t in ("agent.thinking", "agent.message")]
    assert kinds == ["agent.thinking", "agent.message", "agent.thinking", "agent.message"]
    # Thinking is not sent back: Chat Completions has no place for it.
    assert [m["role"] for m in server.requests[1]["messages"]] == ["system", "user", "assistant", "user"]


def test_images_in_tool_results_reach_a_vision_model_and_are_described_to_others(
    server: ScriptedOpenAI,
) -> None:
    pixel = base64.b64encode(b"\x89PNG fake").decode()
    for model, expect_image in (("local/gpt-test", True), ("local/local-model", False)):
        session = make_session(model=model, tools=[custom_tool("screenshot")])
        server.push(tool_call("screenshot", {}), text("I see it."))
        say(session, "Take a screenshot")
        step(session)
        use = events_of(session, "agent.custom_tool_use")[0]
        send(
            session,
            "user.custom_tool_result",
            {
                "custom_tool_use_id": use.id,
                "content": [
                    {"type": "text", "text": "captured"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}},
                ],
            },
        )
        step(session)
        messages = server.requests[-1]["messages"]
        assert messages[-2] == {"role": "tool", "tool_call_id": use.id, "content": "captured"}
        if expect_image:
            parts = messages[-1]["content"]
            assert messages[-1]["role"] == "user"
            assert parts[-1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}
        else:
            assert "does not accept images" in messages[-1]["content"]
            assert pixel not in json.dumps(messages)


def test_429_and_500_are_retried_visibly_then_succeed(server: ScriptedOpenAI) -> None:
    session = make_session(model="local/gpt-test")
    server.push(error(429, "slow down"), error(500, "boom"), text("Finally."))
    say(session, "Hi")
    step(session)
    types = log_types(session)
    assert types.count("session.status_rescheduled") == 2
    errors = events_of(session, "session.error")
    assert [e.payload["error"]["type"] for e in errors] == [
        "model_rate_limited_error",
        "model_request_failed_error",
    ]
    assert all(e.payload["error"]["retry_status"] == {"type": "retrying"} for e in errors)
    assert "provider 'local'" in errors[0].payload["error"]["message"]
    assert events_of(session, "agent.message")[0].payload["content"][0]["text"] == "Finally."
    assert types[-1] == "session.status_idle"


def _failed_turn(session: Session) -> dict[str, Any]:
    row = Session.objects.get(pk=session.pk)
    assert row.status == "idle" and row.stop_reason == {"type": "retries_exhausted"}
    assert not events_of(session, "agent.message") and not events_of(session, "agent.custom_tool_use")
    assert not events_of(session, "agent.tool_use")
    ends = events_of(session, "span.model_request_end")
    assert ends and all(e.payload.get("is_error") for e in ends)
    error_payload: dict[str, Any] = events_of(session, "session.error")[-1].payload["error"]
    assert error_payload["retry_status"] == {"type": "exhausted"}
    return error_payload


def test_a_bad_key_ends_the_turn_with_an_error_naming_the_provider(settings: Any) -> None:
    with scripted_openai(api_key="the-right-key") as server:
        configure(settings, server)
        session = make_session(model="local/gpt-test")
        say(session, "Hi")
        step(session)
        failure = _failed_turn(session)
        assert "provider 'local'" in failure["message"] and "API key (401)" in failure["message"]
        assert "Incorrect API key provided" in failure["message"]
        assert KEY not in json.dumps([e.payload for e in events_of(session, "session.error")])
        assert len(server.requests) == 0  # refused before any completion was made


def test_a_model_the_server_refuses_ends_the_turn(server: ScriptedOpenAI, settings: Any) -> None:
    server.models = ("local-model",)  # the server dropped gpt-test since the agent was made
    session = make_session(model="local/gpt-test")
    say(session, "Hi")
    step(session)
    failure = _failed_turn(session)
    assert "provider 'local'" in failure["message"] and "does not exist" in failure["message"]
    assert "session.status_rescheduled" not in log_types(session)


def test_an_unreachable_server_is_retried_then_ends_the_turn(settings: Any) -> None:
    from tests.live import free_port

    entry = {
        "name": "gone",
        "type": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "models": ["m1"],
    }
    settings.GALLEY_PROVIDERS = providers_parse(json.dumps([entry]), {})
    settings.GALLEY_MODEL_RETRY_BASE_SECONDS = 0.01
    settings.GALLEY_MODEL_MAX_RETRIES = 1
    registry.reset()
    session = make_session(model="gone/m1")
    say(session, "Hi")
    step(session)
    failure = _failed_turn(session)
    assert "Could not reach provider 'gone' (127.0.0.1:" in failure["message"]
    assert log_types(session).count("session.status_rescheduled") == 1


def test_tool_arguments_that_never_become_json_are_a_malformed_stream(server: ScriptedOpenAI) -> None:
    session = make_session(model="local/gpt-test", tools=[custom_tool("get_weather")])
    broken = '{"city": "Par'
    server.push(*(tool_call("get_weather", broken, say="Let me look.") for _ in range(3)))
    say(session, "Weather?")
    step(session)
    failure = _failed_turn(session)
    assert "provider 'local'" in failure["message"]
    assert "get_weather" in failure["message"] and "malformed stream" in failure["message"]
    assert log_types(session).count("session.status_rescheduled") == 2


def test_a_stream_cut_before_the_finish_is_retried(server: ScriptedOpenAI) -> None:
    session = make_session(model="local/gpt-test")
    server.push(Reply(content="Half an ans", cut=True), text("A whole answer."))
    say(session, "Hi")
    step(session)
    messages = events_of(session, "agent.message")
    assert [m.payload["content"][0]["text"] for m in messages] == ["A whole answer."]
    assert (
        "ended before the model finished"
        in events_of(session, "session.error")[0].payload["error"]["message"]
    )


def test_an_interrupt_stops_a_streaming_answer(server: ScriptedOpenAI) -> None:
    from tests.harness_helpers import step_in_background, wait_for

    session = make_session(model="local/gpt-test")
    server.push(Reply(content="x" * 400, chunk_delay=0.05))
    say(session, "Write a lot")
    thread = step_in_background(session)
    wait_for(lambda: len(server.requests) == 1)
    send(session, "user.interrupt")
    thread.join(timeout=20)
    assert not thread.is_alive()
    row = Session.objects.get(pk=session.pk)
    assert row.status == "idle" and row.stop_reason == {"type": "end_turn"}
    assert not events_of(session, "agent.message")


def test_usage_is_priced_per_model_from_the_registry(server: ScriptedOpenAI) -> None:
    from providers.models import ModelCall

    session = make_session(model="local/local-model")
    server.push(text("ok", prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=0))
    say(session, "Hi")
    step(session)
    row = Session.objects.get(pk=session.pk)
    assert row.token_cost_micros == 2_000_000  # $0.50 + $1.50 per million, as configured
    call = ModelCall.objects.get(session=session)
    assert (call.provider, call.model, call.cost_micros) == ("local", "local/local-model", 2_000_000)


def test_the_context_window_of_a_registry_model_sets_the_compaction_threshold(server: ScriptedOpenAI) -> None:
    from harness.services import compaction_threshold

    assert compaction_threshold("local/local-model") == 25_600
    assert compaction_threshold("local/gpt-test") == 160_000


def test_live_previews_of_an_openai_answer_carry_the_final_event_ids(server: ScriptedOpenAI) -> None:
    import asyncio
    import threading
    import time

    from sessions import streaming
    from tests.harness_helpers import wait_for

    session = make_session(model="local/gpt-test")
    server.push(Reply(content="Streaming words arrive in pieces.", reasoning="Let me think."))
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
    wait_for(lambda: sum(f["type"] == "event_start" for f in frames) == 2, timeout=5)
    time.sleep(0.2)
    done.set()
    listener.join(5)
    thinking = events_of(session, "agent.thinking")[0]
    message = events_of(session, "agent.message")[0]
    starts = [f["event"] for f in frames if f["type"] == "event_start"]
    assert starts == [
        {"type": "agent.thinking", "id": thinking.id},
        {"type": "agent.message", "id": message.id},
    ]
    deltas = [f for f in frames if f["type"] == "event_delta"]
    assert {f["event_id"] for f in deltas} == {message.id}
    assert "".join(f["delta"]["content"]["text"] for f in deltas) == "Streaming words arrive in pieces."


def test_a_tool_name_chat_completions_would_refuse_goes_by_an_alias(server: ScriptedOpenAI) -> None:
    long_name = "mcp__" + "a-very-long-server-name_" * 3 + "__fetch_everything"
    session = make_session(model="local/gpt-test", tools=[custom_tool(long_name)])
    sent = {}

    def responder(body: dict[str, Any]) -> Reply:
        sent["tools"] = [t["function"]["name"] for t in body["tools"]]
        return tool_call(sent["tools"][0], {"city": "Rome"})

    server.responder = responder
    say(session, "Go")
    step(session)
    (alias,) = sent["tools"]
    assert len(alias) <= 64 and alias != long_name and alias.startswith("mcp__a-very-long")
    use = events_of(session, "agent.custom_tool_use")[0]
    assert use.payload == {"name": long_name, "input": {"city": "Rome"}}
    send(
        session,
        "user.custom_tool_result",
        {"custom_tool_use_id": use.id, "content": [{"type": "text", "text": "ok"}]},
    )
    server.responder = lambda body: text("done")
    step(session)
    assistant = server.requests[-1]["messages"][2]
    assert assistant["tool_calls"][0]["function"]["name"] == alias


def test_a_key_the_server_echoes_in_its_error_is_redacted(server: ScriptedOpenAI) -> None:
    session = make_session(model="local/gpt-test")
    server.push(error(403, f"Key {KEY} may not use this model."))
    say(session, "Hi")
    step(session)
    message = _failed_turn(session)["message"]
    assert "Key [redacted] may not use this model." in message and KEY not in message

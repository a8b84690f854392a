"""The agent loop driven by a scripted model through the real anthropic client."""

from collections.abc import Iterator

import pytest

from sessions.harness.providers.anthropic import AnthropicProvider
from sessions.models import Session
from tests.harness_helpers import custom_tool, events_of, log_types, make_session, say, send, step
from tests.model_server import ScriptedModel, scripted_model, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with scripted_model() as server:
        settings.ANTHROPIC_API_KEY = "sk-test"
        settings.ANTHROPIC_BASE_URL = server.base_url
        settings.GALLEY_MODEL_RETRY_BASE_SECONDS = 0.01
        AnthropicProvider._shared = None
        yield server
        AnthropicProvider._shared = None


def test_a_message_runs_one_turn_and_ends_idle(model: ScriptedModel) -> None:
    session = make_session()
    model.push(text("Hello there, how can I help?"))
    say(session, "Hi")
    step(session)
    assert log_types(session) == [
        "user.message", "session.status_running", "span.model_request_start", "agent.message",
        "span.model_request_end", "session.status_idle",
    ]
    message = events_of(session, "agent.message")[0]
    assert message.payload["content"] == [{"type": "text", "text": "Hello there, how can I help?"}]
    idle = events_of(session, "session.status_idle")[0]
    assert idle.payload == {"stop_reason": {"type": "end_turn"}}
    assert events_of(session, "user.message")[0].processed_at is not None
    request = model.requests[0]
    assert request["model"] == "claude-sonnet-4-6"
    assert request["system"][0]["text"] == "You are terse."
    assert request["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}]
    assert "sk-test" in (model.headers[0].get("x-api-key", "") + model.headers[0].get("authorization", ""))
    refreshed = Session.objects.get(pk=session.pk)
    assert refreshed.status == "idle" and refreshed.lease_owner is None
    end = events_of(session, "span.model_request_end")[0]
    start = events_of(session, "span.model_request_start")[0]
    assert end.payload["model_request_start_id"] == start.id


def test_custom_tool_idles_with_requires_action_and_resumes_on_the_result(model: ScriptedModel) -> None:
    session = make_session(tools=[custom_tool("get_weather")])
    model.push(tool_call("get_weather", {"city": "Paris", "unit": "celsius-degrees"}, say="Let me check."),
               text("It is sunny in Paris."))
    say(session, "Weather in Paris?")
    step(session)
    use = events_of(session, "agent.custom_tool_use")[0]
    assert use.payload == {"name": "get_weather", "input": {"city": "Paris", "unit": "celsius-degrees"}}
    idle = events_of(session, "session.status_idle")[-1]
    assert idle.payload["stop_reason"] == {"type": "requires_action", "event_ids": [use.id]}
    assert model.requests[0]["tools"][0]["name"] == "get_weather"
    assert model.requests[0]["tools"][-1]["cache_control"] == {"type": "ephemeral"}

    send(session, "user.custom_tool_result", {"custom_tool_use_id": use.id,
                                              "content": [{"type": "text", "text": "sunny, 21C"}]})
    step(session)
    assert log_types(session)[-4:] == ["span.model_request_start", "agent.message", "span.model_request_end",
                                       "session.status_idle"]
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    second = model.requests[1]["messages"]
    assert second[1]["role"] == "assistant"
    assert second[1]["content"][1] == {"type": "tool_use", "id": use.id, "name": "get_weather",
                                       "input": {"city": "Paris", "unit": "celsius-degrees"}}
    assert second[2]["content"][0]["type"] == "tool_result"
    assert second[2]["content"][0]["tool_use_id"] == use.id
    assert second[2]["content"][0]["content"] == [{"type": "text", "text": "sunny, 21C"}]

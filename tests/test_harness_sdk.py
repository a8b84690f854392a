"""The quickstart conversation end to end: the official SDK (strict validation) against a live
Galley whose worker talks to a scripted model."""

import secrets

import pytest

from tests.live import LiveGalley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, text, tool_call

pytestmark = pytest.mark.slow




def test_the_quickstart_conversation_with_a_custom_tool(galley: LiveGalley, model: ScriptedModel) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(
        name=f"quickstart-{suffix}",
        model="claude-sonnet-4-6",
        system="You are a helpful assistant.",
        tools=[
            {
                "type": "custom",
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    )
    environment = client.beta.environments.create(name=f"quickstart-env-{suffix}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    model.push(tool_call("get_weather", {"city": "Paris"}, say="Checking."), text("It is sunny in Paris."))

    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id,
            events=[{"type": "user.message", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        )
        first = until_idle(stream)
        types = [e.type for e in first]
        assert types[:2] == ["user.message", "session.status_running"]
        assert types[-3:] == ["agent.custom_tool_use", "span.model_request_end", "session.status_idle"]
        use = next(e for e in first if e.type == "agent.custom_tool_use")
        assert use.name == "get_weather" and use.input == {"city": "Paris"}
        assert first[-1].stop_reason.type == "requires_action"
        assert first[-1].stop_reason.event_ids == [use.id]

        client.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": use.id,
                    "content": [{"type": "text", "text": "sunny, 21C"}],
                }
            ],
        )
        second = until_idle(stream)
    types = [e.type for e in second]
    assert types[0] == "user.custom_tool_result"
    assert "session.status_running" in types
    message = next(e for e in second if e.type == "agent.message")
    assert message.content[0].text == "It is sunny in Paris."
    assert second[-1].type == "session.status_idle" and second[-1].stop_reason.type == "end_turn"

    done = client.beta.sessions.retrieve(session.id)
    assert done.status == "idle"
    assert (done.usage.input_tokens or 0) > 0 and (done.usage.output_tokens or 0) > 0
    assert done.usage.list_cost is not None and int(done.usage.list_cost.amount) >= 0
    listed = [e.type for e in client.beta.sessions.events.list(session.id)]
    assert listed.count("span.model_request_start") == 2 == listed.count("span.model_request_end")
    assert model.requests[-1]["messages"][-1]["content"][0]["tool_use_id"] == use.id

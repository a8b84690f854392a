"""SDK contract for coordinator threads: the session stream carries the cross-posted thread events
and the thread API lists the child and its own events, all parsed strictly by the official SDK."""

import secrets
from typing import Any

import pytest

from tests.live import LiveGalley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, text, tool_call

pytestmark = pytest.mark.slow




def test_a_coordinator_session_streams_thread_events_and_lists_its_threads(
    galley: LiveGalley, model: ScriptedModel
) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    member = client.beta.agents.create(
        name=f"researcher-{suffix}", model="claude-haiku-4-5", system="You research carefully."
    )
    lead = client.beta.agents.create(
        name=f"lead-{suffix}",
        model="claude-sonnet-4-6",
        system="You coordinate.",
        multiagent={"type": "coordinator", "agents": [member.id]},
    )
    environment = client.beta.environments.create(name=f"multi-env-{suffix}")
    session = client.beta.sessions.create(agent=lead.id, environment_id=environment.id)
    model.push(
        tool_call("send_to_agent", {"agent_name": member.name, "message": "Find the answer."}),
        text("The answer is 42."),
        text("Done: 42."),
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go"}]}]
        )
        seen = until_idle(stream)
    types = [e.type for e in seen]
    assert types.index("session.thread_created") < types.index("agent.thread_message_sent")
    assert types.index("agent.thread_message_sent") < types.index("session.thread_status_running")
    assert types.index("agent.thread_message_received") < types.index("session.thread_status_idle")
    assert types.index("session.thread_status_idle") < types.index("agent.tool_result")
    assert types[-1] == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"
    created = next(e for e in seen if e.type == "session.thread_created")
    assert created.agent_name == member.name and created.session_thread_id.startswith("sthr_")
    received = next(e for e in seen if e.type == "agent.thread_message_received")
    assert received.from_session_thread_id == created.session_thread_id
    assert received.from_agent_name == member.name
    assert received.content[0].text == "The answer is 42."
    idle = next(e for e in seen if e.type == "session.thread_status_idle")
    assert idle.stop_reason.type == "end_turn"
    # The coordinator's stream carries none of the child's own trace.
    assert [e.type for e in seen].count("agent.message") == 1

    threads: list[Any] = list(client.beta.sessions.threads.list(session.id))
    child = next(t for t in threads if t.id == created.session_thread_id)
    primary = next(t for t in threads if t.parent_thread_id is None)
    assert child.parent_thread_id == primary.id
    assert child.status == "idle" and child.agent.name == member.name
    assert child.agent.system == "You research carefully."
    assert child.stats is not None and child.stats.active_seconds > 0
    events: list[Any] = list(client.beta.sessions.threads.events.list(child.id, session_id=session.id))
    assert [e.type for e in events] == [
        "agent.thread_message_received",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "agent.thread_message_sent",
        "session.status_idle",
    ]
    assert events[0].from_session_thread_id == primary.id
    assert events[3].content[0].text == "The answer is 42."
    running = list(client.beta.sessions.threads.list(session.id, statuses=["idle"]))
    assert child.id in {t.id for t in running}


def test_a_childs_custom_tool_request_is_cross_posted_and_answered_by_tool_use_id(
    galley: LiveGalley, model: ScriptedModel
) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    member = client.beta.agents.create(
        name=f"weather-{suffix}",
        model="claude-haiku-4-5",
        tools=[
            {
                "type": "custom",
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    )
    lead = client.beta.agents.create(
        name=f"lead-{suffix}",
        model="claude-sonnet-4-6",
        multiagent={"type": "coordinator", "agents": [member.id]},
    )
    environment = client.beta.environments.create(name=f"multi-env2-{suffix}")
    session = client.beta.sessions.create(agent=lead.id, environment_id=environment.id)
    model.push(
        tool_call("send_to_agent", {"agent_name": member.name, "message": "Weather in Oslo?"}),
        tool_call("get_weather", {"city": "Oslo"}),
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go"}]}]
        )
        first = until_idle(stream)
        use = next(e for e in first if e.type == "agent.custom_tool_use")
        thread_id = next(e for e in first if e.type == "session.thread_created").session_thread_id
        assert use.session_thread_id == thread_id and use.input == {"city": "Oslo"}
        assert first[-1].stop_reason.type == "requires_action" and first[-1].stop_reason.event_ids == [use.id]
        waiting = next(e for e in first if e.type == "session.thread_status_idle")
        assert waiting.stop_reason.type == "requires_action"

        model.push(text("Oslo: snow."), text("Snow in Oslo."))
        sent: Any = client.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": use.id,
                    "content": [{"type": "text", "text": "snow"}],
                }
            ],
        )
        assert sent.data[0].session_thread_id == thread_id
        second = until_idle(stream)
    types = [e.type for e in second]
    assert "agent.thread_message_received" in types and second[-1].stop_reason.type == "end_turn"
    result = next(e for e in second if e.type == "agent.tool_result")
    assert result.content[0].text == "Oslo: snow."
    child = client.beta.sessions.threads.retrieve(thread_id, session_id=session.id)
    assert child.status == "idle"

"""A whole turn seen through the SDK's event stream: the harness on the live worker answers from the
scripted model, and a stream opened before the send receives every event in log order, plus live
previews when asked for (across processes through Redis, or the embedded local bus)."""


import anthropic

from tests.live import LiveGalley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, text

MESSAGE = {"type": "user.message", "content": [{"type": "text", "text": "Say hello."}]}




def _session(client: anthropic.Anthropic) -> str:
    agent = client.beta.agents.create(name="greeter", model="claude-sonnet-4-6")
    env = client.beta.environments.create(name=f"turn-{agent.id[-6:]}")
    return client.beta.sessions.create(agent=agent.id, environment_id=env.id).id


def test_a_turn_streams_in_log_order_and_matches_the_list(galley: LiveGalley, model: ScriptedModel) -> None:
    client = galley.client()
    session_id = _session(client)
    model.push(text("Hello there, friend.", chunk_delay=0.02))
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=[MESSAGE])
        seen = until_idle(stream)
    types = [e.type for e in seen]  # type: ignore[attr-defined]
    assert types[:3] == ["user.message", "session.status_running", "span.model_request_start"]
    assert "agent.message" in types and types[-1] == "session.status_idle"
    assert not [t for t in types if t in ("event_start", "event_delta")]  # not asked for
    listed = [e.id for e in client.beta.sessions.events.list(session_id)]
    assert [e.id for e in seen] == listed[: len(seen)]  # type: ignore[attr-defined]


def test_previews_precede_the_message_when_asked_for(galley: LiveGalley, model: ScriptedModel) -> None:
    client = galley.client()
    session_id = _session(client)
    model.push(text("Hello there, friend.", chunk_delay=0.05))
    with client.beta.sessions.events.stream(session_id, event_deltas=["agent.message"]) as stream:
        client.beta.sessions.events.send(session_id, events=[MESSAGE])
        seen = until_idle(stream)
    types = [e.type for e in seen]  # type: ignore[attr-defined]
    message = next(e for e in seen if e.type == "agent.message")  # type: ignore[attr-defined]
    start = types.index("event_start")
    assert start < types.index("agent.message")
    assert seen[start].event.id == message.id  # type: ignore[attr-defined]
    deltas = [e for e in seen if e.type == "event_delta"]  # type: ignore[attr-defined]
    assert deltas and "".join(d.delta.content.text for d in deltas) == "Hello there, friend."  # type: ignore[attr-defined]

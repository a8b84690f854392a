"""Coordinator sessions delegate to roster agents in child threads (spec 9), driven by a scripted model."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from sessions.models import Event, Session, SessionThread
from tests.harness_helpers import (
    TOOLSET_ALL,
    custom_tool,
    harness_model,
    make_session,
    say,
    send,
    step,
    step_in_background,
)
from tests.model_server import Reply, ScriptedModel, error, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)

RESEARCHER = {
    "type": "agent",
    "id": "agent_researcher",
    "version": 1,
    "name": "researcher",
    "description": "Finds facts.",
    "system": "You research carefully.",
    "model": {"id": "claude-haiku-4-5", "effort": None, "speed": "standard", "inference_geo": None},
    "tools": [TOOLSET_ALL],
    "mcp_servers": [],
    "skills": [],
}


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def coordinator(member: dict[str, Any] = RESEARCHER) -> Session:
    session = make_session(system="You coordinate.")
    snapshot = dict(session.agent_snapshot)
    snapshot["multiagent"] = {"type": "coordinator", "agents": [member, {"type": "self"}]}
    Session.objects.filter(pk=session.pk).update(agent_snapshot=snapshot)
    SessionThread.objects.create(
        id=f"sthr_primary_{session.pk[-8:]}",
        session=session,
        parent=None,
        agent_name="tester",
        agent_snapshot=snapshot,
    )
    return Session.objects.get(pk=session.pk)


def primary(session: Session) -> list[Event]:
    return list(Event.objects.filter(session=session, thread=None).order_by("seq"))


def of_thread(thread: SessionThread) -> list[Event]:
    return list(Event.objects.filter(thread=thread).order_by("seq"))


def delegate(message: str, agent: str = "researcher") -> Any:
    return tool_call("send_to_agent", {"agent_name": agent, "message": message})


def test_the_coordinator_delegates_and_gets_the_childs_answer_as_the_tool_result(
    model: ScriptedModel,
) -> None:
    session = coordinator()
    model.push(
        delegate("Find the boiling point of water."),
        text("Water boils at 100 C at sea level."),
        text("The researcher says: 100 C."),
    )
    say(session, "How hot does water boil?")
    step(session)

    coordinator_request, child_request, final_request = model.requests
    send_tool = next(t for t in coordinator_request["tools"] if t["name"] == "send_to_agent")
    assert send_tool["input_schema"]["properties"]["agent_name"]["enum"] == ["researcher", "tester"]
    assert coordinator_request["system"][0]["text"] == "You coordinate."
    # The child runs its own model with its own system prompt and sees only the delegated message.
    assert child_request["model"] == "claude-haiku-4-5"
    assert child_request["system"][0]["text"] == "You research carefully."
    assert [m["role"] for m in child_request["messages"]] == ["user"]
    assert child_request["messages"][0]["content"][0]["text"] == "Find the boiling point of water."
    assert "send_to_agent" not in [t["name"] for t in child_request.get("tools", [])]
    result = final_request["messages"][-1]["content"][0]
    assert result["type"] == "tool_result"
    assert result["content"][0]["text"] == "Water boils at 100 C at sea level."

    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    assert thread.id.startswith("sthr_") and thread.agent_name == "researcher"
    assert thread.parent_id == SessionThread.objects.get(session=session, parent=None).id
    assert thread.agent_snapshot["system"] == "You research carefully."
    assert thread.status == "idle" and thread.stop_reason == {"type": "end_turn"}
    assert thread.running_since is None and thread.active_seconds > 0

    types = [e.type for e in primary(session)]
    assert types == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.tool_use",
        "span.model_request_end",
        "session.thread_created",
        "agent.thread_message_sent",
        "session.thread_status_running",
        "agent.thread_message_received",
        "session.thread_status_idle",
        "agent.tool_result",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    by_type = {e.type: e for e in primary(session)}
    assert by_type["session.thread_created"].payload == {
        "session_thread_id": thread.id,
        "agent_name": "researcher",
    }
    assert by_type["agent.thread_message_sent"].payload == {
        "to_session_thread_id": thread.id,
        "to_agent_name": "researcher",
        "content": [{"type": "text", "text": "Find the boiling point of water."}],
    }
    assert by_type["agent.thread_message_received"].payload["from_session_thread_id"] == thread.id
    assert by_type["agent.thread_message_received"].payload["from_agent_name"] == "researcher"
    assert by_type["session.thread_status_idle"].payload["stop_reason"] == {"type": "end_turn"}
    assert [e.type for e in of_thread(thread)] == [
        "agent.thread_message_received",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "agent.thread_message_sent",
        "session.status_idle",
    ]
    refreshed = Session.objects.get(pk=session.pk)
    assert refreshed.status == "idle"
    ends = Event.objects.filter(session=session, type="span.model_request_end")
    assert ends.filter(thread=thread).count() == 1
    assert refreshed.input_tokens == sum(e.payload["model_usage"]["input_tokens"] for e in ends) > 0


def test_a_follow_up_to_the_same_agent_reuses_its_thread_and_history(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(
        delegate("Remember the number 7."),
        text("Noted: 7."),
        text("Done."),
        delegate("Which number did I give you?"),
        text("You gave me 7."),
        text("It was 7."),
    )
    say(session, "First task")
    step(session)
    say(session, "Second task")
    step(session)
    assert SessionThread.objects.filter(session=session, parent__isnull=False).count() == 1
    second_child = model.requests[4]
    assert second_child["system"][0]["text"] == "You research carefully."
    texts = [b.get("text") for m in second_child["messages"] for b in m["content"]]
    assert texts == ["Remember the number 7.", "Noted: 7.", "Which number did I give you?"]
    assert [e.type for e in primary(session)].count("session.thread_created") == 1


def test_the_child_runs_tools_in_the_session_sandbox_and_cannot_ask_the_user(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(
        delegate("Use a tool you may not use."),
        tool_call("get_weather", {"city": "Paris"}),
        text("I could not."),
        text("ok"),
    )
    say(session, "go")
    step(session)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    use = next(e for e in of_thread(thread) if e.type == "agent.tool_use")
    assert use.payload["evaluated_permission"] == "deny"
    result = next(e for e in of_thread(thread) if e.type == "agent.tool_result")
    assert result.payload["is_error"] is True and result.payload["tool_use_id"] == use.id


def test_a_self_roster_entry_runs_the_coordinators_own_definition(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(delegate("Think about it.", agent="tester"), text("Thought."), text("ok"))
    say(session, "go")
    step(session)
    assert model.requests[1]["system"][0]["text"] == "You coordinate."
    assert "send_to_agent" not in [t["name"] for t in model.requests[1].get("tools", [])]


def test_an_interrupt_stops_the_child_and_the_coordinator(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(delegate("Take your time."), text("too late", delay=2.0))
    say(session, "go")
    worker = step_in_background(session)
    deadline = time.monotonic() + 5
    while not SessionThread.objects.filter(session=session, parent__isnull=False, status="running").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)
    send(session, "user.interrupt")
    worker.join(timeout=10)
    assert not worker.is_alive()
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    assert thread.status == "idle"
    types = [e.type for e in primary(session)]
    assert types[-1] == "session.status_idle"
    assert "session.thread_status_idle" in types
    use = next(e for e in primary(session) if e.type == "agent.tool_use")
    closing = [e for e in primary(session) if e.type == "agent.tool_result"]
    assert [c.payload["tool_use_id"] for c in closing] == [use.id] and closing[0].payload["is_error"]
    assert Session.objects.get(pk=session.pk).status == "idle"
    assert len(model.requests) == 2  # nobody called the model after the interrupt


def test_an_interrupt_naming_the_child_stops_only_the_child(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(delegate("Take your time."), text("too late", delay=2.0), text("The researcher was stopped."))
    say(session, "go")
    worker = step_in_background(session)
    deadline = time.monotonic() + 5
    while not SessionThread.objects.filter(session=session, parent__isnull=False, status="running").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    time.sleep(0.1)
    send(session, "user.interrupt", {"session_thread_id": thread.id})
    worker.join(timeout=10)
    assert not worker.is_alive()
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert "interrupted researcher" in result.payload["content"][0]["text"]
    assert primary(session)[-2].type == "span.model_request_end"
    assert model.requests[-1]["messages"][-1]["content"][0]["type"] == "tool_result"


def test_a_crashed_child_turn_resumes_from_its_log(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(delegate("Count to three."), text("one two three"), text("ok"))
    say(session, "go")
    step(session)
    # Rewind to a crash right after the child's model call started: drop what came after it.
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    start = next(e for e in of_thread(thread) if e.type == "span.model_request_start")
    with transaction.atomic():
        Event.objects.filter(session=session, seq__gt=start.seq).delete()
        Session.objects.filter(pk=session.pk).update(last_seq=start.seq, status="running", stop_reason=None)
        SessionThread.objects.filter(pk=thread.pk).update(status="running")
    model.push(text("one two three, again"), text("ok again"))
    step(session)
    child = of_thread(thread)
    ends = [e for e in child if e.type == "span.model_request_end"]
    assert ends[0].payload["model_request_start_id"] == start.id and ends[0].payload["is_error"] is True
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert result.payload["content"][0]["text"] == "one two three, again"
    # The resumed child was not sent the message twice.
    assert [e.type for e in child].count("agent.thread_message_received") == 1
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_two_calls_to_one_agent_in_one_answer_each_get_their_own_reply_after_a_crash(
    model: ScriptedModel,
) -> None:
    session = coordinator()
    both = Reply(
        blocks=[
            {
                "type": "tool_use",
                "name": "send_to_agent",
                "input": {"agent_name": "researcher", "message": "A?"},
            },
            {
                "type": "tool_use",
                "name": "send_to_agent",
                "input": {"agent_name": "researcher", "message": "B?"},
            },
        ]
    )
    model.push(both, text("answer A"), text("answer B"), text("ok"))
    say(session, "go")
    step(session)
    results = [e for e in primary(session) if e.type == "agent.tool_result"]
    assert [r.payload["content"][0]["text"] for r in results] == ["answer A", "answer B"]
    # Rewind to a crash right after the first call's result: the second call never ran.
    with transaction.atomic():
        Event.objects.filter(session=session, seq__gt=results[0].seq).delete()
        Session.objects.filter(pk=session.pk).update(
            last_seq=results[0].seq, status="running", stop_reason=None
        )
    model.push(text("answer B again"), text("ok again"))
    step(session)
    results = [e for e in primary(session) if e.type == "agent.tool_result"]
    assert [r.payload["content"][0]["text"] for r in results] == ["answer A", "answer B again"]
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    assert [e.type for e in of_thread(thread)].count("agent.thread_message_received") == 2


def test_a_childs_always_ask_call_waits_on_the_user_through_the_primary_log(model: ScriptedModel) -> None:
    asking = {
        **RESEARCHER,
        "tools": [{**TOOLSET_ALL, "default_config": {"permission_policy": {"type": "always_ask"}}}],
    }
    session = coordinator(asking)
    model.push(delegate("Delete the logs."), tool_call("bash", {"command": "rm -rf logs"}))
    say(session, "go")
    step(session)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    use = next(e for e in primary(session) if e.type == "agent.tool_use" and e.payload["name"] == "bash")
    assert use.thread_id is None
    assert use.payload["session_thread_id"] == thread.id and use.payload["evaluated_permission"] == "ask"
    idle = primary(session)[-1]
    assert idle.type == "session.status_idle"
    assert idle.payload["stop_reason"] == {"type": "requires_action", "event_ids": [use.id]}
    thread.refresh_from_db()
    assert thread.stop_reason == {"type": "requires_action", "event_ids": [use.id]}
    assert len(model.requests) == 2  # the coordinator's model was not asked to go on meanwhile

    model.push(text("I was not allowed to."), text("The researcher could not delete the logs."))
    send(
        session,
        "user.tool_confirmation",
        {
            "tool_use_id": use.id,
            "result": "deny",
            "deny_message": "not today",
            "session_thread_id": thread.id,
        },
    )
    step(session)
    child_retry = model.requests[2]
    assert child_retry["system"][0]["text"] == "You research carefully."
    denial = child_retry["messages"][-1]["content"][0]
    assert denial["type"] == "tool_result" and denial["tool_use_id"] == use.id
    assert "not today" in denial["content"][0]["text"]
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert result.payload["content"][0]["text"] == "I was not allowed to."
    # The coordinator's own context never saw the child's call.
    assert all(
        b.get("name") != "bash"
        for m in model.requests[3]["messages"]
        for b in m["content"]
        if b["type"] == "tool_use"
    )
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_a_childs_custom_tool_call_is_answered_by_the_user(model: ScriptedModel) -> None:
    session = coordinator({**RESEARCHER, "tools": [custom_tool("get_weather")]})
    model.push(delegate("Weather in Oslo?"), tool_call("get_weather", {"city": "Oslo"}))
    say(session, "go")
    step(session)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    use = next(e for e in primary(session) if e.type == "agent.custom_tool_use")
    assert use.payload == {"name": "get_weather", "input": {"city": "Oslo"}, "session_thread_id": thread.id}
    assert primary(session)[-1].payload["stop_reason"]["event_ids"] == [use.id]
    assert "get_weather" in [t["name"] for t in model.requests[1]["tools"]]
    assert "get_weather" not in [t["name"] for t in model.requests[0]["tools"]]

    model.push(text("Oslo: snow."), text("It snows in Oslo."))
    send(
        session,
        "user.custom_tool_result",
        {
            "custom_tool_use_id": use.id,
            "content": [{"type": "text", "text": "snow"}],
            "session_thread_id": thread.id,
        },
    )
    step(session)
    assert model.requests[2]["messages"][-1]["content"][0]["content"][0]["text"] == "snow"
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert result.payload["content"][0]["text"] == "Oslo: snow."
    types = [e.type for e in primary(session)]
    assert types.count("session.thread_status_idle") == 2  # requires_action, then end_turn
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_an_interrupt_closes_a_childs_waiting_request(model: ScriptedModel) -> None:
    session = coordinator({**RESEARCHER, "tools": [custom_tool("get_weather")]})
    model.push(delegate("Weather in Oslo?"), tool_call("get_weather", {"city": "Oslo"}))
    say(session, "go")
    step(session)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    use = next(e for e in primary(session) if e.type == "agent.custom_tool_use")
    send(session, "user.interrupt")
    step(session)
    closed = next(e for e in of_thread(thread) if e.type == "agent.tool_result")
    assert closed.payload["tool_use_id"] == use.id and closed.payload["is_error"] is True
    thread.refresh_from_db()
    assert thread.status == "idle" and thread.stop_reason == {"type": "end_turn"}
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}
    # A follow-up to the same agent starts clean: its old request is closed in its context.
    model.push(delegate("Try again."), text("Cannot check now."), text("ok"))
    say(session, "again")
    step(session)
    assert model.requests[-2]["messages"][-1]["content"][-1]["text"] == "Try again."


def test_an_interrupt_naming_a_waiting_child_closes_its_request_and_lets_it_answer(
    model: ScriptedModel,
) -> None:
    session = coordinator({**RESEARCHER, "tools": [custom_tool("get_weather")]})
    model.push(delegate("Weather in Oslo?"), tool_call("get_weather", {"city": "Oslo"}))
    say(session, "go")
    step(session)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    use = next(e for e in primary(session) if e.type == "agent.custom_tool_use")
    model.push(text("I could not find out."), text("No weather today."))
    send(session, "user.interrupt", {"session_thread_id": thread.id})
    step(session)
    closed = next(e for e in of_thread(thread) if e.type == "agent.tool_result")
    assert closed.payload["tool_use_id"] == use.id and closed.payload["is_error"] is True
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert result.payload["content"][0]["text"] == "I could not find out."
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert len(model.requests) == 4


def test_a_terminated_session_terminates_its_child_threads(model: ScriptedModel) -> None:
    session = coordinator()
    model.push(delegate("Look."), text("Seen."), error(400, "invalid_request_error", "bad request"))
    say(session, "go")
    step(session)
    thread = SessionThread.objects.get(session=session, parent__isnull=False)
    assert thread.status == "terminated"
    types = [e.type for e in primary(session)]
    assert types[-2:] == ["session.thread_status_terminated", "session.status_terminated"]
    ended = primary(session)[-2].payload
    assert ended == {"session_thread_id": thread.id, "agent_name": "researcher"}
    assert of_thread(thread)[-1].type == "session.status_terminated"

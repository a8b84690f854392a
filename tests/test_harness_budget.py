"""Session budgets in the agent loop (spec 5, 7.1, 7.4): checked before every model request,
a pause with session.usage then session.status_idle{budget_reached}, only settle events while
paused, and a raised budget resumes the session."""

from collections.abc import Iterator
from typing import Any

import pytest

from api.errors import ApiError
from sessions import services
from sessions.models import Session
from tests.harness_helpers import events_of, harness_model, log_types, make_session, say, step
from tests.model_server import ScriptedModel, text

pytestmark = pytest.mark.django_db(transaction=True)


def budget(amount: str) -> dict[str, Any]:
    return {"type": "limit", "max_list_cost": {"amount": amount, "currency": "USD"}}


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def test_a_spent_budget_stops_before_the_next_model_request_and_a_raise_resumes(model: ScriptedModel) -> None:
    session = make_session()
    Session.objects.filter(pk=session.pk).update(budget=budget("2"))
    # 2,000 output tokens at $15/MTok: 3 cents, over the 2-cent budget.
    model.push(text("First answer.", usage={"output_tokens": 2000}))
    say(session, "Hi")
    step(session)
    assert len(model.requests) == 1
    assert log_types(session)[-1] == "session.status_idle"

    say(session, "And again?")
    step(session)
    assert len(model.requests) == 1, "the budget must stop the second request"
    tail = log_types(session)[-3:]
    assert tail == ["session.status_running", "session.usage", "session.status_idle"]
    [usage] = events_of(session, "session.usage")
    assert int(usage.payload["usage"]["list_cost"]["amount"]) >= 3
    assert usage.payload["budget"] == budget("2")
    idle = events_of(session, "session.status_idle")[-1]
    assert idle.payload["stop_reason"] == {"type": "budget_reached"}
    paused = Session.objects.get(pk=session.pk)
    assert paused.status == "idle" and paused.stop_reason == {"type": "budget_reached"}

    with pytest.raises(ApiError) as info:
        services.events_send(
            session=paused, events=[{"type": "user.message", "content": [{"type": "text", "text": "more"}]}]
        )
    assert info.value.status == 400 and "budget" in info.value.message
    step(session)  # nothing to do while paused: no model call, no new events
    assert len(model.requests) == 1 and log_types(session)[-1] == "session.status_idle"

    with pytest.raises(ApiError) as info:
        services.session_update(session=paused, body={"budget": budget("3")})
    assert info.value.details["error_code"] == "budget_not_raised"

    model.push(text("Second answer."))
    services.session_update(session=paused, body={"budget": budget("1000")})
    step(session)
    assert len(model.requests) == 2
    texts = [
        b["text"] for m in model.requests[1]["messages"] for b in m["content"] if b.get("type") == "text"
    ]
    assert "And again?" in texts
    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "end_turn"}
    assert events_of(session, "agent.message")[-1].payload["content"][0]["text"] == "Second answer."


def test_a_message_queued_before_the_pause_is_seen_on_resume(model: ScriptedModel) -> None:
    session = make_session()
    Session.objects.filter(pk=session.pk).update(budget=budget("1"), token_cost_micros=50_000)
    say(session, "Queued before the pause")
    step(session)
    assert model.requests == []
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "budget_reached"}
    model.push(text("Resumed."))
    services.session_update(session=Session.objects.get(pk=session.pk), body={"budget": None})
    step(session)
    assert len(model.requests) == 1
    assert "Queued before the pause" in str(model.requests[0]["messages"])


def test_a_child_thread_is_stopped_by_the_sessions_budget_and_resumes_with_it(model: ScriptedModel) -> None:
    from sessions.models import Event, SessionThread
    from tests.model_server import tool_call
    from tests.test_harness_multiagent import coordinator

    session = coordinator()
    Session.objects.filter(pk=session.pk).update(budget=budget("2"))
    # The coordinator's own call spends the budget; the child's first request is refused.
    model.push(
        tool_call(
            "send_to_agent",
            {"agent_name": "researcher", "message": "Find facts."},
            usage={"output_tokens": 2000},
        )
    )
    say(session, "Research this")
    step(session)
    assert len(model.requests) == 1
    primary = list(
        Event.objects.filter(session=session, thread=None).order_by("seq").values_list("type", flat=True)
    )
    assert primary[-3:] == ["session.thread_status_idle", "session.usage", "session.status_idle"]
    child = SessionThread.objects.get(session=session, parent__isnull=False)
    assert child.status == "idle" and child.stop_reason == {"type": "budget_reached"}
    thread_idle = events_of(session, "session.thread_status_idle")[-1]
    assert thread_idle.payload["stop_reason"] == {"type": "budget_reached"}

    model.push(text("Facts found."), text("Here are the facts."))
    services.session_update(session=Session.objects.get(pk=session.pk), body={"budget": budget("500")})
    step(session)
    assert len(model.requests) == 3
    assert model.requests[1]["system"][0]["text"] == "You research carefully."
    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "end_turn"}
    assert events_of(session, "agent.message")[-1].payload["content"][0]["text"] == "Here are the facts."


def test_a_settle_event_runs_while_paused_and_the_session_pauses_again(model: ScriptedModel) -> None:
    from tests.harness_helpers import custom_tool
    from tests.model_server import tool_call

    session = make_session(tools=[custom_tool()])
    Session.objects.filter(pk=session.pk).update(budget=budget("2"))
    model.push(tool_call("get_weather", {"city": "Oslo"}, usage={"output_tokens": 2000}))
    say(session, "Weather?")
    step(session)
    use = events_of(session, "agent.custom_tool_use")[0]
    assert Session.objects.get(pk=session.pk).stop_reason["type"] == "requires_action"
    services.events_send(
        session=Session.objects.get(pk=session.pk),
        events=[{"type": "user.custom_tool_result", "custom_tool_use_id": use.id, "content": []}],
    )
    step(session)
    assert len(model.requests) == 1
    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "budget_reached"}

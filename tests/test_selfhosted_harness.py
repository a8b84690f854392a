"""The harness and self_hosted sessions: built-in tools are left to the worker, whose
`user.tool_result` (matched by tool_use_id, also for child threads) resumes the turn."""

from collections.abc import Iterator
from typing import Any

import pytest

from api.errors import ApiError
from selfhosted.models import WorkItem
from sessions.models import Event, Session, SessionThread
from sessions.services import events_send
from tests.harness_helpers import (
    TOOLSET_ALL,
    harness_model,
    make_session,
    say,
    step,
    step_in_background,
    wait_for,
)
from tests.model_server import ScriptedModel, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS = 0  # each step() here returns once it waits
    with harness_model(settings) as server:
        yield server


def self_hosted(session: Session) -> Session:
    session.environment.config = {"type": "self_hosted"}
    session.environment.save(update_fields=["config"])
    return Session.objects.get(pk=session.pk)


def answer(session: Session, use_id: str, output: str) -> None:
    events_send(
        session=session,
        events=[
            {"type": "user.tool_result", "tool_use_id": use_id, "content": [{"type": "text", "text": output}]}
        ],
    )


def primary(session: Session) -> list[Event]:
    return list(Event.objects.filter(session=session, thread=None).order_by("seq"))


def test_a_built_in_call_waits_running_for_the_workers_result(model: ScriptedModel) -> None:
    session = self_hosted(make_session(tools=[TOOLSET_ALL]))
    model.push(tool_call("bash", {"command": "hostname"}))
    say(session, "where are you?")
    step(session)
    use = next(e for e in primary(session) if e.type == "agent.tool_use")
    assert use.payload["evaluated_permission"] == "allow"
    assert not [e for e in primary(session) if e.type == "agent.tool_result"]  # nothing ran here
    assert Session.objects.get(pk=session.pk).status == "running"
    assert primary(session)[-1].type == "span.model_request_end"
    assert [w.state for w in WorkItem.objects.filter(session_id=session.pk)] == ["queued"]
    step(session)  # a sweep finds nothing to do but wait
    assert primary(session)[-1].type == "span.model_request_end"

    model.push(text("On the worker."))
    answer(session, use.id, "worker-host-7")
    step(session)
    sent = model.requests[-1]["messages"][-1]["content"][0]
    assert sent["type"] == "tool_result" and sent["tool_use_id"] == use.id
    assert sent["content"] == [{"type": "text", "text": "worker-host-7"}]
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_the_step_keeps_its_lease_briefly_and_continues_with_a_quick_answer(
    model: ScriptedModel, settings: Any
) -> None:
    settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS = 30
    session = self_hosted(make_session(tools=[TOOLSET_ALL]))
    model.push(tool_call("bash", {"command": "true"}), text("Quick."))
    say(session, "go")
    running = step_in_background(session)
    use = wait_for(lambda: next((e for e in primary(session) if e.type == "agent.tool_use"), None))
    assert Session.objects.get(pk=session.pk).lease_owner is not None  # the step is still there
    answer(session, use.id, "")
    running.join(timeout=20)
    assert not running.is_alive()
    assert len(model.requests) == 2  # the same step called the model again
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_web_tools_still_run_in_the_harness(model: ScriptedModel, settings: Any) -> None:
    session = self_hosted(make_session(tools=[TOOLSET_ALL]))
    model.push(tool_call("web_fetch", {"url": "http://127.0.0.1:9/none"}), text("ok"))
    say(session, "fetch")
    step(session)
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert result.payload["is_error"] is True  # the harness ran it (and loopback is refused)
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_an_interrupt_closes_the_waiting_call_and_a_late_answer_is_refused(model: ScriptedModel) -> None:
    session = self_hosted(make_session(tools=[TOOLSET_ALL]))
    model.push(tool_call("bash", {"command": "sleep 100"}))
    say(session, "go")
    step(session)
    use = next(e for e in primary(session) if e.type == "agent.tool_use")
    events_send(session=session, events=[{"type": "user.interrupt"}])
    step(session)
    assert Session.objects.get(pk=session.pk).status == "idle"
    with pytest.raises(ApiError) as refused:
        answer(session, use.id, "too late")
    assert refused.value.status == 409 and use.id in refused.value.message


def test_a_waiting_session_whose_item_stopped_gets_a_new_one(model: ScriptedModel) -> None:
    session = self_hosted(make_session(tools=[TOOLSET_ALL]))
    model.push(tool_call("bash", {"command": "true"}))
    say(session, "go")
    step(session)
    WorkItem.objects.filter(session_id=session.pk).update(state="stopped")
    step(session)  # what the sweeper does for a running session with no step
    assert sorted(WorkItem.objects.filter(session_id=session.pk).values_list("state", flat=True)) == [
        "queued",
        "stopped",
    ]


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


def test_a_child_threads_call_is_answered_through_the_primary_log_by_tool_use_id(
    model: ScriptedModel,
) -> None:
    session = self_hosted(make_session(system="You coordinate."))
    snapshot = dict(session.agent_snapshot)
    snapshot["multiagent"] = {"type": "coordinator", "agents": [RESEARCHER]}
    Session.objects.filter(pk=session.pk).update(agent_snapshot=snapshot)
    SessionThread.objects.create(
        id=f"sthr_primary_{session.pk[-8:]}",
        session=session,
        parent=None,
        agent_name="tester",
        agent_snapshot=snapshot,
    )
    model.push(
        tool_call("send_to_agent", {"agent_name": "researcher", "message": "Count the files."}),
        tool_call("bash", {"command": "ls | wc -l"}),
    )
    say(session, "go")
    step(session)
    child = SessionThread.objects.get(session=session, parent__isnull=False)
    use = next(e for e in primary(session) if e.type == "agent.tool_use" and e.payload["name"] == "bash")
    assert use.payload["session_thread_id"] == child.pk  # on the stream the worker reads
    assert Session.objects.get(pk=session.pk).status == "running"
    assert SessionThread.objects.get(pk=child.pk).status == "running"
    step(session)  # nothing to do until the worker answers; the child is not re-run
    assert len(model.requests) == 2

    model.push(text("There are 3 files."), text("The researcher counted 3."))
    answer(session, use.id, "3")  # the body names no thread
    stored = Event.objects.get(session=session, type="user.tool_result")
    assert stored.thread_id is None and stored.payload["session_thread_id"] == child.pk
    step(session)
    child_request = model.requests[2]["messages"][-1]["content"][0]
    assert child_request["type"] == "tool_result" and child_request["content"][0]["text"] == "3"
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert result.payload["content"][0]["text"] == "There are 3 files."
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}

"""A coordinator's children run at the same time, each as its own step under its own thread lease
(issue 14 item 5): the coordinator waits on their answers, an interrupt stops them, and a worker
killed mid-child is recovered by the sweeper."""

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from harness.dispatch import session_kick
from sessions.models import Event, Session, SessionThread
from sessions.services import events_send
from tests.harness_helpers import (
    TOOLSET_ALL,
    harness_model,
    make_session,
    say,
    send,
    step,
    step_in_background,
    wait_for,
)
from tests.harness_worker import celery_worker, purge_embedded_broker
from tests.model_server import Reply, ScriptedModel, scripted_model, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


def member(name: str, system: str) -> dict[str, Any]:
    return {
        "type": "agent",
        "id": f"agent_{name}",
        "version": 1,
        "name": name,
        "description": f"The {name}.",
        "system": system,
        "model": {"id": "claude-haiku-4-5", "effort": None, "speed": "standard", "inference_geo": None},
        "tools": [TOOLSET_ALL],
        "mcp_servers": [],
        "skills": [],
    }


RESEARCHER = member("researcher", "You research carefully.")
WRITER = member("writer", "You write clearly.")
CHILD_SYSTEMS = {"You research carefully.": "researcher", "You write clearly.": "writer"}


def coordinator(*members: dict[str, Any]) -> Session:
    session = make_session(system="You coordinate.")
    snapshot = dict(session.agent_snapshot)
    snapshot["multiagent"] = {"type": "coordinator", "agents": list(members)}
    Session.objects.filter(pk=session.pk).update(agent_snapshot=snapshot)
    SessionThread.objects.create(
        id=f"sthr_primary_{session.pk[-8:]}",
        session=session,
        parent=None,
        agent_name="lead",
        agent_snapshot=snapshot,
    )
    return Session.objects.get(pk=session.pk)


def both_sends() -> Reply:
    return Reply(
        blocks=[
            {
                "type": "tool_use",
                "name": "send_to_agent",
                "input": {"agent_name": "researcher", "message": "Facts?"},
            },
            {
                "type": "tool_use",
                "name": "send_to_agent",
                "input": {"agent_name": "writer", "message": "Draft?"},
            },
        ]
    )


def _system(body: dict[str, Any]) -> str:
    system = body.get("system") or []
    return system[0]["text"] if system else ""


def meeting_responder(timeout: float = 20.0) -> Any:
    """Each child's model request waits until the other child's has arrived too: sequential
    children would never meet, and each would answer "alone" after the timeout. The researcher,
    called first, answers last."""
    barrier = threading.Barrier(2, timeout=timeout)

    def respond(body: dict[str, Any]) -> Reply:
        name = CHILD_SYSTEMS.get(_system(body))
        if name is None:
            last = body["messages"][-1]["content"]
            if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
                return text("Both answered.")
            return both_sends()
        try:
            barrier.wait()
            met = "together"
        except threading.BrokenBarrierError:
            met = "alone"
        return text(f"{name} {met}", delay=0.5 if name == "researcher" else 0.0)

    return respond


def primary(session: Session) -> list[Event]:
    return list(Event.objects.filter(session=session, thread=None).order_by("seq"))


def _assert_log_is_whole(session: Session) -> None:
    seqs = list(Event.objects.filter(session_id=session.pk).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    starts = Event.objects.filter(session_id=session.pk, type="span.model_request_start")
    ends = Event.objects.filter(session_id=session.pk, type="span.model_request_end")
    assert sorted(e.payload["model_request_start_id"] for e in ends) == sorted(s.id for s in starts)


def _assert_answered_in_call_order(session: Session) -> None:
    results = [e for e in primary(session) if e.type == "agent.tool_result"]
    assert [r.payload["content"][0]["text"] for r in results] == ["researcher together", "writer together"]
    uses = [e for e in primary(session) if e.type == "agent.tool_use"]
    assert [r.payload["tool_use_id"] for r in results] == [u.id for u in uses]
    # Both answers arrived before the coordinator wrote either result.
    received = [e.seq for e in primary(session) if e.type == "agent.thread_message_received"]
    assert len(received) == 2 and max(received) < results[0].seq
    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "end_turn"}
    for thread in SessionThread.objects.filter(session=session, parent__isnull=False):
        assert thread.status == "idle" and thread.lease_owner is None
    _assert_log_is_whole(session)


# --- in process: each child step on its own thread ------------------------------------------------------


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    settings.GALLEY_INTERRUPT_POLL_SECONDS = 0.05
    settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS = 0
    with harness_model(settings) as server:
        yield server


def test_two_children_of_one_answer_run_at_the_same_time_and_answer_in_call_order(
    model: ScriptedModel,
) -> None:
    model.responder = meeting_responder()
    session = coordinator(RESEARCHER, WRITER)
    say(session, "Research and write.")
    step(session)
    _assert_answered_in_call_order(session)
    assert len(model.requests) == 4
    # The coordinator's final request carries both results, in call order.
    results = [b for b in model.requests[-1]["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert [r["content"][0]["text"] for r in results] == ["researcher together", "writer together"]


def test_an_interrupt_stops_every_running_child_and_the_coordinator(model: ScriptedModel) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if CHILD_SYSTEMS.get(_system(body)):
            return text("too late", delay=5.0)
        return both_sends()

    model.responder = respond
    session = coordinator(RESEARCHER, WRITER)
    say(session, "go")
    worker = step_in_background(session)
    wait_for(lambda: len(model.requests) == 3, timeout=10)  # both children are waiting on the model
    send(session, "user.interrupt")
    worker.join(timeout=10)
    assert not worker.is_alive()
    children = list(SessionThread.objects.filter(session=session, parent__isnull=False))
    assert len(children) == 2
    for thread in children:
        assert thread.status == "idle" and thread.stop_reason == {"type": "end_turn"}
        own = list(Event.objects.filter(thread=thread).order_by("seq").values_list("type", flat=True))
        assert own[-2:] == ["span.model_request_end", "session.status_idle"]  # its request was closed
    types = [e.type for e in primary(session)]
    assert types.count("session.thread_status_idle") == 2
    assert types[-1] == "session.status_idle"
    closing = [e for e in primary(session) if e.type == "agent.tool_result"]
    assert len(closing) == 2 and all(c.payload["is_error"] for c in closing)
    assert "agent.thread_message_received" not in types
    assert len(model.requests) == 3  # nobody called the model after the interrupt
    _assert_log_is_whole(session)


def test_an_interrupt_naming_one_child_stops_only_that_child(model: ScriptedModel) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        name = CHILD_SYSTEMS.get(_system(body))
        if name == "researcher":
            return text("too late", delay=5.0)
        if name == "writer":
            return text("Draft done.", delay=0.5)
        last = body["messages"][-1]["content"]
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
            return text("One answer, one interruption.")
        return both_sends()

    model.responder = respond
    session = coordinator(RESEARCHER, WRITER)
    say(session, "go")
    worker = step_in_background(session)
    wait_for(lambda: len(model.requests) == 3, timeout=10)
    researcher = SessionThread.objects.get(session=session, agent_name="researcher")
    send(session, "user.interrupt", {"session_thread_id": researcher.pk})
    worker.join(timeout=15)
    assert not worker.is_alive()
    results = [e for e in primary(session) if e.type == "agent.tool_result"]
    texts = [r.payload["content"][0]["text"] for r in results]
    assert "interrupted researcher" in texts[0] and results[0].payload["is_error"] is True
    assert "Draft done." in texts
    assert SessionThread.objects.get(pk=researcher.pk).stop_reason == {"type": "end_turn"}
    assert primary(session)[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert len(model.requests) == 4
    _assert_log_is_whole(session)


def test_an_interrupted_child_waiting_on_the_self_hosted_worker_goes_idle(model: ScriptedModel) -> None:
    session = coordinator(RESEARCHER)
    session.environment.config = {"type": "self_hosted"}
    session.environment.save(update_fields=["config"])

    def respond(body: dict[str, Any]) -> Reply:
        if CHILD_SYSTEMS.get(_system(body)):
            return tool_call("bash", {"command": "ls"})
        last = body["messages"][-1]["content"]
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
            return text("Stopped.")
        return tool_call("send_to_agent", {"agent_name": "researcher", "message": "List the files."})

    model.responder = respond
    say(session, "go")
    step(session)
    child = SessionThread.objects.get(session=session, parent__isnull=False)
    assert child.status == "running"  # waiting on the worker's user.tool_result
    use = next(e for e in primary(session) if e.type == "agent.tool_use" and e.payload["name"] == "bash")
    events_send(
        session=Session.objects.get(pk=session.pk),
        events=[{"type": "user.interrupt", "session_thread_id": child.pk}],
    )
    step(session)
    child.refresh_from_db()
    assert child.status == "idle" and child.stop_reason == {"type": "end_turn"}
    closed = next(e for e in Event.objects.filter(thread=child, type="agent.tool_result"))
    assert closed.payload["tool_use_id"] == use.id and closed.payload["is_error"] is True
    result = next(e for e in primary(session) if e.type == "agent.tool_result")
    assert "interrupted researcher" in result.payload["content"][0]["text"]
    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "end_turn"}
    _assert_log_is_whole(session)


# --- a real Celery worker process --------------------------------------------------------------------


@pytest.fixture
def worker_model() -> Iterator[ScriptedModel]:
    purge_embedded_broker()
    with scripted_model() as server:
        yield server


def _worker_env(model: ScriptedModel, **extra: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": model.base_url,
        "GALLEY_INTERRUPT_POLL_SECONDS": "0.05",
        **extra,
    }


@pytest.mark.slow
def test_a_worker_runs_two_children_on_different_worker_threads(worker_model: ScriptedModel) -> None:
    worker_model.responder = meeting_responder()
    session = coordinator(RESEARCHER, WRITER)
    with celery_worker(_worker_env(worker_model)):
        say(session, "Research and write.")
        session_kick(session.pk)
        wait_for(lambda: Session.objects.get(pk=session.pk).stop_reason == {"type": "end_turn"}, timeout=60)
        # A child kicks the session with its answer before its step ends and lets go of its lease: the
        # worker (killed when this block ends) gets the moment it needs.
        children = SessionThread.objects.filter(session=session, parent__isnull=False)
        wait_for(lambda: not children.exclude(lease_owner=None).exists(), timeout=10)
    _assert_answered_in_call_order(session)


@pytest.mark.slow
def test_a_worker_killed_mid_child_is_recovered_with_no_event_duplicated(worker_model: ScriptedModel) -> None:
    calls: list[str] = []

    def respond(body: dict[str, Any]) -> Reply:
        if CHILD_SYSTEMS.get(_system(body)):
            calls.append("child")
            if len(calls) == 1:
                return text("This answer never arrives.", delay=60)
            return text("Recovered facts.")
        last = body["messages"][-1]["content"]
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
            return text("Done.")
        return tool_call("send_to_agent", {"agent_name": "researcher", "message": "Facts?"})

    worker_model.responder = respond
    session = coordinator(RESEARCHER)
    env = _worker_env(worker_model, GALLEY_LEASE_SECONDS="2", GALLEY_SWEEP_SECONDS="0.5")
    with celery_worker(env) as first:
        say(session, "go")
        session_kick(session.pk)
        wait_for(lambda: calls, timeout=30)
        child = SessionThread.objects.get(session=session, parent__isnull=False)
        assert child.lease_owner is not None  # the child's own lease, not the session's
        assert Session.objects.get(pk=session.pk).lease_owner is None
        first.kill()
    with celery_worker(env):
        wait_for(lambda: Session.objects.get(pk=session.pk).stop_reason == {"type": "end_turn"}, timeout=60)
    child.refresh_from_db()
    assert child.status == "idle" and child.lease_owner is None
    types = [e.type for e in primary(session)]
    assert types.count("session.thread_status_rescheduled") == 1
    assert "session.status_rescheduled" not in types  # the coordinator was not running
    own = list(Event.objects.filter(thread=child).order_by("seq").values_list("type", flat=True))
    assert own.count("agent.thread_message_received") == 1  # the message was not delivered twice
    assert own.count("agent.message") == 1
    assert own.index("session.status_rescheduled") < own.index("agent.message")
    messages = [
        e.payload["content"][0]["text"] for e in Event.objects.filter(thread=child, type="agent.message")
    ]
    assert messages == ["Recovered facts."]
    dead = Event.objects.filter(thread=child, type="span.model_request_end").order_by("seq").first()
    assert dead is not None and dead.payload["is_error"] is True
    results = [e for e in primary(session) if e.type == "agent.tool_result"]
    assert [r.payload["content"][0]["text"] for r in results] == ["Recovered facts."]
    assert len(calls) == 2
    _assert_log_is_whole(session)


# --- the sweeper and the keeper for thread leases ------------------------------------------------------


def _child_at_work(session: Session, *, owner: str, expires_in: float) -> SessionThread:
    from datetime import timedelta

    from django.utils import timezone

    thread = SessionThread.objects.create(
        id=f"sthr_child_{session.pk[-8:]}",
        session=session,
        parent=SessionThread.objects.get(session=session, parent=None),
        agent_name="researcher",
        agent_snapshot=RESEARCHER,
        status="running",
        lease_owner=owner,
        lease_expires_at=timezone.now() + timedelta(seconds=expires_in),
    )
    Session.objects.filter(pk=session.pk).update(status="running")
    return thread


def test_the_sweeper_reschedules_a_childs_expired_lease_once(model: ScriptedModel) -> None:
    from harness.threads import thread_reschedule_expired, threads_sweep

    session = coordinator(RESEARCHER)
    thread = _child_at_work(session, owner="dead-worker", expires_in=-1)
    assert threads_sweep() == [(session.pk, thread.pk)]
    thread.refresh_from_db()
    assert thread.status == "rescheduling" and thread.lease_owner is None
    assert threads_sweep() == [(session.pk, thread.pk)]  # still needs a step, not rescheduled twice
    assert thread_reschedule_expired(thread_id=thread.pk, owner="dead-worker") is False
    cross = [e for e in primary(session) if e.type == "session.thread_status_rescheduled"]
    assert len(cross) == 1 and cross[0].payload == {
        "session_thread_id": thread.pk,
        "agent_name": "researcher",
    }
    own = list(Event.objects.filter(thread=thread).values_list("type", flat=True))
    assert own == ["session.status_rescheduled"]


def test_the_sweeper_leaves_a_live_child_lease_and_its_waiting_coordinator_alone(
    model: ScriptedModel,
) -> None:
    from harness.services import sessions_sweep
    from harness.threads import threads_sweep

    session = coordinator(RESEARCHER)
    thread = _child_at_work(session, owner="live-worker", expires_in=30)
    assert threads_sweep() == []
    assert sessions_sweep() == []  # the child kicks the coordinator when it stops
    thread.refresh_from_db()
    assert thread.lease_owner == "live-worker" and thread.status == "running"
    assert not [e for e in primary(session) if e.type == "session.thread_status_rescheduled"]


def test_the_keeper_cancels_a_child_step_for_its_own_or_the_sessions_interrupt_only(
    model: ScriptedModel,
) -> None:
    from harness.keeper import Keeper, StepHandle

    session = coordinator(RESEARCHER, WRITER)
    researcher = _child_at_work(session, owner="researcher-step", expires_in=30)
    keeper = Keeper()  # its rounds are run here, without its background thread
    child = StepHandle(session.pk, "researcher-step", researcher.pk)
    other = StepHandle(session.pk, "writer-step", "sthr_writer")
    keeper._steps = {child.owner: child, other.owner: other}
    keeper._tick(dict(keeper._steps))
    assert not child.cancel.is_set() and not other.cancel.is_set()
    send(session, "user.interrupt", {"session_thread_id": researcher.pk})
    keeper._tick(dict(keeper._steps))
    assert child.cancel.is_set() and not other.cancel.is_set()
    Event.objects.filter(session=session, type="user.interrupt").update(processed_at="2026-01-01T00:00:00Z")
    send(session, "user.interrupt")
    keeper._tick(dict(keeper._steps))
    assert other.cancel.is_set()
    keeper._last_renewal = 0.0
    SessionThread.objects.filter(pk=researcher.pk).update(lease_expires_at=None)
    keeper._tick(dict(keeper._steps))
    assert SessionThread.objects.get(pk=researcher.pk).lease_expires_at is not None  # renewed

"""The harness on a real Celery worker process: tasks through the broker, the sweeper, and
recovery after a worker is SIGKILLed mid-step."""

from collections.abc import Iterator

import pytest

from harness.dispatch import session_kick
from sessions.models import Event, Session
from tests.harness_helpers import events_of, log_types, make_session, say, wait_for
from tests.harness_worker import celery_worker, purge_embedded_broker
from tests.model_server import ScriptedModel, scripted_model, text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
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


def _status(session: Session) -> str:
    return Session.objects.get(pk=session.pk).status


def _assert_log_is_whole(session: Session) -> None:
    seqs = list(Event.objects.filter(session_id=session.pk).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    starts = events_of(session, "span.model_request_start")
    ends = events_of(session, "span.model_request_end")
    assert sorted(e.payload["model_request_start_id"] for e in ends) == sorted(s.id for s in starts)


def test_a_worker_runs_kicked_sessions_concurrently(model: ScriptedModel) -> None:
    model.responder = lambda body: text("Answer.", delay=0.3)
    sessions = [make_session() for _ in range(6)]
    with celery_worker(_worker_env(model)):
        for session in sessions:
            say(session, "hi")
            session_kick(session.pk)
        wait_for(lambda: all(_status(s) == "idle" for s in sessions), timeout=30)
    for session in sessions:
        assert log_types(session)[-1] == "session.status_idle"
        assert [e.payload["content"][0]["text"] for e in events_of(session, "agent.message")] == ["Answer."]
        _assert_log_is_whole(session)


def test_a_killed_worker_is_recovered_by_the_sweeper_with_nothing_lost_or_duplicated(
    model: ScriptedModel,
) -> None:
    model.push(text("This answer never arrives.", delay=60), text("Recovered answer."))
    session = make_session()
    env = _worker_env(model, GALLEY_LEASE_SECONDS="2", GALLEY_SWEEP_SECONDS="0.5")
    with celery_worker(env) as first:
        say(session, "hi")
        session_kick(session.pk)
        wait_for(lambda: events_of(session, "span.model_request_start"), timeout=20)
        wait_for(lambda: len(model.requests) == 1, timeout=10)
        first.kill()
    assert _status(session) == "running"
    assert Session.objects.get(pk=session.pk).lease_owner is not None
    with celery_worker(env):
        wait_for(lambda: _status(session) == "idle", timeout=30)
    types = log_types(session)
    assert types.count("user.message") == 1
    # The sweeper says so before the session resumes.
    assert types.count("session.status_rescheduled") == 1
    rescheduled = types.index("session.status_rescheduled")
    assert types.index("span.model_request_start") < rescheduled < types.index("agent.message")
    assert types[rescheduled + 1 :].index("session.status_running") >= 0
    assert [e.payload["content"][0]["text"] for e in events_of(session, "agent.message")] == [
        "Recovered answer."
    ]
    first_end = events_of(session, "span.model_request_end")[0]
    assert first_end.payload["is_error"] is True
    assert types[-1] == "session.status_idle"
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    _assert_log_is_whole(session)
    assert Session.objects.get(pk=session.pk).lease_owner is None


def test_an_interrupt_reaches_a_step_running_in_another_process_within_two_seconds(
    model: ScriptedModel,
) -> None:
    import time

    from tests.harness_helpers import send
    from tests.model_server import Reply

    model.push(Reply(blocks=[{"type": "text", "text": "slow " * 40}], chunk_delay=0.5))
    session = make_session()
    with celery_worker(_worker_env(model)):
        say(session, "hi")
        session_kick(session.pk)
        wait_for(lambda: len(model.requests) == 1, timeout=20)
        time.sleep(0.3)
        sent = time.monotonic()
        send(session, "user.interrupt", {})
        session_kick(session.pk)  # what events.send does; the step holding the lease notices first
        wait_for(lambda: _status(session) == "idle", timeout=5)
        elapsed = time.monotonic() - sent
    assert elapsed < 2.0
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert not events_of(session, "agent.message")
    _assert_log_is_whole(session)

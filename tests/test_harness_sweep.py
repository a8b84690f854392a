"""The sweeper's recovery of a crashed step: an expired lease is taken back with
session.status_rescheduled in the log, then the next step resumes the session."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from harness.services import session_reschedule_expired, sessions_sweep
from sessions.models import Event, Session
from sessions.services import NewEvent, events_append
from tests.harness_helpers import harness_model, log_types, make_session, say, step
from tests.model_server import ScriptedModel, text

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def _crashed_mid_request(*, expires_in: float = -1.0) -> Session:
    """The log a SIGKILLed worker leaves while waiting on the model: running, a span open, its lease held."""
    session = make_session()
    say(session, "hi")
    with transaction.atomic():
        locked = Session.objects.select_for_update().get(pk=session.pk)
        Event.objects.filter(session_id=session.pk).update(processed_at=timezone.now())
        assert locked.status == "running"  # say() set it
        events_append(session=locked, events=[NewEvent("span.model_request_start", {})])
        Session.objects.filter(pk=session.pk).update(
            lease_owner="dead-worker", lease_expires_at=timezone.now() + timedelta(seconds=expires_in)
        )
    return Session.objects.get(pk=session.pk)


def test_an_expired_lease_is_rescheduled_then_resumed(model: ScriptedModel) -> None:
    session = _crashed_mid_request()
    assert sessions_sweep() == [session.pk]
    row = Session.objects.get(pk=session.pk)
    assert row.status == "rescheduling" and row.lease_owner is None
    assert log_types(session)[-2:] == ["span.model_request_start", "session.status_rescheduled"]
    assert sessions_sweep() == [session.pk]  # still needs a step, but is not rescheduled twice
    assert log_types(session).count("session.status_rescheduled") == 1
    model.push(text("Back again."))
    step(session)
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "session.status_rescheduled",
        "span.model_request_end",  # the dead request's span, closed as an error
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_a_live_lease_is_left_alone(model: ScriptedModel) -> None:
    session = _crashed_mid_request(expires_in=30)
    assert sessions_sweep() == []
    assert Session.objects.get(pk=session.pk).lease_owner == "dead-worker"
    assert "session.status_rescheduled" not in log_types(session)


def test_a_lease_renewed_before_the_sweeper_acts_is_not_taken(model: ScriptedModel) -> None:
    session = _crashed_mid_request()
    # The sweeper read the expired lease; the step's keeper renewed it before the conditional UPDATE.
    Session.objects.filter(pk=session.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=30))
    assert session_reschedule_expired(session_id=session.pk, owner="dead-worker") is False
    assert Session.objects.get(pk=session.pk).status == "running"
    assert "session.status_rescheduled" not in log_types(session)
    assert session_reschedule_expired(session_id=session.pk, owner="another-owner") is False

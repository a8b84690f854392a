"""The harness's wait for a self-hosted worker's answer is woken by the append's push (Redis
pub/sub, or the embedded local bus), not by polling the log: a wake-up from another thread ends
it, previews do not, and a quiet wait reads the log only every half second as a safety net."""

import os
import secrets
import threading
from collections.abc import Iterator

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from selfhosted.harness import worker_answer_wait
from sessions import streaming
from sessions.services import NewEvent, events_append
from tests.harness_helpers import make_session

BACKENDS = [
    "local",
    pytest.param(
        "redis",
        marks=pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="REDIS_URL is not set"),
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request, settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = os.environ["REDIS_URL"] if request.param == "redis" else None
    settings.GALLEY_REDIS_PREFIX = "galley-test-" + secrets.token_hex(4)
    streaming._sync_client = None
    yield request.param
    streaming._sync_client = None


def _later(action, delay: float = 0.2) -> threading.Timer:  # type: ignore[no-untyped-def]
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


def test_a_wake_up_ends_the_wait_and_a_preview_does_not(backend: str) -> None:
    with streaming.wakeups("sesn_wake1") as wake:
        _later(lambda: streaming.publish_preview("sesn_wake1", None, {"type": "event_start"})).join()
        assert wake.wait(0.3) is False
        _later(lambda: streaming.notify("sesn_other", 4)).join()
        assert wake.wait(0.3) is False  # another session's wake-up
        timer = _later(lambda: streaming.notify("sesn_wake1", 7))
        assert wake.wait(30) is True
        timer.join()
    assert "sesn_wake1" not in streaming._local_threads


@pytest.mark.django_db(transaction=True)
def test_the_answer_wait_returns_on_the_appends_push_and_reads_the_log_rarely(backend: str, settings) -> None:
    session = make_session()
    after = session.last_seq

    def answer() -> None:
        with transaction.atomic():
            events_append(session=session, events=[NewEvent("user.message", {"content": []})])
        connection.close()

    settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS = 20
    timer = _later(answer, 0.3)
    assert worker_answer_wait(session.pk, after=after, cancel=threading.Event()) is True
    timer.join()

    # Nothing arrives: the wait gives up after its time, having read the log about twice a second
    # (it read it every 5 ms before it had a wake-up).
    settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS = 1
    after = type(session).objects.get(pk=session.pk).last_seq
    with CaptureQueriesContext(connection) as queries:
        assert worker_answer_wait(session.pk, after=after, cancel=threading.Event()) is False
    assert len([q for q in queries.captured_queries if "sessions_event" in q["sql"]]) <= 4


@pytest.mark.django_db(transaction=True)
def test_an_interrupt_ends_the_answer_wait(backend: str, settings) -> None:
    session = make_session()
    settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS = 20
    cancel = threading.Event()
    timer = _later(cancel.set, 0.2)
    assert worker_answer_wait(session.pk, after=session.last_seq, cancel=cancel) is True
    timer.join()

"""What a stream's read of the log costs in queries (each of a turn's wake-ups reads once), and that a
read woken for new events returns them with the head it read them under. Counted, not timed."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions import streaming
from sessions.models import Session
from tests.harness_helpers import log_types, make_session, say

pytestmark = pytest.mark.django_db(transaction=True)


def _read(session_id: str, after: int, woken: bool) -> tuple[list[str], int, str | None, int]:
    with CaptureQueriesContext(connection) as queries:
        rows, last, status = streaming._read_log(session_id, None, after, woken)
    return [row.type for row in rows], last, status, len(queries.captured_queries)


def test_a_woken_read_takes_the_new_events_and_the_head_in_one_query() -> None:
    session = make_session()
    say(session, "Hi")  # user.message, session.status_running
    assert _read(session.pk, 0, True) == (["user.message", "session.status_running"], 2, "running", 1)
    say(session, "More")
    assert _read(session.pk, 2, True) == (["user.message"], 3, "running", 1)


def test_a_read_with_nothing_new_reads_only_the_head() -> None:
    session = make_session()
    say(session, "Hi")
    assert _read(session.pk, 2, False) == ([], 2, "running", 1)
    # A wake-up whose events another read already took: the head says so after one more query.
    assert _read(session.pk, 2, True) == ([], 2, "running", 2)


def test_a_read_without_a_wake_up_still_finds_what_was_appended() -> None:
    session = make_session()
    say(session, "Hi")
    types, last, status, _queries = _read(session.pk, 0, False)
    assert (types, last, status) == (log_types(session), 2, "running")


def test_a_deleted_session_reads_as_gone() -> None:
    session = make_session()
    say(session, "Hi")
    Session.objects.filter(pk=session.pk).delete()
    for woken in (True, False):
        types, last, status, _queries = _read(session.pk, 0, woken)
        assert (types, last, status) == ([], 0, None)

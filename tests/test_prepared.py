"""galley/prepared.py: queries compiled once per process and hand-written inserts give what the
ORM would (field conversions, deferred fields, defaults), and refuse a query they cannot prepare."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Subquery
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from galley.prepared import prepared_exists, prepared_rows, rows_insert
from providers.models import ModelCall
from sessions.models import Event, Session
from tests.harness_helpers import make_session, say

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = ("id", "status", "stop_reason", "running_since", "budget", "last_seq")


def test_prepared_rows_match_the_orm_and_compile_once() -> None:
    session = make_session()
    since = timezone.now() - timedelta(seconds=3)
    Session.objects.filter(pk=session.pk).update(
        stop_reason={"type": "end_turn"}, running_since=since, budget={"type": "limit"}
    )
    builds: list[object] = []

    def build(pk: object) -> object:
        builds.append(pk)
        return Session.objects.only(*FIELDS).filter(pk=pk)

    first = prepared_rows("test.row", build, session.pk)
    again = prepared_rows("test.row", build, session.pk)
    orm = Session.objects.only(*FIELDS).get(pk=session.pk)
    assert len(builds) == 1  # compiled once, run twice
    for row in (first[0], again[0]):
        assert isinstance(row, Session)
        assert (row.pk, row.status, row.stop_reason, row.running_since, row.budget, row.last_seq) == (
            orm.pk,
            orm.status,
            orm.stop_reason,
            orm.running_since,
            orm.budget,
            orm.last_seq,
        )
        assert row.get_deferred_fields() == orm.get_deferred_fields()
    assert prepared_rows("test.row", build, "sesn_missing") == []


def test_several_values_and_constants_reach_their_places() -> None:
    session = make_session()
    for text in ("a", "b", "c"):
        say(session, text)

    def build(pk: object, seq: object) -> object:
        return Event.objects.filter(session_id=pk, seq__gt=seq, type__in=["user.message"]).order_by("seq")

    after_one = prepared_rows("test.events", build, session.pk, 1)
    assert [e.payload["content"][0]["text"] for e in after_one] == ["b", "c"]
    assert [e.seq for e in prepared_rows("test.events", build, session.pk, 0)] == [1, 3, 4]  # 2: running
    assert prepared_exists("test.exists", lambda pk: Event.objects.filter(session_id=pk)[:1], session.pk)
    assert not prepared_exists("test.exists", lambda pk: Event.objects.filter(session_id=pk)[:1], "sesn_none")


def test_a_value_the_orm_transforms_is_refused() -> None:
    with pytest.raises(ValueError, match="did not reach the statement"):
        prepared_rows("test.contains", lambda name: Session.objects.filter(title__icontains=name), "x")


def test_annotations_come_back_as_attributes() -> None:
    session = make_session()
    rows = prepared_rows(
        "test.annotate",
        lambda pk: (
            Session.objects.only("id")
            .annotate(env=Subquery(Session.objects.filter(pk=pk).values("environment_id")[:1]))
            .filter(pk=pk)
        ),
        session.pk,
    )
    assert rows[0].env == session.environment_id


def test_rows_insert_writes_what_save_would() -> None:
    session = make_session()
    before = timezone.now()
    calls = [
        ModelCall(session=session, provider="anthropic", model=f"m{i}", input_tokens=i) for i in range(3)
    ]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        rows_insert(calls)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1
    stored = list(ModelCall.objects.filter(session=session).order_by("model"))
    assert [(c.model, c.input_tokens, c.thread_id) for c in stored] == [
        ("m0", 0, ""),
        ("m1", 1, ""),
        ("m2", 2, ""),
    ]
    assert all(c.created_at >= before for c in stored)  # auto_now_add applied
    assert all(not c._state.adding for c in calls)

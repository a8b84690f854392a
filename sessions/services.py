"""Session workflows. The event log is insert-only and numbered per session; every append happens
in the same transaction as the state change it records (style.md 5)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from console.ids import new_id
from sessions import streaming
from sessions.models import Event, Session, SessionThread


@dataclass
class NewEvent:
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    processed: bool = True  # queued user events are stored with processed_at null
    thread: SessionThread | None = None
    id: str | None = None  # preassigned id (e.g. a preview's event id)


def events_append(*, session: Session | str, events: list[NewEvent]) -> list[Event]:
    """Append events to a session's log with consecutive seqs. Must run inside a transaction.

    The UPDATE on the session row is the allocator: on PostgreSQL it row-locks the session until
    commit, on SQLite the immediate transaction serializes writers, so seqs commit in order.
    """
    if not events:
        return []
    assert transaction.get_connection().in_atomic_block, "events_append needs a transaction"
    session_id = session if isinstance(session, str) else session.pk
    count = len(events)
    Session.objects.filter(pk=session_id).update(last_seq=F("last_seq") + count)
    last = Session.objects.values_list("last_seq", flat=True).get(pk=session_id)
    now = timezone.now()
    rows = [
        Event(
            id=item.id or new_id("sevt"),
            session_id=session_id,
            thread=item.thread,
            seq=last - count + 1 + index,
            type=item.type,
            payload=item.payload,
            processed_at=now if item.processed else None,
            created_at=now,
        )
        for index, item in enumerate(events)
    ]
    Event.objects.bulk_create(rows)
    transaction.on_commit(lambda: streaming.notify(session_id, last))
    if isinstance(session, Session):
        session.last_seq = last
    return rows


def events_mark_processed(*, session_id: str, event_ids: list[str], when: datetime | None = None) -> int:
    return Event.objects.filter(session_id=session_id, id__in=event_ids, processed_at=None).update(
        processed_at=when or timezone.now()
    )


def session_set_status(
    *,
    session: Session,
    status: str,
    stop_reason: dict[str, Any] | None = None,
    extra_events: list[NewEvent] | None = None,
) -> list[Event]:
    """Change a session's status and append the matching `session.status_*` event (in the caller's
    transaction). Running time is counted only while the status is `running` (spec 16)."""
    assert transaction.get_connection().in_atomic_block, "session_set_status needs a transaction"
    now = timezone.now()
    fields = {"status": status, "updated_at": now}
    if session.running_since is not None and status != "running":
        fields["active_seconds"] = session.active_seconds + (now - session.running_since).total_seconds()
        fields["running_since"] = None
    if status == "running" and session.running_since is None:
        fields["running_since"] = now
    if status == "idle":
        fields["stop_reason"] = stop_reason or {"type": "end_turn"}
    Session.objects.filter(pk=session.pk).update(**fields)
    for name, value in fields.items():
        setattr(session, name, value)
    event_type = {
        "running": "session.status_running",
        "idle": "session.status_idle",
        "rescheduling": "session.status_rescheduled",
        "terminated": "session.status_terminated",
    }[status]
    payload: dict[str, Any] = {}
    if status == "idle":
        payload["stop_reason"] = fields["stop_reason"]
    return events_append(session=session, events=[*(extra_events or []), NewEvent(event_type, payload)])

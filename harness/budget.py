"""Session budgets (spec 5, 7.1, 7.4, 16): `budget: {type: "limit", max_list_cost: {amount,
currency}}` is checked before every model request of the session (the coordinator's, its child
threads' and the outcome grader's). When the cost so far has reached the limit, the request is not
made: a `session.usage` event and `session.status_idle` with `stop_reason: budget_reached` are
appended and the session waits until `sessions.update` raises (or removes) the budget.

The cost is the session's list cost in cents (tokens, runtime while running, web searches), the
same figure `session.usage.list_cost` shows."""

from typing import Any

from django.utils import timezone

from api.errors import bad_request
from harness import pricing
from sessions.models import Event, Session, SessionThread, Status
from sessions.services import NewEvent, events_append, session_list_cost, session_set_status

BUDGET_REACHED = {"type": "budget_reached"}


def check_budgetable(snapshot: dict[str, Any]) -> None:
    """A budget needs a list price for every model the session may call: the agent's and its
    roster members'. A model priced only by the table's catch-all `default` has none."""
    models = [snapshot.get("model")]
    roster = snapshot.get("multiagent")
    if isinstance(roster, dict):
        models += [m.get("model") for m in roster.get("agents", []) if isinstance(m, dict)]
    for model in models:
        model_id = str(model.get("id") if isinstance(model, dict) else model or "")
        if not pricing.has_list_price(model_id):
            raise bad_request(
                f"budget: model {model_id!r} has no list price on this server, so a budget cannot be "
                "enforced for it (add it to GALLEY_PRICES_JSON).",
                error_code="model_not_budgetable",
            )


def spent_cents(session: Session) -> int:
    return int(session_list_cost(session)["amount"])


def limit_cents(budget: dict[str, Any] | None) -> int | None:
    if not budget:
        return None
    return int(budget["max_list_cost"]["amount"])


# What the check reads of the session row; a caller's (locked) row that holds them costs no query.
BUDGET_FIELDS = ("budget", "token_cost_micros", "web_search_requests", "active_seconds", "running_since")


def budget_reached(session: Session) -> bool:
    if any(name in session.get_deferred_fields() for name in BUDGET_FIELDS):
        session = Session.objects.only(*BUDGET_FIELDS).get(pk=session.pk)
    limit = limit_cents(session.budget)
    return limit is not None and spent_cents(session) >= limit


def budget_stop(*, session: Session, thread: SessionThread | None = None, child: Any = None) -> bool:
    """Before a model request, in the caller's transaction with the session row locked. True
    when the budget is spent: the pause is recorded and the request must not be made."""
    if not budget_reached(session):
        return False
    if child is not None:
        child.set_status(session, Status.IDLE, BUDGET_REACHED)
    _pause(session)
    return True


def budget_holds(*, session: Session, queued: list[Event]) -> bool:
    """A session paused at its budget stays paused while the budget is still spent. Messages
    queued before the pause join the context (they are seen when the session resumes)."""
    if session.status != Status.IDLE or (session.stop_reason or {}).get("type") != "budget_reached":
        return False
    if not budget_reached(session):
        return False
    waiting = [e.pk for e in queued if e.type in ("user.message", "system.message")]
    if waiting:
        now = timezone.now()
        Event.objects.filter(pk__in=waiting, processed_at=None).update(processed_at=now)
        for event in queued:
            if event.pk in waiting:
                event.processed_at = now
    return True


def _pause(session: Session) -> None:
    from sessions.services import _usage_wire

    full = Session.objects.get(pk=session.pk)
    events_append(
        session=session,
        events=[NewEvent("session.usage", {"usage": _usage_wire(full), "budget": full.budget})],
    )
    session_set_status(session=session, status=Status.IDLE, stop_reason=BUDGET_REACHED)

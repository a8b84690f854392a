"""Workspace budgets: what an admin sets in the console, the banner every console page shows once
month-to-date spend passes the warning threshold, and the default budget of new sessions."""

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from accounts.models import Workspace
from api.errors import ApiError
from costs.models import WorkspaceBudget


@dataclass(frozen=True)
class BudgetStatus:
    level: str  # "ok", "warn" or "over"
    spent_micros: int
    limit_cents: int
    warn_percent: int

    @property
    def percent(self) -> int:
        return int(self.spent_micros * 100 // (self.limit_cents * 10_000))


def budget_get(*, workspace: Workspace) -> WorkspaceBudget | None:
    return WorkspaceBudget.objects.filter(workspace=workspace).first()


def budget_set(
    *,
    workspace: Workspace,
    monthly_usd: str,
    session_usd: str,
    warn_percent: str,
    user: Any = None,
) -> WorkspaceBudget:
    """Save the admin form; a blank amount means no such budget. Raises ApiError naming the field."""
    from console.forms import cents_from_usd

    monthly = cents_from_usd(monthly_usd, "monthly") if monthly_usd.strip() else None
    session = cents_from_usd(session_usd, "session") if session_usd.strip() else None
    text = warn_percent.strip().removesuffix("%").strip() or "80"
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise ApiError(400, "warn_percent: enter a whole percentage from 1 to 100.")
    budget, _created = WorkspaceBudget.objects.update_or_create(
        workspace=workspace,
        defaults={
            "monthly_cents": monthly,
            "session_default_cents": session,
            "warn_percent": int(text),
            "updated_by": user if getattr(user, "is_authenticated", False) else None,
            "updated_at": timezone.now(),
        },
    )
    return budget


def month_start(now: dt.datetime | None = None) -> dt.datetime:
    now = now or timezone.now()
    return now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def budget_status(*, workspace: Workspace) -> BudgetStatus | None:
    """Month-to-date spend (sessions created this calendar month, UTC, as analytics counts them)
    against the monthly budget; None when the workspace has none."""
    from console.analytics import spend_since

    budget = budget_get(workspace=workspace)
    if budget is None or not budget.monthly_cents:
        return None
    spent = spend_since(workspace, month_start())
    limit_micros = budget.monthly_cents * 10_000
    if spent >= limit_micros:
        level = "over"
    elif spent * 100 >= limit_micros * budget.warn_percent:
        level = "warn"
    else:
        level = "ok"
    return BudgetStatus(
        level=level, spent_micros=spent, limit_cents=budget.monthly_cents, warn_percent=budget.warn_percent
    )


def session_budget_default(*, workspace: Workspace) -> dict[str, Any] | None:
    """The budget a session created without one gets (API, console and deployments alike)."""
    budget = budget_get(workspace=workspace)
    return budget.session_budget() if budget is not None else None


def session_starter_record(*, session: Any, user: Any) -> None:
    """Remember who started a session in the console (in the transaction that creates it)."""
    from costs.models import SessionStarter

    if getattr(user, "is_authenticated", False):
        SessionStarter.objects.create(session=session, user=user)

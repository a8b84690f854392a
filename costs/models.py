from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Workspace


class WorkspaceBudget(models.Model):
    """An admin's spending limits for a workspace, in US cents. The monthly budget warns (a banner on
    every console page past `warn_percent`, another past 100%); the per-session default becomes the
    `budget` of sessions created without one, which the harness enforces."""

    workspace = models.OneToOneField(
        Workspace, primary_key=True, on_delete=models.CASCADE, related_name="cost_budget"
    )
    monthly_cents = models.PositiveBigIntegerField(null=True, blank=True)
    session_default_cents = models.PositiveBigIntegerField(null=True, blank=True)
    warn_percent = models.PositiveSmallIntegerField(default=80)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    def session_budget(self) -> dict[str, object] | None:
        """The wire `budget` (spec 5) a new session gets when it names none."""
        if not self.session_default_cents:
            return None
        return {
            "type": "limit",
            "max_list_cost": {"amount": str(self.session_default_cents), "currency": "USD"},
        }


class SessionStarter(models.Model):
    """The console user who started a session, for cost per user (a session made through the API
    counts under the owner of its API key)."""

    session = models.OneToOneField(
        "agent_sessions.Session", primary_key=True, on_delete=models.CASCADE, related_name="starter"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

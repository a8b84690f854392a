"""Deployments (an agent bound to an environment, initial events and an optional cron schedule) and
their runs, one per trigger."""

from typing import ClassVar

from django.db import models
from django.utils import timezone

from accounts.models import Workspace


class DeploymentStatus(models.TextChoices):
    ACTIVE = "active"
    PAUSED = "paused"


class Deployment(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=255)
    description = models.TextField(null=True, blank=True)
    # Ids, not foreign keys: a deleted environment must not be blocked by a deployment naming it;
    # the next run records environment_not_found instead.
    agent_id = models.CharField(max_length=64)
    agent_version = models.PositiveIntegerField()
    environment_id = models.CharField(max_length=64)
    initial_events = models.JSONField(default=list)
    metadata = models.JSONField(default=dict)
    resources = models.JSONField(default=list)  # as echoed: write-only tokens removed
    resources_ciphertext = models.TextField(blank=True, default="")  # the full list, vault-encrypted
    vault_ids = models.JSONField(default=list)
    budget = models.JSONField(null=True, blank=True)
    # An explicit `budget: null` (create or update): the sessions it creates are uncapped. Without a
    # budget and without this, they get the workspace's default session budget (costs/), as a
    # sessions.create that omits the field does.
    budget_uncapped = models.BooleanField(default=False)
    schedule = models.JSONField(null=True, blank=True)  # {type: "cron", expression, timezone}
    # The next due time of the schedule (UTC), claimed by exactly one firing (deployments/services.py).
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.ACTIVE
    )
    paused_reason = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["workspace", "created_at", "id"]),
            models.Index(fields=["status", "next_fire_at"]),
        ]


class DeploymentRun(models.Model):
    """One trigger of a deployment: the session it created, or why it could not."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="runs")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="deployment_runs")
    agent = models.JSONField()  # {type: "agent", id, version} at fire time
    session_id = models.CharField(max_length=64, null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    trigger_type = models.CharField(max_length=16)  # schedule | manual
    scheduled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["workspace", "created_at", "id"]),
            models.Index(fields=["deployment", "created_at", "id"]),
        ]
        constraints: ClassVar = [
            # At most one run per (deployment, due time): the backstop of the claim in services.
            models.UniqueConstraint(
                fields=["deployment", "scheduled_at"],
                condition=models.Q(scheduled_at__isnull=False),
                name="uniq_deployment_run_per_due_time",
            )
        ]

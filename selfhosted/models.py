"""Environment keys and the environment work queue of self_hosted environments (spec 4)."""

import hashlib
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from agents.models import Environment


def hash_secret(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class EnvironmentKey(models.Model):
    """A worker's standing credential for one environment. Only the SHA-256 of the raw key is stored."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=255)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class WorkState(models.TextChoices):
    QUEUED = "queued"
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


LIVE_STATES = (WorkState.QUEUED, WorkState.STARTING, WorkState.ACTIVE)


class WorkKind(models.TextChoices):
    """The item's `data.type`. A healthcheck asks whether any worker is polling: the worker acks
    it, skips it and stops it, and the console shows who did and how long it took."""

    SESSION = "session"
    HEALTHCHECK = "healthcheck"


class WorkItem(models.Model):
    """One unit of work: a session that needs a worker. The database is the queue; every state
    change is a conditional UPDATE on (id, generation, state)."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="work_items")
    kind = models.CharField(max_length=16, choices=WorkKind.choices, default=WorkKind.SESSION)
    # Not a foreign key: the item outlives a deleted session (it is stopped, and a worker still
    # holding it must get a clean answer).
    session_id = models.CharField(max_length=64, db_index=True)  # "" for a healthcheck
    state = models.CharField(max_length=16, choices=WorkState.choices, default=WorkState.QUEUED)
    metadata = models.JSONField(default=dict)
    # Bumped each time a poll hands the item out: a sessions token names the generation it was
    # issued for, so the token of a worker whose item was reclaimed stops working.
    generation = models.IntegerField(default=0)
    token_hash = models.CharField(max_length=64, blank=True, default="")
    worker_id = models.CharField(max_length=255, blank=True, default="")
    last_heartbeat = models.CharField(max_length=40, blank=True, default="")  # the exact string sent back
    ttl_seconds = models.IntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    polled_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    latest_heartbeat_at = models.DateTimeField(null=True, blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # A healthcheck no worker stopped within GALLEY_HEALTHCHECK_TIMEOUT_SECONDS: the queue stopped it.
    timed_out = models.BooleanField(default=False)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["environment", "state", "created_at"])]


class WorkerPoll(models.Model):
    """The last poll of each worker id (`Anthropic-Worker-ID`), for stats and the console."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="worker_polls")
    worker_id = models.CharField(max_length=255)
    last_polled_at = models.DateTimeField(default=timezone.now)
    polls = models.BigIntegerField(default=0)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["environment", "worker_id"], name="uniq_worker_poll")
        ]

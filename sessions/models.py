from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Workspace
from agents.models import Agent, Environment
from api.wire import iso


class Status(models.TextChoices):
    IDLE = "idle", "Idle"
    RUNNING = "running", "Running"
    RESCHEDULING = "rescheduling", "Rescheduling"
    TERMINATED = "terminated", "Terminated"


class Session(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="sessions")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="sessions")
    agent_version = models.PositiveIntegerField()
    agent_snapshot = models.JSONField()  # the wire `session.agent`, fixed at creation (or by update)
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="sessions")
    title = models.CharField(max_length=512, null=True, blank=True)
    metadata = models.JSONField(default=dict)
    vault_ids = models.JSONField(default=list)
    budget = models.JSONField(null=True, blank=True)
    deployment_id = models.CharField(max_length=64, null=True, blank=True, db_index=True)  # deployments/

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IDLE)
    stop_reason = models.JSONField(null=True, blank=True)  # last idle's stop_reason

    # Usage counters (spec 5 `usage`); cost is derived from them and the price table.
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cache_creation_5m_tokens = models.BigIntegerField(default=0)
    cache_creation_1h_tokens = models.BigIntegerField(default=0)
    web_search_requests = models.BigIntegerField(default=0)
    web_fetch_requests = models.BigIntegerField(default=0)
    token_cost_micros = models.BigIntegerField(default=0)  # USD millionths, priced per model call
    active_seconds = models.FloatField(default=0.0)  # closed running intervals
    running_since = models.DateTimeField(null=True, blank=True)  # open running interval

    # The event log's sequence allocator: the last seq handed out for this session.
    last_seq = models.BigIntegerField(default=0)
    # The log's size as its appends counted it (bounded by GALLEY_SESSION_LOG_BYTES).
    log_bytes = models.BigIntegerField(default=0)

    # Harness lease: exactly one step runs per session (claimed by a conditional UPDATE).
    lease_owner = models.CharField(max_length=128, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    # Compaction: events up to context_summary_seq are replaced in the model's context by the summary.
    context_summary = models.TextField(null=True, blank=True)
    context_summary_seq = models.BigIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["workspace", "created_at", "id"]),
            models.Index(fields=["status", "lease_expires_at"]),
            models.Index(fields=["agent", "agent_version"]),
        ]

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

    def active_seconds_now(self) -> float:
        total = self.active_seconds
        if self.running_since is not None:
            total += max(0.0, (timezone.now() - self.running_since).total_seconds())
        return total


class SessionThread(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="threads")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    agent_name = models.CharField(max_length=256)
    agent_snapshot = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IDLE)
    stop_reason = models.JSONField(null=True, blank=True)
    active_seconds = models.FloatField(default=0.0)
    running_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)
    # A child thread's own lease, held by the worker running its step (the primary thread's lease
    # is the session's: the session row is the primary thread's state).
    lease_owner = models.CharField(max_length=128, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["session", "created_at", "id"]),
            models.Index(fields=["status", "lease_expires_at"]),
        ]


class Event(models.Model):
    """One entry of a session's append-only log, numbered per session."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="events")
    thread = models.ForeignKey(
        SessionThread, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    seq = models.BigIntegerField()
    type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)  # the wire body without id, type and processed_at
    processed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [models.UniqueConstraint(fields=["session", "seq"], name="uniq_event_seq")]
        indexes: ClassVar = [
            models.Index(fields=["session", "type", "seq"]),
            models.Index(fields=["type", "created_at"]),
        ]

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "type": self.type}
        body.update(self.payload)
        body["processed_at"] = iso(self.processed_at)
        return body

"""Webhook endpoints, the outbox of webhook events, and their deliveries and attempts."""

from datetime import datetime
from typing import ClassVar

from django.db import models
from django.utils import timezone

from accounts.models import Workspace
from vaults import crypto


class EndpointState(models.TextChoices):
    ENABLED = "enabled"
    DISABLED = "disabled"


class WebhookEndpoint(models.Model):
    """A receiver URL in one workspace. Signing secrets are encrypted at rest with the vault keys;
    after a rotation the previous secret still signs until `previous_secret_expires_at`."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="webhook_endpoints")
    name = models.CharField(max_length=255, blank=True, default="")
    description = models.TextField(blank=True, default="")
    url = models.CharField(max_length=2048)
    enabled_events = models.JSONField(default=list)
    state = models.CharField(max_length=16, choices=EndpointState.choices, default=EndpointState.ENABLED)
    disabled_reason = models.CharField(max_length=512, blank=True, default="")
    secret_ciphertext = models.TextField()
    previous_secret_ciphertext = models.TextField(blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at", "id"])]

    def subscribes_to(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a delivery now: the current one, and the previous one during its
        grace period. Plaintext only at the moment of signing."""
        secrets = [crypto.decrypt(self.secret_ciphertext)["secret"]]
        if (
            self.previous_secret_ciphertext
            and self.previous_secret_expires_at is not None
            and self.previous_secret_expires_at > now
        ):
            secrets.append(crypto.decrypt(self.previous_secret_ciphertext)["secret"])
        return secrets


class WebhookEvent(models.Model):
    """One webhook event, written in the transaction of the state change it reports (the outbox).
    `id` is the envelope's id and the `webhook-id` header, the same on every retry."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="webhook_events")
    type = models.CharField(max_length=64)
    data = models.JSONField()
    # Deliveries of events with the same key (a session id, else the resource id) go out in order.
    ordering_key = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at"])]


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every retry of the schedule failed


class WebhookDelivery(models.Model):
    """One event to one endpoint. The auto id orders deliveries within (endpoint, ordering_key)."""

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    ordering_key = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A worker attempting this delivery holds it until then; a crashed worker's claim expires.
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["endpoint", "ordering_key", "state", "id"]),
            models.Index(fields=["endpoint", "id"]),
        ]


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.IntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.IntegerField(null=True, blank=True)
    latency_ms = models.IntegerField(default=0)
    response_excerpt = models.TextField(blank=True, default="")
    error = models.CharField(max_length=512, blank=True, default="")
    next_retry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["delivery", "number"])]

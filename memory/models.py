"""Memory stores, their memories and the memories' immutable versions (spec 13).

A memory row holds the current content of one path; every change to it inserts one
MemoryVersion. Versions outlive their memory (a deleted memory leaves a `deleted` version) and
change only when redacted."""

from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

from accounts.models import Workspace


class MemoryStore(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memory_stores")
    name = models.CharField(max_length=255)
    description = models.CharField(max_length=1024, blank=True, default="")
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at", "id"])]

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class Memory(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    store = models.ForeignKey(MemoryStore, on_delete=models.CASCADE, related_name="memories")
    path = models.CharField(max_length=1024)
    content = models.TextField(blank=True, default="")
    content_sha256 = models.CharField(max_length=64)
    content_size_bytes = models.PositiveIntegerField(default=0)
    memory_version_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["store", "path"], name="uniq_memory_path"),
        ]


class MemoryVersion(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    store = models.ForeignKey(MemoryStore, on_delete=models.CASCADE, related_name="versions")
    memory_id = models.CharField(max_length=64)  # not a foreign key: versions outlive the memory
    operation = models.CharField(max_length=16)  # created | modified | deleted
    path = models.CharField(max_length=1024, null=True, blank=True)
    content = models.TextField(null=True, blank=True)
    content_sha256 = models.CharField(max_length=64, null=True, blank=True)
    content_size_bytes = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.JSONField(null=True, blank=True)  # the wire actor
    # The actor's id, denormalized for the list filters.
    actor_session_id = models.CharField(max_length=64, null=True, blank=True)
    actor_api_key_id = models.CharField(max_length=64, null=True, blank=True)
    actor_service_account_id = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    redacted_at = models.DateTimeField(null=True, blank=True)
    redacted_by = models.JSONField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["store", "created_at", "id"]),
            models.Index(fields=["store", "memory_id", "created_at"]),
        ]

    def actor(self) -> dict[str, Any] | None:
        return self.created_by


class SessionMemoryStore(models.Model):
    """A memory store attached to a session at create (spec 5, 6): a snapshot of its name and
    description, and what the session's sandbox last synced with the store."""

    session = models.ForeignKey(
        "agent_sessions.Session", on_delete=models.CASCADE, related_name="memory_stores"
    )
    # A deleted store stays listed on the session (its snapshot); syncing it stops.
    store = models.ForeignKey(MemoryStore, null=True, on_delete=models.SET_NULL, related_name="attachments")
    memory_store_id = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField()
    access = models.CharField(max_length=16)  # read_write | read_only
    instructions = models.TextField(null=True, blank=True)
    name = models.CharField(max_length=255)
    description = models.CharField(max_length=1024, blank=True, default="")
    mount_path = models.CharField(max_length=1024)
    # {memory path: content_sha256} as last written to or read from the sandbox's copy.
    base = models.JSONField(default=dict)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["session", "mount_path"], name="uniq_session_memory_mount"),
        ]
        indexes: ClassVar = [models.Index(fields=["memory_store_id"])]

from datetime import datetime
from pathlib import Path
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Workspace


def files_root() -> Path:
    return Path(settings.DATA_DIR) / "files"


class File(models.Model):
    """An uploaded file, or one captured from a session's outputs. Bytes live on disk under the
    data dir (see `path`); the row holds the metadata."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=255)
    mime_type = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    downloadable = models.BooleanField(default=True)
    # A session id for files captured from that session's outputs; null for uploads.
    scope_id = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["workspace", "created_at", "id"]),
            models.Index(fields=["workspace", "scope_id", "created_at", "id"]),
            models.Index(fields=["expires_at"]),
        ]

    @property
    def path(self) -> Path:
        return files_root() / self.workspace_id / self.id

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class ResourceType(models.TextChoices):
    FILE = "file", "File"
    GITHUB_REPOSITORY = "github_repository", "GitHub repository"


class SessionResource(models.Model):
    """Something mounted into a session's sandbox: an uploaded file or a git repository."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    session = models.ForeignKey("agent_sessions.Session", on_delete=models.CASCADE, related_name="resources")
    type = models.CharField(max_length=32, choices=ResourceType.choices)
    # Deleting a file does not unmount the copy a session already has, so the resource keeps
    # naming the file id after the row is gone: no database constraint, no cascade.
    file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    url = models.CharField(max_length=2048, null=True, blank=True)
    mount_path = models.CharField(max_length=1024)
    checkout = models.JSONField(null=True, blank=True)
    # vaults.crypto token of {"token": ...}; never returned on the wire.
    authorization_token_encrypted = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["session", "created_at", "id"])]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["session", "mount_path"], name="uniq_session_resource_mount"),
        ]

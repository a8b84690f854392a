from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

from accounts.models import Workspace
from vaults import crypto


class Vault(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="vaults")
    display_name = models.CharField(max_length=255)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at", "id"])]


class Credential(models.Model):
    """A credential. `auth_public` is what responses show; secrets live only in `secret_ciphertext`."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    vault = models.ForeignKey(Vault, on_delete=models.CASCADE, related_name="credentials")
    display_name = models.CharField(max_length=255, null=True, blank=True)
    auth_type = models.CharField(max_length=32)
    auth_public = models.JSONField()
    secret_ciphertext = models.TextField()
    mcp_server_url = models.CharField(max_length=2048, null=True, blank=True)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["vault", "created_at", "id"]),
            models.Index(fields=["vault", "mcp_server_url"]),
        ]

    def secret(self) -> dict[str, Any]:
        """Plaintext secret fields. Call only at the moment of use (MCP call, egress injection)."""
        return crypto.decrypt(self.secret_ciphertext)

    def set_secret(self, values: dict[str, Any]) -> None:
        self.secret_ciphertext = crypto.encrypt(values)

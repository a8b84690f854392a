import hashlib
import secrets
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from api.ids import new_id

API_KEY_PREFIX = "sk-galley-"


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class Workspace(models.Model):
    id = models.CharField(primary_key=True, max_length=64, editable=False)
    name = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)

    def save(self, *args: object, **kwargs: object) -> None:
        if not self.id:
            self.id = new_id("wrkspc")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    EDITOR = "editor", "Editor"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    """A console user's role in a workspace."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["user", "workspace"], name="uniq_membership")
        ]

    def can_edit(self) -> bool:
        return self.role in (Role.ADMIN, Role.EDITOR)

    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class ApiKey(models.Model):
    """An API key. Only the SHA-256 of the raw key is stored; the raw key is shown once."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=255)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    @classmethod
    def generate(cls, *, workspace: Workspace, name: str, created_by: object = None) -> tuple["ApiKey", str]:
        raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(
            id=new_id("apikey"),
            workspace=workspace,
            name=name,
            key_hash=hash_key(raw),
            hint=raw[-4:],
            created_by=created_by,
        )
        return key, raw

    @classmethod
    def authenticate(cls, raw: str) -> "ApiKey | None":
        if not raw:
            return None
        from galley.prepared import prepared_rows

        # Every API request starts here: compiled once per process (galley/prepared.py). The
        # workspace comes with only its id loaded, which is all most requests read; any other field
        # is fetched when first read, as for a deferred field.
        keys = prepared_rows(
            "accounts.api_key", lambda h: cls.objects.filter(key_hash=h, revoked_at=None)[:1], hash_key(raw)
        )
        if not keys:
            return None
        key: ApiKey = keys[0]
        key.workspace = Workspace.from_db(key._state.db, ["id"], [key.workspace_id])
        now = timezone.now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            # Throttled so a busy key does not turn every read into a write.
            cls.objects.filter(pk=key.pk).update(last_used_at=now)
        return key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

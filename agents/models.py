from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

from accounts.models import Workspace


class Agent(models.Model):
    """An agent's identity. Its definition lives in immutable AgentVersion rows."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=256)  # the latest version's name, kept for lists and search
    current_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at", "id"])]

    def latest(self) -> "AgentVersion":
        return self.versions.get(version=self.current_version)

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class AgentVersion(models.Model):
    """One immutable snapshot of an agent's definition. Rows are only ever inserted."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    # The resolved definition exactly as the wire shows it, minus id/version/timestamps:
    # name, description, system, model, tools, mcp_servers, skills, multiagent,
    # execution_identity, metadata.
    definition = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["agent", "version"], name="uniq_agent_version"),
        ]

    @property
    def name(self) -> str:
        return str(self.definition.get("name", ""))

    @property
    def model_id(self) -> str:
        return str(self.definition.get("model", {}).get("id", ""))

    def snapshot(self) -> dict[str, Any]:
        """The session-side snapshot of this version (spec 5: session.agent)."""
        d = self.definition
        return {
            "type": "agent",
            "id": self.agent_id,
            "version": self.version,
            "name": d["name"],
            "description": d.get("description"),
            "system": d.get("system"),
            "model": d["model"],
            "tools": d.get("tools", []),
            "mcp_servers": d.get("mcp_servers", []),
            "skills": d.get("skills", []),
            "multiagent": d.get("multiagent"),
            "execution_identity": d.get("execution_identity", {"type": "service_account"}),
        }


class BuildStatus(models.TextChoices):
    READY = "ready", "Ready"
    BUILDING = "building", "Building"
    FAILED = "failed", "Failed"


class Environment(models.Model):
    """Where a session's tools run. Not versioned: changes apply to sandboxes created later."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="environments")
    name = models.CharField(max_length=256)
    description = models.TextField(null=True, blank=True)
    config = models.JSONField()  # fully resolved, as the wire shows it
    metadata = models.JSONField(default=dict)
    scope = models.CharField(max_length=16, default="organization")
    # Package builds (sandbox issue): status of the cached prefix for config.packages.
    build_status = models.CharField(max_length=16, choices=BuildStatus.choices, default=BuildStatus.READY)
    build_log = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at", "id"])]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["workspace", "name"], name="uniq_environment_name"),
        ]

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

    @property
    def is_self_hosted(self) -> bool:
        return self.config.get("type") == "self_hosted"

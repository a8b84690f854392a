from pathlib import Path
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Workspace


def skills_root() -> Path:
    return Path(settings.DATA_DIR) / "skills"


class Skill(models.Model):
    """A custom skill of a workspace: a name (the kebab-case slug every version shares, unique in the
    workspace) and its versions. Built-in skills are not rows; see `skills.builtin`."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="skills")
    name = models.CharField(max_length=64)
    display_name = models.CharField(max_length=255)
    latest_version_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["workspace", "created_at", "id"])]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["workspace", "name"], name="uniq_skill_name_per_workspace"),
        ]


class SkillVersion(models.Model):
    """One immutable upload of a skill. Its files live in a zip archive on disk (see `archive_path`),
    written and renamed into place before the row is inserted."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    skill = models.ForeignKey(Skill, on_delete=models.CASCADE, related_name="versions")
    name = models.CharField(max_length=64)
    description = models.TextField()
    file_count = models.IntegerField()
    size_bytes = models.BigIntegerField()  # uncompressed
    sha256 = models.CharField(max_length=64)  # of the archive
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["skill", "created_at", "id"])]

    @property
    def archive_path(self) -> Path:
        return skills_root() / self.skill.workspace_id / self.skill_id / f"{self.id}.zip"

"""Wire shapes of skills and skill versions (spec 11), named after the SDK's types."""

from typing import Literal

from ninja import Schema


class SkillSource(Schema):
    type: Literal["custom", "anthropic", "anthropic_example", "plugin"]


class Skill(Schema):
    id: str
    type: Literal["skill"]
    display_name: str
    latest_version_id: str
    source: SkillSource
    created_at: str
    updated_at: str


class SkillList(Schema):
    data: list[Skill]
    next_page: str | None


class DeletedSkill(Schema):
    id: str
    type: Literal["skill_deleted"]


class SkillVersion(Schema):
    id: str
    type: Literal["skill_version"]
    skill_id: str
    name: str
    description: str
    created_at: str


class SkillVersionList(Schema):
    data: list[SkillVersion]
    next_page: str | None


class DeletedSkillVersion(Schema):
    id: str
    type: Literal["skill_version_deleted"]

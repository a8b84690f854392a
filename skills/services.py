"""Skills (spec 11): custom skills and their versions, Galley's built-in skills, and the resolution of
the skill references on an agent.

A version's archive is written to a temp file beside its final place and renamed there before its row
is inserted; a failed insert removes it. Deleting removes rows first and archives after commit."""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Workspace
from api.errors import ApiError, bad_request, conflict, not_found
from api.ids import has_prefix, new_id
from api.pagination import Cursor, Page, check_limit, decode, encode, paginate
from api.wire import iso
from skills import bundle as b
from skills.catalog import BUILTIN_CREATED_AT, BuiltinSkill, builtin_archive, builtin_get, builtin_ids
from skills.models import Skill, SkillVersion

LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 1000
SOURCES = ("custom", "anthropic")
DISPLAY_NAME_MAX = 255
MAX_SKILLS_PER_SESSION = 20


# --- wire shapes ---------------------------------------------------------------------------------------


def skill_wire(skill: Skill | BuiltinSkill) -> dict[str, Any]:
    if isinstance(skill, BuiltinSkill):
        return {
            "id": skill.id,
            "type": "skill",
            "display_name": skill.display_name,
            "latest_version_id": skill.version,
            "source": {"type": "anthropic"},
            "created_at": iso(BUILTIN_CREATED_AT),
            "updated_at": iso(BUILTIN_CREATED_AT),
        }
    return {
        "id": skill.id,
        "type": "skill",
        "display_name": skill.display_name,
        "latest_version_id": skill.latest_version_id,
        "source": {"type": "custom"},
        "created_at": iso(skill.created_at),
        "updated_at": iso(skill.updated_at),
    }


@dataclass(frozen=True)
class VersionView:
    """A version of either kind, as the API and the sandbox see it."""

    id: str
    skill_id: str
    name: str
    description: str
    created_at: Any
    row: SkillVersion | None = None
    builtin: BuiltinSkill | None = None


def version_wire(version: VersionView) -> dict[str, Any]:
    return {
        "id": version.id,
        "type": "skill_version",
        "skill_id": version.skill_id,
        "name": version.name,
        "description": version.description,
        "created_at": iso(version.created_at),
    }


def _view(row: SkillVersion) -> VersionView:
    return VersionView(
        id=row.id,
        skill_id=row.skill_id,
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        row=row,
    )


def _builtin_view(skill: BuiltinSkill) -> VersionView:
    return VersionView(
        id=skill.version,
        skill_id=skill.id,
        name=skill.bundle.name,
        description=skill.bundle.description,
        created_at=BUILTIN_CREATED_AT,
        builtin=skill,
    )


# --- reading uploads ------------------------------------------------------------------------------------


def bundle_from_uploads(uploads: list[tuple[str, int, IO[bytes]]]) -> b.Bundle:
    """Multipart parts -> a checked bundle; raises before anything is stored."""
    return b.build_bundle(b.read_uploads(uploads))


def _check_display_name(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if len(text) > DISPLAY_NAME_MAX:
        raise bad_request(f"display_name: must be at most {DISPLAY_NAME_MAX} characters.")
    if "\n" in text or "\r" in text:
        raise bad_request("display_name: must be a single line.")
    return text


def _write_archive(*, final: Path, data: bytes) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _name_taken(name: str) -> ApiError:
    return conflict(
        f"name: a skill named {name!r} already exists in this workspace"
        + (" (it is a built-in skill)." if name in builtin_ids() else "."),
        error_code="skill_name_taken",
    )


def _insert_version(*, skill: Skill, bundle: b.Bundle, now: Any) -> SkillVersion:
    """Write the archive, then insert the row (inside the caller's transaction)."""
    archive = bundle.archive()
    row = SkillVersion(
        id=new_id("skillver"),
        skill=skill,
        name=bundle.name,
        description=bundle.description,
        file_count=len(bundle.files),
        size_bytes=bundle.size_bytes,
        sha256=b.sha256(archive),
        created_at=now,
    )
    path = row.archive_path
    _write_archive(final=path, data=archive)
    try:
        row.save(force_insert=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return row


def name_in_use(*, workspace: Workspace, name: str) -> bool:
    # A first look for a clear answer; the unique (workspace, name) constraint decides races.
    return name in builtin_ids() or Skill.objects.filter(workspace=workspace, name=name).exists()


def skill_create(
    *, workspace: Workspace, uploads: list[tuple[str, int, IO[bytes]]], display_name: str | None
) -> Skill:
    display = _check_display_name(display_name)
    bundle = bundle_from_uploads(uploads)
    if name_in_use(workspace=workspace, name=bundle.name):
        raise _name_taken(bundle.name)
    now = timezone.now()
    skill = Skill(
        id=new_id("skill"),
        workspace=workspace,
        name=bundle.name,
        display_name=display or bundle.name,
        latest_version_id="",
        created_at=now,
        updated_at=now,
    )
    written: list[Path] = []
    try:
        with transaction.atomic():
            skill.save(force_insert=True)
            row = _insert_version(skill=skill, bundle=bundle, now=now)
            written.append(row.archive_path)
            skill.latest_version_id = row.id
            skill.save(update_fields=["latest_version_id"])
    except IntegrityError:
        for path in written:
            path.unlink(missing_ok=True)
        raise _name_taken(bundle.name) from None
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return skill


def skill_version_create(
    *, workspace: Workspace, skill_id: str, uploads: list[tuple[str, int, IO[bytes]]]
) -> VersionView:
    skill = skill_get(workspace=workspace, skill_id=skill_id)
    if isinstance(skill, BuiltinSkill):
        raise bad_request(f"skill_id: {skill_id!r} is a built-in skill; it cannot get new versions.")
    bundle = bundle_from_uploads(uploads)
    if bundle.name != skill.name:
        raise bad_request(
            f"SKILL.md: `name` resolves to {bundle.name!r}, but this skill is named {skill.name!r}; "
            "every version of a skill keeps its name."
        )
    now = timezone.now()
    written: list[Path] = []
    try:
        with transaction.atomic():
            # The row lock orders concurrent uploads, so `latest` is always the newest version.
            locked = Skill.objects.select_for_update().get(pk=skill.pk)
            row = _insert_version(skill=locked, bundle=bundle, now=now)
            written.append(row.archive_path)
            Skill.objects.filter(pk=locked.pk).update(latest_version_id=row.id, updated_at=now)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return _view(row)


# --- reads ------------------------------------------------------------------------------------------------


def skill_get(*, workspace: Workspace, skill_id: str) -> Skill | BuiltinSkill:
    builtin = builtin_get(skill_id)
    if builtin is not None:
        return builtin
    skill = (
        Skill.objects.filter(workspace=workspace, id=skill_id).first()
        if has_prefix(skill_id, "skill")
        else None
    )
    if skill is None:
        raise not_found("Skill", skill_id)
    return skill


def skill_list(
    *, workspace: Workspace, source: str | None, limit: int | None, page: str | None
) -> dict[str, Any]:
    """Built-in skills first (in id order), then custom ones, newest first. The cursor is an offset:
    the built-ins are not rows, and a workspace's skills are few."""
    if source is not None and source not in SOURCES:
        raise bad_request(f"source: must be 'custom' or 'anthropic', got {source!r}.")
    size = check_limit(limit, default=LIST_DEFAULT_LIMIT, maximum=LIST_MAX_LIMIT)
    offset = 0
    if page:
        cursor = decode(page, order="desc")
        kind, value = cursor.key
        if kind != "offset" or not isinstance(value, int) or value < 0:
            raise bad_request(f"page: {page!r} is not a valid page cursor.")
        offset = value
    builtins: list[Any] = (
        [builtin_get(i) for i in sorted(builtin_ids())] if source in (None, "anthropic") else []
    )
    items: list[Any] = builtins[offset : offset + size + 1]
    if source in (None, "custom") and len(items) <= size:
        start = max(0, offset - len(builtins))
        want = size + 1 - len(items)
        qs = Skill.objects.filter(workspace=workspace).order_by("-created_at", "-id")
        items += list(qs[start : start + want])
    more = len(items) > size
    items = items[:size]
    next_page = encode(Cursor(["offset", offset + size], "desc", "next")) if more else None
    return {"data": [skill_wire(s) for s in items], "next_page": next_page}


def version_get(*, skill: Skill | BuiltinSkill, version: str) -> VersionView:
    if isinstance(skill, BuiltinSkill):
        if version not in ("latest", skill.version):
            raise not_found(f"Version of skill {skill.id!r}", version)
        return _builtin_view(skill)
    target = skill.latest_version_id if version == "latest" else version
    row = SkillVersion.objects.filter(skill=skill, id=target).select_related("skill").first()
    if row is None:
        raise not_found(f"Version of skill {skill.id!r}", version)
    return _view(row)


def version_list(*, skill: Skill | BuiltinSkill, limit: int | None, page: str | None) -> dict[str, Any]:
    size = check_limit(limit, default=LIST_DEFAULT_LIMIT, maximum=LIST_MAX_LIMIT)
    if isinstance(skill, BuiltinSkill):
        if page:
            decode(page, order="desc")
            return {"data": [], "next_page": None}
        return {"data": [version_wire(_builtin_view(skill))], "next_page": None}
    result: Page = paginate(
        SkillVersion.objects.filter(skill=skill).select_related("skill"),
        fields=("created_at", "id"),
        limit=size,
        page=page,
    )
    return {"data": [version_wire(_view(r)) for r in result.items], "next_page": result.next_page}


def version_archive(*, version: VersionView) -> tuple[bytes, str]:
    """The version's zip and its download name."""
    if version.builtin is not None:
        return builtin_archive(version.builtin.id), f"{version.name}.zip"
    assert version.row is not None
    try:
        data = version.row.archive_path.read_bytes()
    except FileNotFoundError:
        raise ApiError(
            500, f"The files of skill version {version.id!r} are missing on this server."
        ) from None
    return data, f"{version.name}.zip"


def version_files(*, version: VersionView) -> list[tuple[str, bytes]]:
    """(path inside the skill folder, bytes), for the console."""
    data, _ = version_archive(version=version)
    return b.archive_members(data)


# --- deletes ----------------------------------------------------------------------------------------------


def _remove_after_commit(paths: list[Path]) -> None:
    def remove() -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    transaction.on_commit(remove)


def skill_delete(*, workspace: Workspace, skill_id: str) -> None:
    skill = skill_get(workspace=workspace, skill_id=skill_id)
    if isinstance(skill, BuiltinSkill):
        raise bad_request(f"skill_id: {skill_id!r} is a built-in skill and cannot be deleted.")
    with transaction.atomic():
        rows = list(SkillVersion.objects.filter(skill=skill).select_related("skill"))
        paths = [row.archive_path for row in rows]
        deleted, _ = Skill.objects.filter(pk=skill.pk).delete()
        if not deleted:
            raise not_found("Skill", skill_id)
        _remove_after_commit(paths)


def version_delete(*, workspace: Workspace, skill_id: str, version: str) -> str:
    skill = skill_get(workspace=workspace, skill_id=skill_id)
    if isinstance(skill, BuiltinSkill):
        raise bad_request(f"skill_id: {skill_id!r} is a built-in skill; its versions cannot be deleted.")
    with transaction.atomic():
        locked = Skill.objects.select_for_update().get(pk=skill.pk)
        target = locked.latest_version_id if version == "latest" else version
        row = SkillVersion.objects.filter(skill=locked, id=target).select_related("skill").first()
        if row is None:
            raise not_found(f"Version of skill {skill_id!r}", version)
        others = SkillVersion.objects.filter(skill=locked).exclude(id=row.id).order_by("-created_at", "-id")
        newest = others.first()
        if newest is None:
            raise bad_request(
                f"version: {row.id!r} is the only version of skill {skill_id!r}; delete the skill instead."
            )
        path, deleted_id = row.archive_path, row.id
        row.delete()
        if locked.latest_version_id == deleted_id:
            Skill.objects.filter(pk=locked.pk).update(latest_version_id=newest.id, updated_at=timezone.now())
        _remove_after_commit([path])
    return deleted_id


# --- references on agents ---------------------------------------------------------------------------------


def skill_refs_resolve(
    *, workspace: Workspace, skills: list[dict[str, Any]], field: str = "skills"
) -> list[dict[str, Any]]:
    """Syntactically checked references (definition.resolve_skills) -> each naming an existing skill
    of the workspace (or a built-in one) and a concrete version id."""
    out = []
    for i, ref in enumerate(skills):
        where = f"{field}[{i}]"
        skill_id = ref["skill_id"]
        if ref["type"] == "anthropic":
            builtin = builtin_get(skill_id)
            if builtin is None:
                raise bad_request(f"{where}.skill_id: {skill_id!r} is not a built-in skill of this server.")
            if ref["version"] not in ("latest", builtin.version):
                raise bad_request(
                    f"{where}.version: built-in skill {skill_id!r} has version {builtin.version!r} only, "
                    f"not {ref['version']!r}."
                )
            out.append({"type": "anthropic", "skill_id": skill_id, "version": builtin.version})
            continue
        skill = Skill.objects.filter(workspace=workspace, id=skill_id).first()
        if skill is None:
            raise bad_request(f"{where}.skill_id: skill {skill_id!r} was not found in this workspace.")
        if ref["version"] == "latest":
            version = skill.latest_version_id
        elif SkillVersion.objects.filter(skill=skill, id=ref["version"]).exists():
            version = ref["version"]
        else:
            raise bad_request(f"{where}.version: skill {skill_id!r} has no version {ref['version']!r}.")
        out.append({"type": "custom", "skill_id": skill_id, "version": version})
    return out


def skills_count_check(*, own: list[dict[str, Any]], members: list[list[dict[str, Any]]]) -> None:
    """At most MAX_SKILLS_PER_SESSION skills in a session: the agent's own plus every roster member's."""
    total = len(own) + sum(len(m) for m in members)
    if total > MAX_SKILLS_PER_SESSION:
        detail = f" ({len(own)} on the agent, {total - len(own)} on its roster)" if members else ""
        raise bad_request(
            f"skills: a session can use at most {MAX_SKILLS_PER_SESSION} skills, "
            f"this agent would give it {total}{detail}."
        )


def skill_refs_check(
    *, workspace: Workspace, snapshot: dict[str, Any], skills: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Session-local skills (agent_with_overrides) over a session snapshot whose roster holds the
    members' full definitions: resolved, and counted with the roster's."""
    resolved = skill_refs_resolve(workspace=workspace, skills=skills, field="agent.skills")
    roster = snapshot.get("multiagent") or {}
    members = [
        list(m.get("skills") or [])
        for m in roster.get("agents", [])
        if isinstance(m, dict) and m.get("type") == "agent" and m.get("id") != snapshot.get("id")
    ]
    skills_count_check(own=resolved, members=members)
    return resolved


def skill_refs_check_exist(*, snapshot: dict[str, Any]) -> None:
    """A new session's agent (and roster) must not name a skill version deleted since it was saved."""
    agents = [("agent", snapshot)] + [
        (f"agent.multiagent.agents[{i}]", m)
        for i, m in enumerate((snapshot.get("multiagent") or {}).get("agents") or [])
        if isinstance(m, dict) and m.get("type") == "agent"
    ]
    for where, agent in agents:
        for i, ref in enumerate(agent.get("skills") or []):
            if ref.get("type") != "custom":
                continue
            if not SkillVersion.objects.filter(skill_id=ref.get("skill_id"), id=ref.get("version")).exists():
                raise bad_request(
                    f"{where}.skills[{i}]: skill {ref.get('skill_id')!r} version {ref.get('version')!r} "
                    "was deleted; update the agent to use another version.",
                    error_code="skill_not_found",
                )

"""Skills at run time: what a sandbox mounts and what the system prompt says.

Each skill of the running agent (the session's, or a child thread's own agent's) is unpacked once per
version into `GALLEY_SANDBOX_ROOT/_skills/<key>/<name>/` (owned by the server, world-readable, never
written again) and mounted read-only at `/workspace/skills/<name>/`. Agents with a built-in skill also
get the built-in skills' Python libraries: a `pip install --target` prefix built once per requirement
list by the environment package machinery, mounted read-only at `/opt/galley/skills-python` and put on
PYTHONPATH. The system prompt gains one line per skill (name, description, path of its SKILL.md); the
model reads SKILL.md itself when it decides to use the skill."""

import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from skills import bundle as b
from skills.catalog import PYTHON_REQUIREMENTS, builtin_archive, builtin_get
from skills.models import SkillVersion

logger = logging.getLogger(__name__)

SKILLS_MOUNT = "/workspace/skills"
PYTHON_MOUNT = "/opt/galley/skills-python"


@dataclass(frozen=True)
class SkillInfo:
    type: str
    skill_id: str
    version: str
    name: str
    description: str


@dataclass(frozen=True)
class SandboxSkills:
    mounts: tuple[tuple[str, str], ...]
    pythonpath: str | None


# --- which skills -------------------------------------------------------------------------------------


def _custom_info(skill_id: str, version: str) -> SkillInfo:
    row = SkillVersion.objects.filter(skill_id=skill_id, id=version).first()
    if row is None:
        raise LookupError(version)
    return SkillInfo("custom", skill_id, version, row.name, row.description)


def skill_infos(agent: dict[str, Any]) -> list[SkillInfo]:
    """The agent snapshot's skills that still exist, in order. A deleted custom version is left out
    (and logged): the session keeps running without it."""
    out = []
    for ref in agent.get("skills") or []:
        if ref.get("type") == "anthropic":
            builtin = builtin_get(str(ref.get("skill_id")))
            if builtin is not None:
                out.append(
                    SkillInfo(
                        "anthropic",
                        builtin.id,
                        builtin.version,
                        builtin.bundle.name,
                        builtin.bundle.description,
                    )
                )
            continue
        try:
            info = _custom_info(str(ref.get("skill_id")), str(ref.get("version")))
        except LookupError:
            logger.warning(
                "skill %s version %s no longer exists; not mounted", ref.get("skill_id"), ref.get("version")
            )
            continue
        out.append(info)
    return out


def skills_system_prompt(system: str | None, agent: dict[str, Any]) -> str | None:
    """The agent's system prompt followed by one line per skill; nothing is added without skills."""
    lines = [
        f"Skill {info.name}: {info.description} (instructions: {SKILLS_MOUNT}/{info.name}/SKILL.md)"
        for info in skill_infos(agent)
    ]
    if not lines:
        return system
    return "\n".join([system, "", *lines] if system else lines)


# --- unpacked trees -----------------------------------------------------------------------------------


def _tree_root() -> Path:
    return Path(settings.GALLEY_SANDBOX_ROOT) / "_skills"


def _files_of(info: SkillInfo) -> tuple[str, list[tuple[str, bytes, bool]]]:
    """(cache key, files relative to the skill folder)."""
    if info.type == "anthropic":
        archive = builtin_archive(info.skill_id)
        key = f"builtin-{info.skill_id}-{info.version}-{b.sha256(archive)[:12]}"
    else:
        row = SkillVersion.objects.select_related("skill").get(skill_id=info.skill_id, id=info.version)
        archive = row.archive_path.read_bytes()
        key = info.version
    files = []
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for entry in zf.infolist():
            if entry.is_dir():
                continue
            parts = b.check_path(entry.filename, "archive")
            files.append(("/".join(parts[1:]), zf.read(entry), bool((entry.external_attr >> 16) & 0o111)))
    return key, files


_trees: dict[tuple[str, str], Path] = {}


def skill_tree(info: SkillInfo) -> Path:
    """The unpacked, read-only folder of one skill version (made on first use)."""
    cached = _trees.get((info.skill_id, info.version))
    if cached is not None and cached.is_dir():
        return cached
    key, files = _files_of(info)
    root = _tree_root()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    final = root / key / info.name
    if not final.is_dir():
        staging = root / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            for rel, data, executable in files:
                target = staging / info.name / rel
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                target.write_bytes(data)
                os.chmod(target, 0o755 if executable else 0o644)
            for directory in [staging, *staging.rglob("*")]:
                if directory.is_dir():
                    os.chmod(directory, 0o755)
            os.chmod(staging, 0o711)
            try:
                staging.rename(root / key)
            except OSError:
                if not final.is_dir():  # another worker unpacked it first: theirs is identical
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _trees[(info.skill_id, info.version)] = final
    return final


# --- the built-in skills' Python libraries ------------------------------------------------------------


def _python_key() -> str:
    from sandboxes.packages import python_site_dir

    blob = json.dumps({"pip": list(PYTHON_REQUIREMENTS), "python": python_site_dir(), "v": 1})
    return "skills-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def skill_python_dir() -> Path | None:
    """The built prefix (its importable directory), or None when it is not built yet."""
    path = Path(settings.GALLEY_PACKAGES_ROOT) / _python_key() / "pip"
    return path if path.is_dir() else None


_RETRY_FAILED_BUILD_SECONDS = 600.0
_last_failure = 0.0


def skill_python_ensure() -> Path | None:
    """Build the prefix if it is missing (once per host: other callers wait on a file lock).
    Returns None, and logs the installer's output, when the build fails; this process then waits a
    while before trying again, so that sandboxes do not each wait for a build that cannot work."""
    global _last_failure
    found = skill_python_dir()
    if found is not None:
        return found
    if time.monotonic() - _last_failure < _RETRY_FAILED_BUILD_SECONDS and _last_failure:
        return None
    from sandboxes.packages import _build_into  # the environment package builder

    root = Path(settings.GALLEY_PACKAGES_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    key = _python_key()
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = skill_python_dir()
        if found is not None:
            return found
        staging = root / f".build-{key}-{os.getpid()}-{int(time.time() * 1000)}"
        log: list[str] = []
        try:
            if _build_into(staging, {"pip": list(PYTHON_REQUIREMENTS)}, log):
                staging.rename(root / key)
            else:
                logger.error(
                    "building the built-in skills' Python libraries failed:\n%s", "".join(log)[-4000:]
                )
        except Exception:
            logger.exception("building the built-in skills' Python libraries failed")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    found = skill_python_dir()
    if found is None:
        _last_failure = time.monotonic()
    return found


def skill_python_request(*, skills: list[dict[str, Any]]) -> None:
    """An agent with a built-in skill was saved: build the prefix in the background if it is missing,
    so that its first session does not wait for the installer."""
    if not any(s.get("type") == "anthropic" for s in skills) or skill_python_dir() is not None:
        return
    from skills.tasks import build_skill_python

    transaction.on_commit(lambda: build_skill_python.delay())


# --- what a sandbox gets ----------------------------------------------------------------------------


def _session_skill_refs(agent: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent's skills, then each roster member's: child threads run their tools in the session's
    sandbox, so it holds every skill any of its agents may read."""
    refs = list(agent.get("skills") or [])
    for member in (agent.get("multiagent") or {}).get("agents") or []:
        if isinstance(member, dict) and member.get("type") == "agent":
            refs += list(member.get("skills") or [])
    return refs


def sandbox_skills(*, agent: dict[str, Any]) -> SandboxSkills:
    mounts = []
    names: set[str] = set()
    needs_python = False
    for info in skill_infos({"skills": _session_skill_refs(agent)}):
        if info.name in names:
            continue  # two agents of one roster with the same skill: the first one's version is mounted
        try:
            tree = skill_tree(info)
        except (SkillVersion.DoesNotExist, FileNotFoundError):
            logger.warning("skill %s version %s was deleted; not mounted", info.skill_id, info.version)
            continue
        names.add(info.name)
        mounts.append((str(tree), f"{SKILLS_MOUNT}/{info.name}"))
        needs_python = needs_python or info.type == "anthropic"
    pythonpath = None
    if needs_python:
        prefix = skill_python_ensure()
        if prefix is not None:
            mounts.append((str(prefix), PYTHON_MOUNT))
            pythonpath = PYTHON_MOUNT
    return SandboxSkills(mounts=tuple(mounts), pythonpath=pythonpath)


def sandbox_agent(session: Any, key: str) -> dict[str, Any]:
    """The agent a sandbox serves: the session's, or a child thread's own (key `<session>.<thread>`)."""
    if "." in key:
        from sessions.models import SessionThread

        thread = SessionThread.objects.filter(session_id=session.id, id=key.split(".", 1)[1]).first()
        if thread is not None:
            return dict(thread.agent_snapshot or {})
    return dict(session.agent_snapshot or {})

"""Galley's built-in skills (source `anthropic` on the wire): folders shipped under `skills/builtin/<id>/`,
each a SKILL.md and helper scripts. They are read from the checkout and checked with the same rules as
uploads; they are not database rows and cannot be changed or deleted through the API."""

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from agents.definition import ANTHROPIC_SKILLS
from skills.bundle import Bundle, build_bundle

BUILTIN_DIR = Path(__file__).with_name("builtin")
# One version per release of the built-in skills; bump it (a sortable date) when their files change.
BUILTIN_VERSION = "20261201"
BUILTIN_CREATED_AT = datetime(2026, 12, 1, tzinfo=UTC)
DISPLAY_NAMES = {
    "xlsx": "Excel workbooks (xlsx)",
    "docx": "Word documents (docx)",
    "pptx": "PowerPoint presentations (pptx)",
    "pdf": "PDF documents",
}
# What the built-in helper scripts import, installed once into a read-only prefix every sandbox with a
# built-in skill can import (see `skills.runtime`). Pinned: the prefix is keyed by this list.
PYTHON_REQUIREMENTS = (
    "openpyxl==3.1.5",
    "python-docx==1.2.0",
    "python-pptx==1.0.2",
    "pypdf==7.1.1",
    "reportlab==5.1.0",
)


@dataclass(frozen=True)
class BuiltinSkill:
    id: str
    display_name: str
    bundle: Bundle

    @property
    def version(self) -> str:
        return BUILTIN_VERSION

    @property
    def folder(self) -> Path:
        return BUILTIN_DIR / self.id


def builtin_ids() -> tuple[str, ...]:
    return ANTHROPIC_SKILLS


@cache
def builtin_get(skill_id: str) -> BuiltinSkill | None:
    if skill_id not in ANTHROPIC_SKILLS:
        return None
    folder = BUILTIN_DIR / skill_id
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(BUILTIN_DIR).as_posix()
            entries.append((rel, path.read_bytes(), bool(path.stat().st_mode & 0o111)))
    return BuiltinSkill(id=skill_id, display_name=DISPLAY_NAMES[skill_id], bundle=build_bundle(entries))


@cache
def builtin_archive(skill_id: str) -> bytes:
    skill = builtin_get(skill_id)
    if skill is None:
        raise KeyError(skill_id)
    return skill.bundle.archive()

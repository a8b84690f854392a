"""Skills services: the name race, session-local skills, deleted versions, the system prompt lines and
which agent a sandbox serves."""

import io
from typing import Any

import pytest

from agents import services as agent_services
from api.errors import ApiError
from sessions import services as session_services
from sessions.models import SessionThread
from skills import runtime
from skills import services as skill_services
from skills.models import Skill, SkillVersion
from tests.console_factories import make_environment

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Any) -> None:
    settings.DATA_DIR = tmp_path


def upload(workspace: Any, name: str, description: str = "Does things.") -> Skill:
    md = f"---\nname: {name}\ndescription: {description}\n---\nBODY-{name}\n".encode()
    return skill_services.skill_create(
        workspace=workspace, uploads=[(f"{name}/SKILL.md", len(md), io.BytesIO(md))], display_name=None
    )


def test_a_name_taken_in_a_race_is_a_409_and_leaves_no_archive(workspace, monkeypatch, tmp_path):
    upload(workspace, "twin")
    # The second writer's first look misses the first one's row: the unique constraint decides.
    monkeypatch.setattr(skill_services, "name_in_use", lambda **_: False)
    with pytest.raises(ApiError) as taken:
        upload(workspace, "twin")
    assert taken.value.status == 409 and taken.value.details["error_code"] == "skill_name_taken"
    assert Skill.objects.count() == 1 and SkillVersion.objects.count() == 1
    assert len(list((tmp_path / "skills").rglob("*.zip"))) == 1


def test_session_overrides_resolve_skills_and_refuse_unknown_ones(workspace):
    notes = upload(workspace, "notes")
    agent = agent_services.agent_create(workspace=workspace, body={"name": "a", "model": "claude-m"})
    environment = make_environment(workspace)
    session = session_services.session_create(
        workspace=workspace,
        body={
            "agent": {
                "type": "agent_with_overrides",
                "id": agent.pk,
                "skills": [{"type": "custom", "skill_id": notes.pk}],
            },
            "environment_id": environment.pk,
        },
    )
    assert session.agent_snapshot["skills"] == [
        {"type": "custom", "skill_id": notes.pk, "version": notes.latest_version_id}
    ]
    with pytest.raises(ApiError) as missing:
        session_services.session_create(
            workspace=workspace,
            body={
                "agent": {
                    "type": "agent_with_overrides",
                    "id": agent.pk,
                    "skills": [{"type": "custom", "skill_id": "skill_01gone"}],
                },
                "environment_id": environment.pk,
            },
        )
    assert "agent.skills[0].skill_id" in missing.value.message


def test_a_session_cannot_start_with_a_deleted_skill_version(workspace):
    notes = upload(workspace, "notes")
    agent = agent_services.agent_create(
        workspace=workspace,
        body={"name": "a", "model": "claude-m", "skills": [{"type": "custom", "skill_id": notes.pk}]},
    )
    skill_services.skill_delete(workspace=workspace, skill_id=notes.pk)
    with pytest.raises(ApiError) as gone:
        session_services.session_create(
            workspace=workspace, body={"agent": agent.pk, "environment_id": make_environment(workspace).pk}
        )
    assert gone.value.status == 400 and "agent.skills[0]" in gone.value.message
    assert gone.value.details["error_code"] == "skill_not_found"


def test_the_system_prompt_gains_one_line_per_skill_and_no_body(workspace):
    notes = upload(workspace, "notes", "Keeps notes tidy.")
    agent = {
        "skills": [
            {"type": "anthropic", "skill_id": "pdf", "version": "20261201"},
            {"type": "custom", "skill_id": notes.pk, "version": notes.latest_version_id},
        ]
    }
    prompt = runtime.skills_system_prompt("Be brief.", agent)
    lines = prompt.splitlines()
    assert lines[:2] == ["Be brief.", ""] and len(lines) == 4
    assert lines[2].startswith("Skill pdf: Create PDF documents") and lines[2].endswith(
        "(instructions: /workspace/skills/pdf/SKILL.md)"
    )
    assert lines[3] == "Skill notes: Keeps notes tidy. (instructions: /workspace/skills/notes/SKILL.md)"
    assert "BODY-notes" not in prompt
    assert runtime.skills_system_prompt("Be brief.", {"skills": []}) == "Be brief."
    assert runtime.skills_system_prompt(None, {}) is None


def test_a_child_threads_sandbox_serves_its_own_agent(workspace):
    agent = agent_services.agent_create(
        workspace=workspace,
        body={"name": "a", "model": "claude-m", "skills": [{"type": "anthropic", "skill_id": "xlsx"}]},
    )
    session = session_services.session_create(
        workspace=workspace, body={"agent": agent.pk, "environment_id": make_environment(workspace).pk}
    )
    member = {"name": "m", "skills": [{"type": "anthropic", "skill_id": "docx", "version": "20261201"}]}
    thread = SessionThread.objects.create(
        id="sthr_01child",
        session=session,
        parent=session.threads.first(),
        agent_name="m",
        agent_snapshot=member,
    )
    assert runtime.sandbox_agent(session, session.pk)["skills"][0]["skill_id"] == "xlsx"
    assert runtime.sandbox_agent(session, f"{session.pk}.{thread.pk}")["skills"][0]["skill_id"] == "docx"

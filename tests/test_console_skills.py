"""Console skills page: upload a folder or a zip, versions, SKILL.md and files; skill pickers on the
agent form."""

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import Role
from agents.models import Agent
from skills.models import Skill, SkillVersion
from tests.console_factories import client_for, fast_passwords  # noqa: F401

pytestmark = pytest.mark.django_db

MD = b"---\nname: meeting-notes\ndescription: Summarise meetings into action items.\n---\n# Meeting notes\n"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_an_editor_uploads_a_folder_then_a_zip_version_and_reads_the_files(workspace, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    client = client_for(workspace, Role.EDITOR)
    folder = [
        SimpleUploadedFile("SKILL.md", MD),
        SimpleUploadedFile("helper.py", b"print('hi')\n"),
    ]
    response = client.post(
        "/skills/upload",
        {
            "folder": folder,
            "paths": ["meeting-notes/SKILL.md", "meeting-notes/scripts/helper.py"],
            "display_name": "Meetings",
        },
    )
    assert response.status_code == 302, response.content[:500]
    skill = Skill.objects.get(workspace=workspace)
    assert (skill.name, skill.display_name) == ("meeting-notes", "Meetings")
    page = client.get(f"/skills/{skill.pk}")
    assert page.status_code == 200
    assert b"# Meeting notes" in page.content and b"scripts/helper.py" in page.content
    shown = client.get(f"/skills/{skill.pk}", {"file": "scripts/helper.py"})
    assert b"print(&#x27;hi&#x27;)" in shown.content

    archive = _zip({"meeting-notes/SKILL.md": MD.replace(b"action items", b"decisions")})
    response = client.post(f"/skills/{skill.pk}/versions", {"archive": SimpleUploadedFile("v2.zip", archive)})
    assert response.status_code == 302
    assert SkillVersion.objects.filter(skill=skill).count() == 2
    latest = client.get(f"/skills/{skill.pk}")
    assert b"decisions" in latest.content and latest.content.count(b"skillver_") >= 2

    listing = client.get("/skills")
    assert b"Meetings" in listing.content and b"Excel workbooks (xlsx)" in listing.content


def test_a_bad_upload_shows_the_problem_and_stores_nothing(workspace, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    client = client_for(workspace, Role.EDITOR)
    bad = _zip({"x/README.md": b"no skill here"})
    response = client.post("/skills/upload", {"archive": SimpleUploadedFile("x.zip", bad)})
    assert response.status_code == 400 and b"SKILL.md is missing" in response.content
    assert not Skill.objects.exists()


def test_viewers_read_skills_but_cannot_upload(workspace, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    viewer = client_for(workspace, Role.VIEWER)
    assert viewer.get("/skills").status_code == 200
    assert b"Upload skill" not in viewer.get("/skills").content
    assert viewer.get("/skills/xlsx").status_code == 200
    archive = _zip({"meeting-notes/SKILL.md": MD})
    response = viewer.post("/skills/upload", {"archive": SimpleUploadedFile("m.zip", archive)})
    assert response.status_code == 403 and not Skill.objects.exists()


def test_the_agent_form_picks_builtin_and_custom_skills(workspace, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    client = client_for(workspace, Role.EDITOR)
    client.post(
        "/skills/upload", {"archive": SimpleUploadedFile("m.zip", _zip({"meeting-notes/SKILL.md": MD}))}
    )
    skill = Skill.objects.get()
    form = client.get("/agents/new")
    assert f'value="{skill.pk}"'.encode() in form.content and b'name="skill-xlsx"' in form.content
    response = client.post(
        "/agents/new",
        {
            "name": "Reporter",
            "model": "claude-sonnet-4-6",
            "effort": "high",
            "skill-xlsx": "on",
            "cskill": skill.pk,
        },
    )
    assert response.status_code == 302, response.content[:800]
    agent = Agent.objects.get(name="Reporter")
    assert agent.latest().definition["skills"] == [
        {"type": "anthropic", "skill_id": "xlsx", "version": "20261201"},
        {"type": "custom", "skill_id": skill.pk, "version": skill.latest_version_id},
    ]
    detail = client.get(f"/agents/{agent.pk}")
    assert f"/skills/{skill.pk}?version={skill.latest_version_id}".encode() in detail.content

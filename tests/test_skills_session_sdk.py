"""Skills in a running session, end to end: the official SDK (strict validation) against a live Galley
whose worker talks to a scripted model and runs tools in real bubblewrap sandboxes."""

import io
import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from openpyxl.chart import BarChart

from tests.live import LiveGalley, live_galley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, scripted_model, text, tool_call

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]

NOTES_MD = b"""---
name: field-notes
description: House rules for turning field observations into tidy notes.
---
# Field notes
SECRET-BODY-MARKER: only read when needed.
"""

SPEC = {
    "sheets": [
        {
            "name": "Sales",
            "rows": [
                ["Region", "Q1", "Q2", "Total"],
                ["North", 120, 135, "=SUM(B2:C2)"],
                ["South", 98, 110, "=SUM(B3:C3)"],
                ["Total", "=SUM(B2:B3)", "=SUM(C2:C3)", "=SUM(D2:D3)"],
            ],
            "charts": [
                {
                    "type": "bar",
                    "title": "Sales by region",
                    "data": "B1:C3",
                    "categories": "A2:A3",
                    "anchor": "F2",
                }
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as server:
        yield server


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    # The built-in skills' Python prefix is keyed by its requirements: built once, kept across runs.
    packages = Path(tempfile.gettempdir()) / "galley-test-packages"
    env = {
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": model.base_url,
        "GALLEY_PACKAGES_ROOT": str(packages),
    }
    with live_galley(env) as server:
        yield server


def _system_text(request: dict) -> str:
    system = request.get("system") or ""
    return system if isinstance(system, str) else "".join(block["text"] for block in system)


def test_an_agent_with_xlsx_and_a_custom_skill_builds_a_workbook(
    galley: LiveGalley, model: ScriptedModel
) -> None:
    client = galley.client(timeout=300)
    notes = client.beta.skills.create(files=[("field-notes/SKILL.md", NOTES_MD)])
    agent = client.beta.agents.create(
        name=f"report-writer-{secrets.token_hex(3)}",
        model="claude-sonnet-4-6",
        system="You write reports.",
        tools=[{"type": "agent_toolset_20260401"}],
        skills=[{"type": "anthropic", "skill_id": "xlsx"}, {"type": "custom", "skill_id": notes.id}],
    )
    assert [(s.skill_id, s.version) for s in agent.skills] == [
        ("xlsx", "20261201"),
        (notes.id, notes.latest_version_id),
    ]
    environment = client.beta.environments.create(name=f"skills-env-{secrets.token_hex(3)}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    script = (
        "cat > /tmp/spec.json <<'EOF'\n" + json.dumps(SPEC) + "\nEOF\n"
        "python3 /workspace/skills/xlsx/scripts/xlsx_tool.py create /mnt/session/outputs/sales.xlsx"
        " --spec /tmp/spec.json"
        " && touch /workspace/skills/xlsx/SKILL.md 2>&1 || echo read-only"
    )
    model.push(
        tool_call("bash", {"command": "ls /workspace/skills"}),
        tool_call("read", {"file_path": "/workspace/skills/xlsx/SKILL.md"}),
        tool_call("bash", {"command": script}),
        text("The workbook is in your outputs."),
    )
    first_request = len(model.requests)
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id,
            events=[
                {"type": "user.message", "content": [{"type": "text", "text": "Build the sales workbook."}]}
            ],
        )
        events = until_idle(stream, limit=200)
    assert events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn"
    results = [e for e in events if e.type == "agent.tool_result"]
    assert len(results) == 3
    outputs = ["".join(block.text for block in r.content if block.type == "text") for r in results]
    assert outputs[0].split() == ["field-notes", "xlsx"], outputs[0]
    assert "# Excel workbooks (xlsx)" in outputs[1]
    assert "wrote /mnt/session/outputs/sales.xlsx" in outputs[2] and "read-only" in outputs[2], outputs[2]

    # The system prompt names each skill and where its instructions are; it never carries their bodies.
    for request in model.requests[first_request:]:
        system = _system_text(request)
        assert system.startswith("You write reports.")
        assert "Skill xlsx: Create, read and edit Excel workbooks" in system
        assert "/workspace/skills/xlsx/SKILL.md" in system
        assert (
            "Skill field-notes: House rules" in system and "/workspace/skills/field-notes/SKILL.md" in system
        )
        assert "SECRET-BODY-MARKER" not in system and "Create a workbook from a JSON spec" not in system
        assert len(system.splitlines()) == 4  # the agent's line, a blank line, one line per skill

    files = client.beta.files.list(scope_id=session.id).data
    xlsx = next(f for f in files if f.filename == "sales.xlsx")
    data = client.beta.files.download(xlsx.id).read()
    book = openpyxl.load_workbook(io.BytesIO(data))
    sheet = book["Sales"]
    assert [c.value for c in sheet[2]] == ["North", 120, 135, "=SUM(B2:C2)"]
    assert sheet["D4"].value == "=SUM(D2:D3)"
    chart = sheet._charts[0]
    assert isinstance(chart, BarChart) and len(chart.series) == 2


def test_a_roster_member_gets_its_own_skills_in_its_thread(galley: LiveGalley, model: ScriptedModel) -> None:
    client = galley.client(timeout=300)
    suffix = secrets.token_hex(3)
    md = b"---\nname: lead-rules\ndescription: How the lead splits work.\n---\nLEAD-BODY\n"
    rules = client.beta.skills.create(files=[("lead-rules/SKILL.md", md)])
    member = client.beta.agents.create(
        name=f"slides-{suffix}",
        model="claude-haiku-4-5",
        system="You make decks.",
        tools=[{"type": "agent_toolset_20260401"}],
        skills=[{"type": "anthropic", "skill_id": "pptx"}],
    )
    lead = client.beta.agents.create(
        name=f"lead-{suffix}",
        model="claude-sonnet-4-6",
        system="You coordinate.",
        tools=[{"type": "agent_toolset_20260401"}],
        skills=[{"type": "custom", "skill_id": rules.id}],
        multiagent={"type": "coordinator", "agents": [member.id]},
    )
    environment = client.beta.environments.create(name=f"roster-env-{suffix}")
    session = client.beta.sessions.create(agent=lead.id, environment_id=environment.id)
    first_request = len(model.requests)
    deck = {"slides": [{"layout": "title", "title": "Review"}]}
    command = (
        f"echo '{json.dumps(deck)}' | python3 /workspace/skills/pptx/scripts/pptx_tool.py create "
        "/mnt/session/outputs/deck.pptx --spec - && ls /workspace/skills"
    )
    model.push(
        tool_call("send_to_agent", {"agent_name": member.name, "message": "Make the deck."}),
        tool_call("bash", {"command": command}),
        text("Deck done."),
        text("The deck is ready."),
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go"}]}]
        )
        seen = until_idle(stream, limit=200)
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"
    systems = [_system_text(r) for r in model.requests[first_request:]]
    lead_systems = [s for s in systems if s.startswith("You coordinate.")]
    member_systems = [s for s in systems if s.startswith("You make decks.")]
    assert lead_systems and member_systems
    assert all("Skill lead-rules:" in s and "Skill pptx:" not in s for s in lead_systems)
    assert all("Skill pptx:" in s and "lead-rules" not in s for s in member_systems)
    assert not any("LEAD-BODY" in s for s in systems)
    bash_result = model.requests[first_request + 2]["messages"][-1]["content"][0]
    listing = "".join(block["text"] for block in bash_result["content"] if block["type"] == "text")
    assert "wrote /mnt/session/outputs/deck.pptx" in listing
    assert set(listing.split()[-2:]) == {"lead-rules", "pptx"}
    files = client.beta.files.list(scope_id=session.id).data
    assert any(f.filename == "deck.pptx" for f in files), [f.filename for f in files]

"""The harness starts a session's sandbox while it asks the model (sandboxes.toolset.sandbox_prewarm), for
agents with a sandbox tool only: through the official SDK against a live server (web + worker), a real
bubblewrap sandbox and a scripted model that takes its time before answering."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveGalley
from tests.model_server import ScriptedModel, text, tool_call
from tests.sandbox_fixtures import live_sandbox_server

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

THINKING = 1.5  # seconds the scripted model waits before its first byte
# The age of the shell that runs the command, in seconds (its start time against the host's uptime).
SHELL_AGE = (
    "awk -v start=$(cut -d' ' -f22 /proc/$$/stat) -v hz=$(getconf CLK_TCK)"
    " '{printf \"%.2f\\n\", $1 - start / hz}' /proc/uptime"
)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LiveGalley, ScriptedModel, Path]]:
    with live_sandbox_server("galley-prewarm-") as started:
        yield started


def _run_turn(client: Any, session_id: str, timeout: float = 60) -> list[Any]:
    client.beta.sessions.events.send(
        session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go."}]}]
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = list(client.beta.sessions.events.list(session_id, limit=100))
        if events[-1].type == "session.status_idle":
            return events
        time.sleep(0.1)
    raise AssertionError(f"the session did not finish: {[e.type for e in events]}")


def test_the_first_tool_call_finds_the_shell_started_while_the_model_thought(server) -> None:  # type: ignore[no-untyped-def]
    live, model, root = server
    client = live.client()
    environment = client.beta.environments.create(name="prewarm-env")
    agent = client.beta.agents.create(
        name="prewarm", model="claude-sonnet-4-6", tools=[{"type": "agent_toolset_20260401"}]
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    model.push(tool_call("bash", {"command": SHELL_AGE}, delay=THINKING), text("Done."))
    events = _run_turn(client, session.id)
    results = [e for e in events if e.type == "agent.tool_result"]
    assert len(results) == 1 and not results[0].is_error, results
    age = float("".join(block.text for block in results[0].content if block.type == "text").strip())
    # Started when the model was asked, not when it asked for the call THINKING seconds later.
    assert age >= THINKING - 0.5, age


def test_an_agent_without_sandbox_tools_starts_no_sandbox(server) -> None:  # type: ignore[no-untyped-def]
    live, model, root = server
    client = live.client()
    environment = client.beta.environments.create(name="prewarm-text-env")
    for tools in ([], [{"type": "agent_toolset_20260401", "default_config": {"enabled": False}}]):
        agent = client.beta.agents.create(name="talker", model="claude-sonnet-4-6", tools=tools)
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        model.push(text("Just talking.", delay=0.5))
        events = _run_turn(client, session.id)
        assert [e.type for e in events if e.type.startswith("agent.")] == ["agent.message"]
        assert not (root / "sandboxes" / session.id).exists(), tools

"""The quickstart's Fibonacci task, end to end through the official SDK against a live server (web + worker)
with a scripted model: a script is written and run inside a real bubblewrap sandbox, and a second turn reads
the file back."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import LiveGalley
from tests.model_server import ScriptedModel, text, tool_call
from tests.sandbox_fixtures import live_sandbox_server

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

FIB = (
    "a, b = 0, 1\n"
    "out = []\n"
    "for _ in range(10):\n"
    "    out.append(a)\n"
    "    a, b = b, a + b\n"
    "print(' '.join(map(str, out)))\n"
)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LiveGalley, ScriptedModel, Path]]:
    with live_sandbox_server("galley-quickstart-") as started:
        yield started


def _wait_idle(client: Any, session_id: str, results: int, timeout: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = list(client.beta.sessions.events.list(session_id, limit=100))
        done = [e for e in events if e.type == "agent.tool_result"]
        if len(done) >= results and events[-1].type == "session.status_idle":
            return events
        time.sleep(0.1)
    raise AssertionError(f"the session did not finish: {[e.type for e in events]}")


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def test_fibonacci_script_is_written_run_and_read_back(server) -> None:  # type: ignore[no-untyped-def]
    live, model, root = server
    client = live.client()
    environment = client.beta.environments.create(name="quickstart-env")
    agent = client.beta.agents.create(
        name="Coding Assistant",
        model="claude-sonnet-4-6",
        system="You write and run code.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="Fibonacci")
    model.push(
        tool_call("write", {"file_path": "/workspace/fib.py", "content": FIB}, say="I'll write the script."),
        tool_call("bash", {"command": "python3 fib.py"}),
        text("The first ten Fibonacci numbers are 0 1 1 2 3 5 8 13 21 34."),
    )
    client.beta.sessions.events.send(
        session.id,
        events=[
            {
                "type": "user.message",
                "content": [
                    {
                        "type": "text",
                        "text": "Write a script that prints the first 10 Fibonacci numbers and run it.",
                    }
                ],
            }
        ],
    )
    events = _wait_idle(client, session.id, results=2)
    results = [e for e in events if e.type == "agent.tool_result"]
    assert [r.is_error for r in results] == [False, False], [_text(r) for r in results]
    assert _text(results[1]) == "0 1 1 2 3 5 8 13 21 34"
    assert (root / "sandboxes" / session.id / "volume" / "workspace" / "fib.py").read_text() == FIB

    model.push(tool_call("read", {"file_path": "fib.py"}), text("Here is the script."))
    client.beta.sessions.events.send(
        session.id,
        events=[{"type": "user.message", "content": [{"type": "text", "text": "Show me the script."}]}],
    )
    events = _wait_idle(client, session.id, results=3)
    results = [e for e in events if e.type == "agent.tool_result"]
    assert not results[2].is_error and _text(results[2]) == FIB

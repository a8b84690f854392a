"""Any model provider, end to end: the official anthropic SDK against a live Galley (web and a real
worker) whose agents run on Claude (a scripted Messages API) or on an OpenAI-compatible server (a
scripted Chat Completions server, called through the real `openai` client). The same SDK code runs
the same agent by changing only `model`; a team mixes providers; a typo is caught at create time."""

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests import model_server, openai_server
from tests.live import LiveGalley, live_galley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel
from tests.openai_server import ScriptedOpenAI

pytestmark = [pytest.mark.slow]

LOCAL_KEY = "sk-local-never-shown-9876"
FIB = (
    "a, b = 0, 1\n"
    "out = []\n"
    "for _ in range(10):\n"
    "    out.append(a)\n"
    "    a, b = b, a + b\n"
    "print(' '.join(map(str, out)))\n"
)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[LiveGalley, ScriptedModel, ScriptedOpenAI, Path]]:
    root = Path(tempfile.mkdtemp(prefix="galley-providers-"))
    os.chmod(root, 0o711)  # sandboxes run as their own uid and must reach their workspace
    try:
        with (
            model_server.scripted_model() as claude,
            openai_server.scripted_openai(api_key=LOCAL_KEY) as local,
        ):
            providers = [
                {
                    "name": "local",
                    "type": "openai",
                    "base_url": local.base_url,
                    "api_key_env": "LOCAL_MODEL_KEY",
                    "models": [{"id": "gpt-test", "input_price": 0.5, "output_price": 1.5}],
                },
                {
                    "name": "wrongkey",
                    "type": "openai",
                    "base_url": local.base_url,
                    "api_key_env": "WRONG_MODEL_KEY",
                    "models": ["gpt-test"],
                },
            ]
            env = {
                "ANTHROPIC_API_KEY": "sk-test",
                "ANTHROPIC_BASE_URL": claude.base_url,
                "GALLEY_SANDBOX_ROOT": str(root / "sandboxes"),
                "GALLEY_PROVIDERS": json.dumps(providers),
                "LOCAL_MODEL_KEY": LOCAL_KEY,
                "WRONG_MODEL_KEY": "sk-wrong-key-1234",
            }
            with live_galley(extra_env=env) as live:
                yield live, claude, local, root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_idle(client: Any, session_id: str, results: int, timeout: float = 90) -> list[Any]:
    deadline = time.monotonic() + timeout
    events: list[Any] = []
    while time.monotonic() < deadline:
        events = list(client.beta.sessions.events.list(session_id, limit=100))
        done = [e for e in events if e.type == "agent.tool_result"]
        if len(done) >= results and events[-1].type == "session.status_idle":
            return events
        time.sleep(0.1)
    raise AssertionError(f"the session did not finish: {[e.type for e in events]}")


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@pytest.mark.sandbox
@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "local/gpt-test"])
def test_the_quickstart_runs_unchanged_on_claude_or_an_openai_compatible_server(
    world: Any, model: str
) -> None:
    live, claude, local, root = world
    scripted: Any = local if model.startswith("local/") else claude
    script: Any = openai_server if model.startswith("local/") else model_server
    client = live.client()
    environment = client.beta.environments.create(name=f"quickstart-{secrets.token_hex(3)}")
    agent = client.beta.agents.create(
        name="Coding Assistant",
        model=model,
        system="You write and run code.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="Fibonacci")
    before = len(scripted.requests)
    scripted.push(
        script.tool_call(
            "write", {"file_path": "/workspace/fib.py", "content": FIB}, say="I'll write the script."
        ),
        script.tool_call("bash", {"command": "python3 fib.py"}),
        script.text("The first ten Fibonacci numbers are 0 1 1 2 3 5 8 13 21 34."),
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
    messages = [e for e in events if e.type == "agent.message"]
    assert messages[-1].content[0].text == "The first ten Fibonacci numbers are 0 1 1 2 3 5 8 13 21 34."
    assert len(scripted.requests) - before == 3  # every model call went to the model's own provider
    ends = [e for e in events if e.type == "span.model_request_end"]
    assert len(ends) == 3 and all(e.model_usage.output_tokens > 0 for e in ends)
    usage = client.beta.sessions.retrieve(session.id).usage
    assert usage is not None and usage.input_tokens and usage.input_tokens > 0
    # The provider key reaches neither the event log nor the sandbox.
    assert LOCAL_KEY not in json.dumps([e.model_dump(mode="json") for e in events])
    listing = client.beta.sessions.events.list(session.id, limit=100)
    bash = next(e for e in listing if e.type == "agent.tool_result" and "0 1 1" in _text(e))
    assert bash is not None
    scripted.push(
        script.tool_call("bash", {"command": "env; cat /proc/self/environ | tr '\\0' '\\n'"}),
        script.text("ok"),
    )
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Show the env"}]}]
    )
    events = _wait_idle(client, session.id, results=3)
    shown = _text([e for e in events if e.type == "agent.tool_result"][-1])
    assert "PATH" in shown and LOCAL_KEY not in shown and "sk-test" not in shown
    assert LOCAL_KEY not in (live.data_dir / "serve.log").read_text()  # nor the server's log


def test_custom_tools_on_an_openai_compatible_model_through_the_sdk(world: Any) -> None:
    live, _claude, local, _root = world
    client = live.client()
    agent = client.beta.agents.create(
        name=f"weather-{secrets.token_hex(3)}",
        model="local/gpt-test",
        tools=[
            {
                "type": "custom",
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    )
    environment = client.beta.environments.create(name=f"weather-env-{secrets.token_hex(3)}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    local.push(openai_server.tool_call("get_weather", {"city": "Oslo, Norway"}, say="Checking."))
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id,
            events=[{"type": "user.message", "content": [{"type": "text", "text": "Weather in Oslo?"}]}],
        )
        first = until_idle(stream)
        use = next(e for e in first if e.type == "agent.custom_tool_use")
        assert use.name == "get_weather" and use.input == {"city": "Oslo, Norway"}
        assert first[-1].stop_reason.type == "requires_action" and first[-1].stop_reason.event_ids == [use.id]
        local.push(openai_server.text("Snow in Oslo."))
        client.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": use.id,
                    "content": [{"type": "text", "text": "snow, -3C"}],
                }
            ],
        )
        second = until_idle(stream)
    message = next(e for e in second if e.type == "agent.message")
    assert message.content[0].text == "Snow in Oslo."
    assert second[-1].stop_reason.type == "end_turn"
    assert local.requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": use.id,
        "content": "snow, -3C",
    }


def test_a_coordinator_on_claude_delegates_to_a_member_on_an_openai_compatible_server(world: Any) -> None:
    live, claude, local, _root = world
    client = live.client()
    suffix = secrets.token_hex(3)
    member = client.beta.agents.create(name=f"cheap-{suffix}", model="local/gpt-test", system="You research.")
    lead = client.beta.agents.create(
        name=f"lead-{suffix}",
        model="claude-sonnet-4-6",
        system="You coordinate.",
        multiagent={"type": "coordinator", "agents": [member.id]},
    )
    environment = client.beta.environments.create(name=f"team-{suffix}")
    session = client.beta.sessions.create(agent=lead.id, environment_id=environment.id)
    claude_before, local_before = len(claude.requests), len(local.requests)
    claude.push(
        model_server.tool_call("send_to_agent", {"agent_name": member.name, "message": "Find the answer."}),
        model_server.text("Done: 42."),
    )
    local.push(openai_server.text("The answer is 42.", reasoning="Thinking it over."))
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go"}]}]
        )
        seen = until_idle(stream)
    received = next(e for e in seen if e.type == "agent.thread_message_received")
    assert received.content[0].text == "The answer is 42."
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "end_turn"
    assert len(claude.requests) - claude_before == 2 and len(local.requests) - local_before == 1
    assert local.requests[-1]["messages"][0] == {"role": "system", "content": "You research."}
    child = next(t for t in client.beta.sessions.threads.list(session.id) if t.parent_thread_id is not None)
    events = list(client.beta.sessions.threads.events.list(child.id, session_id=session.id))
    assert [e.type for e in events if e.type in ("agent.thinking", "agent.message")] == [
        "agent.thinking",
        "agent.message",
    ]


def test_an_unknown_model_is_refused_at_create_time_naming_the_choices(world: Any) -> None:
    live, _claude, _local, _root = world
    client = live.client()
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.agents.create(name="typo", model="local/gpt-tset")
    message = caught.value.message
    assert "model: 'local/gpt-tset'" in message and "local/gpt-test" in message
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.agents.create(name="typo", model="gpt-4o")
    assert "claude-*" in caught.value.message and "local/gpt-test" in caught.value.message
    agent = client.beta.agents.create(name="fine", model="local/gpt-test")
    with pytest.raises(anthropic.BadRequestError, match="model"):
        client.beta.agents.update(agent.id, version=agent.version, model="elsewhere/gpt-test")
    assert client.beta.agents.retrieve(agent.id).version == agent.version  # nothing half-written


def test_a_rejected_key_is_a_session_error_naming_the_provider_and_the_session_idles(world: Any) -> None:
    live, _claude, _local, _root = world
    client = live.client()
    agent = client.beta.agents.create(name=f"broken-{secrets.token_hex(3)}", model="wrongkey/gpt-test")
    environment = client.beta.environments.create(name=f"broken-env-{secrets.token_hex(3)}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Hi"}]}]
        )
        seen = until_idle(stream)
    error = next(e for e in seen if e.type == "session.error")
    assert "provider 'wrongkey'" in error.error.message and "API key (401)" in error.error.message
    assert error.error.retry_status.type == "exhausted"
    assert "sk-wrong-key-1234" not in error.error.message
    assert seen[-1].type == "session.status_idle" and seen[-1].stop_reason.type == "retries_exhausted"
    assert not [e for e in seen if e.type == "agent.message"]
    assert client.beta.sessions.retrieve(session.id).status == "idle"

"""MCP tool events through a live Galley, read by the official SDK with strict validation."""

import secrets
from collections.abc import Iterator

import pytest

from tests.live import free_port, live_galley
from tests.mcp_server import mcp_server
from tests.model_server import scripted_model, text, tool_call

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple]:  # type: ignore[type-arg]
    with scripted_model() as model, mcp_server() as mcp:
        env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url}
        with live_galley(env) as galley:
            yield galley, model, mcp


def test_mcp_tool_use_and_result_parse_strictly_in_the_sdk(setup: tuple) -> None:  # type: ignore[type-arg]
    galley, model, mcp = setup
    token = "sdk-mcp-token-" + secrets.token_hex(4)
    mcp.required_token = token
    client = galley.client()
    suffix = secrets.token_hex(3)
    vault = client.beta.vaults.create(display_name=f"mcp-{suffix}")
    client.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "mcp_server_url": mcp.url, "token": token}
    )
    agent = client.beta.agents.create(
        name=f"mcp-{suffix}",
        model="claude-sonnet-4-6",
        mcp_servers=[{"type": "url", "name": "calc", "url": mcp.url}],
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "calc",
                "configs": [{"name": "add", "permission_policy": {"type": "always_allow"}}],
            }
        ],
    )
    environment = client.beta.environments.create(name=f"mcp-env-{suffix}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])
    model.push(tool_call("mcp__calc__add", {"a": 40, "b": 2}, say="Adding."), text("The answer is 42."))
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "40+2?"}]}]
        )
        seen = []
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle" or len(seen) > 40:
                break
    streamed = [e.type for e in seen]
    assert "agent.mcp_tool_use" in streamed and "agent.mcp_tool_result" in streamed
    events = list(client.beta.sessions.events.list(session.id))
    use = next(e for e in events if e.type == "agent.mcp_tool_use")
    result = next(e for e in events if e.type == "agent.mcp_tool_result")
    assert type(use).__name__ == "BetaManagedAgentsAgentMCPToolUseEvent"
    assert type(result).__name__ == "BetaManagedAgentsAgentMCPToolResultEvent"
    assert (use.mcp_server_name, use.name, use.input) == ("calc", "add", {"a": 40, "b": 2})
    assert use.evaluated_permission == "allow" and use.evaluation is not None
    assert use.evaluation.type == "always_allow"
    assert result.mcp_tool_use_id == use.id and result.is_error is False
    assert result.content is not None and result.content[0].text == "42"
    assert events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn"
    assert {seen.authorization for seen in mcp.seen} == {f"Bearer {token}"}
    assert not any(token in e.model_dump_json() for e in events)


def test_an_unreachable_mcp_server_error_parses_strictly(setup: tuple) -> None:  # type: ignore[type-arg]
    galley, model, _mcp = setup
    client = galley.client()
    suffix = secrets.token_hex(3)
    url = f"http://127.0.0.1:{free_port()}/mcp"
    agent = client.beta.agents.create(
        name=f"mcp-down-{suffix}",
        model="claude-sonnet-4-6",
        mcp_servers=[{"type": "url", "name": "down", "url": url}],
        tools=[{"type": "mcp_toolset", "mcp_server_name": "down"}],
    )
    environment = client.beta.environments.create(name=f"mcp-down-env-{suffix}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    model.push(text("The server is down."))
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]
        )
        for event in stream:
            if event.type == "session.status_idle":
                break
    events = list(client.beta.sessions.events.list(session.id))
    error = next(e for e in events if e.type == "session.error").error
    assert type(error).__name__ == "BetaManagedAgentsMCPConnectionFailedErrorObject"
    assert error.type == "mcp_connection_failed_error" and error.mcp_server_name == "down"
    assert error.retry_status.type == "exhausted"
    assert events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn"

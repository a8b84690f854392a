"""MCP toolsets end to end in the harness: discovery, permission policies, vault credentials and
failures, against a loopback MCP server and the scripted model."""

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction

from harness.context import INTERRUPTED
from harness.services import LOST
from sessions.models import Event, Session
from sessions.services import NewEvent, events_append, session_set_status
from tests.harness_helpers import (
    events_of,
    harness_model,
    log_types,
    make_session,
    say,
    send,
    step,
    step_in_background,
    wait_for,
)
from tests.live import free_port
from tests.mcp_server import McpServer, mcp_server
from tests.model_server import ScriptedModel, text, tool_call
from vaults import crypto
from vaults import services as vaults

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("outbound_private")]

TOKEN = "mcp-secret-token-4242"


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        settings.GALLEY_MCP_TIMEOUT_SECONDS = 2.0
        yield server


@pytest.fixture
def mcp() -> Iterator[McpServer]:
    with mcp_server() as server:
        yield server


@pytest.fixture(autouse=True)
def isolated_keys(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    crypto.reset_cache()
    yield
    crypto.reset_cache()


def mcp_session(
    url: str,
    *,
    policy: str = "always_allow",
    configs: list[dict[str, Any]] | None = None,
    vault_ids: list[str] | None = None,
) -> Session:
    session = make_session()
    snapshot = dict(session.agent_snapshot)
    snapshot["mcp_servers"] = [{"type": "url", "name": "calc", "url": url}]
    snapshot["tools"] = [
        {
            "type": "mcp_toolset",
            "mcp_server_name": "calc",
            "default_config": {"enabled": True, "permission_policy": {"type": policy}},
            "configs": configs or [],
        }
    ]
    Session.objects.filter(pk=session.pk).update(agent_snapshot=snapshot, vault_ids=vault_ids or [])
    return Session.objects.get(pk=session.pk)


def bearer_vault(url: str, token: str = TOKEN) -> str:
    from accounts.services import workspace_get_default

    vault = vaults.vault_create(workspace=workspace_get_default(), body={"display_name": "mcp"})
    vaults.credential_create(
        vault=vault, body={"auth": {"type": "static_bearer", "mcp_server_url": url, "token": token}}
    )
    return vault.id


def all_payloads(session: Session) -> str:
    return json.dumps(list(Event.objects.filter(session_id=session.pk).values_list("payload", flat=True)))


@pytest.mark.parametrize("sse", [False, True])
def test_discovered_tools_are_offered_and_an_allowed_call_reaches_the_model(
    model: ScriptedModel, mcp: McpServer, sse: bool
) -> None:
    mcp.sse = sse
    session = mcp_session(mcp.url)
    model.push(tool_call("mcp__calc__add", {"a": 2, "b": 3}, say="Adding."), text("It is 5."))
    say(session, "2+3?")
    step(session)

    offered = {tool["name"]: tool for tool in model.requests[0]["tools"]}
    assert set(offered) == {"mcp__calc__add", "mcp__calc__echo"}  # both pages of tools/list
    assert offered["mcp__calc__add"]["input_schema"]["required"] == ["a", "b"]
    assert offered["mcp__calc__echo"]["description"] == "Echo the text back."
    use = events_of(session, "agent.mcp_tool_use")[0]
    assert use.payload == {
        "mcp_server_name": "calc",
        "name": "add",
        "input": {"a": 2, "b": 3},
        "evaluated_permission": "allow",
        "evaluation": {"type": "always_allow"},
    }
    result = events_of(session, "agent.mcp_tool_result")[0]
    assert result.payload == {
        "mcp_tool_use_id": use.id,
        "content": [{"type": "text", "text": "5"}],
        "is_error": False,
    }
    second = model.requests[1]["messages"]
    assert second[-2]["content"][-1] == {
        "type": "tool_use",
        "id": use.id,
        "name": "mcp__calc__add",
        "input": {"a": 2, "b": 3},
    }
    tool_result = second[-1]["content"][0]
    assert tool_result["tool_use_id"] == use.id and tool_result["content"][0]["text"] == "5"
    assert Session.objects.get(pk=session.pk).status == "idle"
    assert log_types(session)[-2:] == ["span.model_request_end", "session.status_idle"]
    # One MCP session per step: initialize once, the session id carried on later requests.
    assert len(mcp.calls("initialize")) == 1
    assert mcp.calls("tools/call")[0].session_id == "mcp-session-1"


def test_always_ask_waits_for_confirmation_then_runs(model: ScriptedModel, mcp: McpServer) -> None:
    session = mcp_session(
        mcp.url, configs=[{"name": "echo", "enabled": True, "permission_policy": {"type": "always_ask"}}]
    )
    model.push(tool_call("mcp__calc__echo", {"text": "hi"}), text("Echoed."))
    say(session, "echo hi")
    step(session)
    use = events_of(session, "agent.mcp_tool_use")[0]
    assert use.payload["evaluated_permission"] == "ask"
    assert use.payload["evaluation"] == {"type": "always_ask"}
    idle = events_of(session, "session.status_idle")[-1]
    assert idle.payload["stop_reason"] == {"type": "requires_action", "event_ids": [use.id]}
    assert mcp.calls("tools/call") == []

    send(session, "user.tool_confirmation", {"tool_use_id": use.id, "result": "allow"})
    step(session)
    result = events_of(session, "agent.mcp_tool_result")[0]
    assert result.payload["content"] == [{"type": "text", "text": "hi"}]
    assert len(mcp.calls("tools/call")) == 1
    assert events_of(session, "agent.message")[-1].payload["content"][0]["text"] == "Echoed."
    assert Session.objects.get(pk=session.pk).stop_reason == {"type": "end_turn"}


def test_a_denied_call_gives_the_denial_to_the_model(model: ScriptedModel, mcp: McpServer) -> None:
    session = mcp_session(mcp.url, policy="always_ask")
    model.push(tool_call("mcp__calc__add", {"a": 1, "b": 1}), text("Fine, I will not."))
    say(session, "1+1?")
    step(session)
    use = events_of(session, "agent.mcp_tool_use")[0]
    send(session, "user.tool_confirmation", {"tool_use_id": use.id, "result": "deny", "deny_message": "no"})
    step(session)
    result = events_of(session, "agent.mcp_tool_result")[0]
    assert result.payload["mcp_tool_use_id"] == use.id and result.payload["is_error"] is True
    assert "Permission denied by the user: no" in result.payload["content"][0]["text"]
    assert mcp.calls("tools/call") == []
    assert model.requests[-1]["messages"][-1]["content"][0]["is_error"] is True


def test_the_vault_token_reaches_the_server_and_nowhere_else(
    model: ScriptedModel, mcp: McpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mcp.required_token = TOKEN
    other = bearer_vault("http://127.0.0.1:1/other", token="unrelated-token")
    session = mcp_session(mcp.url, vault_ids=[other, bearer_vault(mcp.url)])
    model.push(tool_call("mcp__calc__add", {"a": 20, "b": 22}), text("42."))
    say(session, "20+22?")
    step(session)
    assert events_of(session, "agent.mcp_tool_result")[0].payload["content"][0]["text"] == "42"
    assert {seen.authorization for seen in mcp.seen} == {f"Bearer {TOKEN}"}
    assert TOKEN not in all_payloads(session)
    assert TOKEN not in json.dumps(model.requests)
    assert TOKEN not in caplog.text
    assert events_of(session, "session.error") == []


def test_an_unreachable_server_is_reported_and_the_turn_still_ends(model: ScriptedModel) -> None:
    session = mcp_session(f"http://127.0.0.1:{free_port()}/mcp")
    model.push(text("I cannot reach the calculator."))
    say(session, "2+3?")
    step(session)
    error = events_of(session, "session.error")[0].payload["error"]
    assert error["type"] == "mcp_connection_failed_error"
    assert error["mcp_server_name"] == "calc"
    assert error["retry_status"] == {"type": "exhausted"}
    assert "calc" in error["message"]
    assert "tools" not in model.requests[0] or model.requests[0]["tools"] == []
    assert Session.objects.get(pk=session.pk).stop_reason == {"type": "end_turn"}


def test_a_failing_call_is_an_error_result_and_a_session_error(model: ScriptedModel, mcp: McpServer) -> None:
    mcp.fail_method = "tools/call"
    session = mcp_session(mcp.url)
    model.push(tool_call("mcp__calc__add", {"a": 1, "b": 2}), text("The tool failed."))
    say(session, "1+2?")
    step(session)
    result = events_of(session, "agent.mcp_tool_result")[0]
    assert result.payload["is_error"] is True
    assert "HTTP 502" in result.payload["content"][0]["text"]
    error = events_of(session, "session.error")[0]
    assert error.payload["error"]["type"] == "mcp_connection_failed_error"
    assert error.seq < result.seq
    assert model.requests[1]["messages"][-1]["content"][0]["is_error"] is True
    assert Session.objects.get(pk=session.pk).stop_reason == {"type": "end_turn"}


def test_a_refused_token_is_an_authentication_error(model: ScriptedModel, mcp: McpServer) -> None:
    mcp.required_token = TOKEN
    session = mcp_session(mcp.url, vault_ids=[bearer_vault(mcp.url, token="wrong-token")])
    model.push(text("The calculator refused me."))
    say(session, "2+3?")
    step(session)
    error = events_of(session, "session.error")[0].payload["error"]
    assert error["type"] == "mcp_authentication_failed_error"
    assert error["mcp_server_name"] == "calc"
    assert "wrong-token" not in all_payloads(session)
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_an_mcp_call_lost_in_a_crash_is_not_run_again(model: ScriptedModel, mcp: McpServer) -> None:
    session = mcp_session(mcp.url)
    say(session, "2+3?")
    with transaction.atomic():
        locked = Session.objects.select_for_update().get(pk=session.pk)
        Event.objects.filter(session_id=session.pk).update(processed_at=locked.created_at)
        start = events_append(session=locked, events=[NewEvent("span.model_request_start", {})])[0]
        use = events_append(
            session=locked,
            events=[
                NewEvent(
                    "agent.mcp_tool_use",
                    {
                        "mcp_server_name": "calc",
                        "name": "add",
                        "input": {"a": 2, "b": 3},
                        "evaluated_permission": "allow",
                        "evaluation": {"type": "always_allow"},
                    },
                ),
                NewEvent(
                    "span.model_request_end",
                    {
                        "model_request_start_id": start.id,
                        "model_usage": {"input_tokens": 1, "output_tokens": 1},
                    },
                ),
            ],
        )[0]
        session_set_status(session=locked, status="running")
    model.push(text("It may have run; I will check."))
    step(session)
    result = events_of(session, "agent.mcp_tool_result")[0]
    assert result.payload == {
        "mcp_tool_use_id": use.id,
        "content": [{"type": "text", "text": LOST}],
        "is_error": True,
    }
    assert mcp.calls("tools/call") == []
    assert Session.objects.get(pk=session.pk).stop_reason == {"type": "end_turn"}


def test_a_refused_mcp_oauth_token_is_refreshed_once_and_kept(model: ScriptedModel, mcp: McpServer) -> None:
    from accounts.services import workspace_get_default
    from vaults.models import Credential

    mcp.required_token = TOKEN
    vault = vaults.vault_create(workspace=workspace_get_default(), body={"display_name": "oauth"})
    credential = vaults.credential_create(
        vault=vault,
        body={
            "auth": {
                "type": "mcp_oauth",
                "mcp_server_url": mcp.url,
                "access_token": "stale-access-token",
                "refresh": {
                    "refresh_token": mcp.refresh_token,
                    "client_id": "galley-test",
                    "token_endpoint": mcp.token_url,
                    "token_endpoint_auth": {"type": "none"},
                },
            }
        },
    )
    session = mcp_session(mcp.url, vault_ids=[vault.id])
    model.push(tool_call("mcp__calc__add", {"a": 1, "b": 2}), text("3."))
    say(session, "1+2?")
    step(session)
    assert events_of(session, "session.error") == []
    assert events_of(session, "agent.mcp_tool_result")[0].payload["content"][0]["text"] == "3"
    assert mcp.token_requests == 1
    assert Credential.objects.get(pk=credential.pk).secret()["access_token"] == TOKEN
    assert mcp.calls("tools/call")[0].authorization == f"Bearer {TOKEN}"
    assert TOKEN not in all_payloads(session) and "stale-access-token" not in all_payloads(session)


def test_interrupt_stops_waiting_for_a_slow_mcp_call(model: ScriptedModel, mcp: McpServer) -> None:
    mcp.call_delay = 1.5
    session = mcp_session(mcp.url)
    model.push(tool_call("mcp__calc__add", {"a": 1, "b": 2}))
    say(session, "1+2?")
    worker = step_in_background(session)
    wait_for(lambda: mcp.calls("tools/call"))
    sent = time.monotonic()
    send(session, "user.interrupt", {})
    wait_for(lambda: Session.objects.get(pk=session.pk).status == "idle", timeout=5)
    assert time.monotonic() - sent < 1.0
    worker.join(5)
    result = events_of(session, "agent.mcp_tool_result")[0]
    assert result.payload["is_error"] is True and result.payload["content"][0]["text"] == INTERRUPTED
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert len(model.requests) == 1


def test_a_disabled_mcp_tool_is_not_offered_and_cannot_be_called(
    model: ScriptedModel, mcp: McpServer
) -> None:
    session = mcp_session(
        mcp.url, configs=[{"name": "echo", "enabled": False, "permission_policy": {"type": "always_allow"}}]
    )
    model.push(tool_call("mcp__calc__echo", {"text": "x"}), text("Not available."))
    say(session, "echo x")
    step(session)
    assert [tool["name"] for tool in model.requests[0]["tools"]] == ["mcp__calc__add"]
    refusal = events_of(session, "agent.tool_use")[0]
    assert refusal.payload["evaluated_permission"] == "deny"
    assert events_of(session, "agent.tool_result")[0].payload["is_error"] is True
    assert events_of(session, "agent.mcp_tool_use") == [] and mcp.calls("tools/call") == []

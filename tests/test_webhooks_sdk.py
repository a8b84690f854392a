"""Webhooks as code written for the hosted service uses them: endpoints managed with
`client.beta.organization.webhooks`, deliveries verified with `client.beta.webhooks.unwrap`,
against a live Galley (web and a real Celery worker) whose model is scripted.

The SDK types `enabled_events` as a Literal of the organization-level event types only
(external_key.*, user_profile.*), so endpoint responses carrying session events are read with a
client without strict response validation; every other call validates strictly."""

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.live import LiveGalley, live_galley
from tests.model_server import ScriptedModel, text
from tests.webhook_receiver import Received, webhook_receiver

pytestmark = pytest.mark.slow

RETRY_ENV = {
    "GALLEY_WEBHOOK_ALLOW_PRIVATE": "1",
    "GALLEY_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,0.5,0.5,0.5",
    "GALLEY_WEBHOOK_SWEEP_SECONDS": "0.5",
    "GALLEY_WEBHOOK_DISABLE_AFTER_FAILURES": "4",
}


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url, **RETRY_ENV}
    with live_galley(env) as server:
        yield server


def loose(galley: LiveGalley) -> anthropic.Anthropic:
    return galley.client(_strict_response_validation=False)


def create_endpoint(galley: LiveGalley, url: str, events: list[str]) -> Any:
    return loose(galley).beta.organization.webhooks.create(url=url, enabled_events=events, name="test")  # type: ignore[arg-type]


def test_the_slack_bot_flow(galley: LiveGalley, model: ScriptedModel) -> None:
    """Start a session naming a channel, send the task; the receiver unwraps the signed
    session.status_idled, retrieves the session, reads its metadata and the last agent.message."""
    client = galley.client()
    answers: list[dict[str, Any]] = []

    def handle(item: Received) -> None:
        event = client.beta.webhooks.unwrap(item.body, headers=item.headers, key=secret)
        if event.data.type != "session.status_idled":
            return
        session = client.beta.sessions.retrieve(event.data.id)
        messages = [e for e in client.beta.sessions.events.list(session.id) if e.type == "agent.message"]
        answers.append(
            {
                "session": session.id,
                "channel": session.metadata["slack_channel"],
                "thread": session.metadata["slack_thread_ts"],
                "reply": messages[-1].content[0].text,
            }
        )

    with webhook_receiver(on_request=handle) as rx:
        endpoint = create_endpoint(galley, rx.url, ["session.status_idled", "session.status_run_started"])
        secret = endpoint.signing_secret
        assert secret.startswith("whsec_")
        suffix = secrets.token_hex(3)
        agent = client.beta.agents.create(name=f"slack-{suffix}", model="claude-sonnet-4-6")
        environment = client.beta.environments.create(name=f"slack-env-{suffix}")
        session = client.beta.sessions.create(
            agent=agent.id,
            environment_id=environment.id,
            metadata={"slack_channel": "C0123", "slack_thread_ts": "1733000000.000100"},
        )
        model.push(text("The build is green."))
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Status?"}]}]
        )
        rx.wait_for(lambda _seen: bool(answers), timeout=60)
        types = [json.loads(r.body)["data"]["type"] for r in rx.received]
    assert answers == [
        {
            "session": session.id,
            "channel": "C0123",
            "thread": "1733000000.000100",
            "reply": "The build is green.",
        }
    ]
    assert types == ["session.status_run_started", "session.status_idled"]
    body = json.loads(rx.received[-1].body)
    assert set(body) == {"type", "id", "created_at", "data"} and body["type"] == "event"
    assert set(body["data"]) == {"type", "id", "organization_id", "workspace_id"}
    with pytest.raises(Exception, match="signature"):
        client.beta.webhooks.unwrap(
            rx.received[-1].body, headers=rx.received[-1].headers, key="whsec_" + "A" * 43
        )


def test_a_receiver_that_fails_twice_gets_the_same_id_three_times(galley: LiveGalley) -> None:
    with webhook_receiver(script=[500, 502]) as rx:
        endpoint = create_endpoint(galley, rx.url, ["environment.created"])
        environment = galley.client().beta.environments.create(name=f"retry-{secrets.token_hex(3)}")
        seen = rx.wait_for(lambda got: any(r.answered == 200 for r in got), timeout=60)
    assert [r.answered for r in seen] == [500, 502, 200]
    assert len({r.headers["webhook-id"] for r in seen}) == 1
    for item in seen:
        event = galley.client().beta.webhooks.unwrap(
            item.body, headers=item.headers, key=endpoint.signing_secret
        )
        assert event.data.type == "environment.created" and event.data.id == environment.id


def test_endpoint_management_through_the_sdk(galley: LiveGalley) -> None:
    hooks = loose(galley).beta.organization.webhooks
    created = hooks.create(url="https://hooks.example.com/a", enabled_events=["*"], description="d")  # type: ignore[list-item]
    assert created.signing_secret.startswith("whsec_") and created.state == "enabled"
    got = hooks.retrieve(created.id)
    assert got.url == "https://hooks.example.com/a" and not hasattr(got, "signing_secret")
    assert created.id in [e.id for e in hooks.list()]
    updated = hooks.update(created.id, state="disabled", enabled_events=["agent.created"])  # type: ignore[list-item]
    assert updated.state == "disabled" and updated.enabled_events == ["agent.created"]
    rotated = hooks.regenerate_signing_secret(created.id)
    assert rotated.signing_secret.startswith("whsec_") and rotated.signing_secret != created.signing_secret
    for bad, field in (
        ({"url": "ftp://hooks.example.com", "enabled_events": ["*"]}, "url"),
        ({"url": "https://hooks.example.com", "enabled_events": ["session.bogus"]}, "enabled_events[0]"),
    ):
        with pytest.raises(anthropic.BadRequestError) as info:
            hooks.create(**bad)  # type: ignore[arg-type]
        assert info.value.body["error"]["message"].startswith(field + ":")  # type: ignore[index]
    deleted = galley.client().beta.organization.webhooks.delete(created.id)
    assert deleted.type == "webhook_endpoint_deleted"
    with pytest.raises(anthropic.NotFoundError):
        hooks.retrieve(created.id)


def test_an_endpoint_failing_again_and_again_is_disabled(galley: LiveGalley) -> None:
    hooks = loose(galley).beta.organization.webhooks
    with webhook_receiver(default=500) as rx:
        endpoint = create_endpoint(galley, rx.url, ["agent.created"])
        galley.client().beta.agents.create(name=f"doomed-{secrets.token_hex(3)}", model="claude-sonnet-4-6")
        rx.wait_for(lambda got: len(got) >= 4, timeout=60)
        for _ in range(100):
            state = hooks.retrieve(endpoint.id)
            if state.state == "disabled":
                break
            time.sleep(0.1)
    assert state.state == "disabled" and "4 failed delivery attempts" in state.disabled_reason
    assert len(rx.received) == 4

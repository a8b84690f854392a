"""GALLEY_SESSION_LOG_BYTES: one session's event log is bounded. A send past it is refused with a
413 and writes nothing; a harness step that reaches it ends the session with a terminal
session.error; the appends that end a session are never refused."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from anthropic.types.beta.sessions.beta_managed_agents_session_error_event import (
    BetaManagedAgentsSessionErrorEvent,
)
from django.test import Client

from sessions.models import Event, Session
from sessions.services import EVENT_OVERHEAD
from tests.harness_helpers import TOOLSET_ALL, events_of, harness_model, log_types, make_session, say, step
from tests.model_server import ScriptedModel, text, tool_call
from tests.session_fixtures import make_agent, make_environment

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 4096


def _message(size: int) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": "m" * size}]}


def _counted(session_id: str) -> int:
    """The log's size as sessions.services counts an append: each event's payload JSON, its type
    and a fixed overhead."""
    return sum(
        len(json.dumps(payload)) + len(kind) + EVENT_OVERHEAD
        for kind, payload in Event.objects.filter(session_id=session_id).values_list("type", "payload")
    )


class Api:
    def __init__(self, api_key: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.session_id = ""

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.client.post(
            f"/v1{path}", json.dumps(body), content_type="application/json", headers=self.headers
        )

    def send(self, *events: dict[str, Any]) -> Any:
        return self.post(f"/sessions/{self.session_id}/events", {"events": list(events)})


@pytest.fixture
def api(settings, workspace, api_key):  # type: ignore[no-untyped-def]
    settings.GALLEY_SESSION_LOG_BYTES = LIMIT
    api = Api(api_key)
    agent = make_agent(workspace)
    environment = make_environment(workspace)
    created = api.post("/sessions", {"agent": agent.id, "environment_id": environment.id})
    assert created.status_code == 200, created.content
    api.session_id = created.json()["id"]
    return api


def test_a_send_past_the_log_limit_is_a_413_naming_it_and_writes_nothing(api: Api) -> None:
    session_id = api.session_id
    assert api.send(_message(100)).status_code == 200
    before = list(Event.objects.filter(session_id=session_id).values_list("id", flat=True))
    counted = Session.objects.get(pk=session_id).log_bytes
    assert counted == _counted(session_id)  # the running counter is the log's size, exactly

    refused = api.send(_message(100), _message(LIMIT))
    assert refused.status_code == 413, refused.content
    body = refused.json()
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    assert body["error"]["type"] == "request_too_large"
    assert body["error"]["details"] == {"error_code": "session_log_limit_reached", "limit_bytes": LIMIT}
    assert "GALLEY_SESSION_LOG_BYTES" in body["error"]["message"]
    # Nothing of the refused send was kept: no event, no byte counted, the seq allocator untouched.
    assert list(Event.objects.filter(session_id=session_id).values_list("id", flat=True)) == before
    row = Session.objects.get(pk=session_id)
    assert row.log_bytes == counted and row.last_seq == len(before)

    # What still fits is taken.
    assert api.send(_message(100)).status_code == 200
    assert Session.objects.get(pk=session_id).log_bytes == _counted(session_id)


def test_a_full_log_still_lets_the_session_be_archived_and_deleted(api: Api) -> None:
    session_id = api.session_id
    sent = 0
    while api.send(_message(400)).status_code == 200:
        sent += 1
    assert sent > 1 and Session.objects.get(pk=session_id).log_bytes <= LIMIT
    archived = api.post(f"/sessions/{session_id}/archive", {})
    assert archived.status_code == 200, archived.content
    assert archived.json()["status"] == "terminated"
    assert log_types(session_id)[-1] == "session.status_terminated"
    gone = api.client.delete(f"/v1/sessions/{session_id}", headers=api.headers)
    assert gone.status_code == 200, gone.content
    assert not Session.objects.filter(pk=session_id).exists()


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    settings.GALLEY_SESSION_LOG_BYTES = LIMIT
    with harness_model(settings) as server:
        yield server


def _ended_by_the_limit(session: Session) -> None:
    row = Session.objects.get(pk=session.pk)
    assert row.status == "terminated" and row.lease_owner is None
    [error] = events_of(session, "session.error")
    assert log_types(session)[-2:] == ["session.error", "session.status_terminated"]
    assert error.payload["error"]["type"] == "unknown_error"
    assert error.payload["error"]["retry_status"] == {"type": "terminal"}
    assert "GALLEY_SESSION_LOG_BYTES" in error.payload["error"]["message"]
    # The official SDK's model of the event reads it as it is served.
    wire = BetaManagedAgentsSessionErrorEvent.model_validate(error.wire())
    assert wire.error.type == "unknown_error" and wire.error.retry_status.type == "terminal"


def test_a_model_answer_past_the_limit_ends_the_session_with_a_terminal_error(model: ScriptedModel) -> None:
    session = make_session()
    model.push(text("a" * LIMIT), text("never asked"))
    say(session, "Write a lot")
    step(session)  # returns: the session ended, nothing hangs
    _ended_by_the_limit(session)
    # The answer that did not fit was not written, and the model was not asked again.
    assert not events_of(session, "agent.message")
    assert len(model.requests) == 1
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "session.error",
        "session.status_terminated",
    ]


@pytest.mark.sandbox
def test_a_tool_result_past_the_limit_ends_the_session_with_a_terminal_error(model: ScriptedModel) -> None:
    session = make_session(tools=[TOOLSET_ALL])
    model.push(tool_call("bash", {"command": "head -c 8000 /dev/zero | tr '\\0' x"}), text("never asked"))
    say(session, "Print a lot")
    step(session)
    _ended_by_the_limit(session)
    assert events_of(session, "agent.tool_use") and not events_of(session, "agent.tool_result")
    assert len(model.requests) == 1

"""Session actions from the console go through the API's services: starting a session from an
agent, sending messages, answering confirmations and custom tools, interrupting, archiving."""

import pytest
from django.db import transaction

from accounts.models import Role
from sessions.models import Event, Session
from sessions.services import NewEvent, events_append, session_set_status
from tests.console_factories import (  # noqa: F401
    client_for,
    fast_passwords,
    make_agent,
    make_environment,
    make_session,
    text,
)

pytestmark = pytest.mark.django_db


def _waiting_on(session: Session, type_: str, payload: dict) -> Event:
    with transaction.atomic():
        event = events_append(session=session, events=[NewEvent(type_, payload)])[0]
        locked = Session.objects.select_for_update().get(pk=session.pk)
        session_set_status(
            session=locked, status="idle", stop_reason={"type": "requires_action", "event_ids": [event.id]}
        )
    return event


def test_editor_starts_a_session_from_the_agent_page(workspace):
    agent = make_agent(workspace)
    env = make_environment(workspace)
    client = client_for(workspace, Role.EDITOR)
    response = client.post(
        f"/agents/{agent.pk}/start",
        {"environment_id": env.pk, "title": "First try", "message": "What is 2+2?"},
    )
    assert response.status_code == 302
    session = Session.objects.get()
    assert response["Location"] == f"/sessions/{session.pk}"
    assert session.title == "First try" and session.agent_id == agent.pk
    first = session.events.get(type="user.message")
    assert first.payload["content"] == text("What is 2+2?")
    page = client.get(f"/sessions/{session.pk}").content.decode()
    assert "What is 2+2?" in page


def test_starting_without_a_valid_environment_explains(workspace):
    agent = make_agent(workspace)
    make_environment(workspace)  # the form is shown; the one posted has gone since
    client = client_for(workspace, Role.EDITOR)
    response = client.post(
        f"/agents/{agent.pk}/start", {"environment_id": "env_missing", "title": "Kept", "message": "Hi?"}
    )
    assert response.status_code == 400  # the agent page again, not a redirect with a flash
    page = response.content.decode()
    assert 'id="error-summary"' in page
    assert "Environment &#x27;env_missing&#x27; was not found." in page
    assert 'id="environment_id-error"' in page  # on the field it concerns
    assert 'name="title" value="Kept"' in page and ">Hi?</textarea>" in page
    assert Session.objects.count() == 0


def test_send_message_and_interrupt(workspace):
    session = make_session(workspace)
    client = client_for(workspace, Role.EDITOR)
    empty = client.post(f"/sessions/{session.pk}/send", {"text": "   "}, follow=True)
    assert b"Write a message" in empty.content
    client.post(f"/sessions/{session.pk}/send", {"text": "Hello there"})
    assert session.events.filter(type="user.message").count() == 1
    client.post(f"/sessions/{session.pk}/interrupt")
    assert session.events.filter(type="user.interrupt").count() == 1


def test_approve_and_deny_tool_confirmations(workspace):
    session = make_session(workspace)
    use = _waiting_on(
        session,
        "agent.tool_use",
        {
            "name": "bash",
            "input": {"command": "ls"},
            "evaluated_permission": "ask",
            "evaluation": {"type": "always_ask"},
        },
    )
    client = client_for(workspace, Role.EDITOR)
    page = client.get(f"/sessions/{session.pk}").content.decode()
    assert "The agent wants to run bash." in page
    client.post(
        f"/sessions/{session.pk}/confirm", {"tool_use_id": use.id, "result": "allow", "session_thread_id": ""}
    )
    confirmation = session.events.get(type="user.tool_confirmation")
    assert confirmation.payload["tool_use_id"] == use.id and confirmation.payload["result"] == "allow"
    again = client.post(
        f"/sessions/{session.pk}/confirm", {"tool_use_id": use.id, "result": "deny"}, follow=True
    )
    assert b"not awaiting confirmation" in again.content
    assert session.events.filter(type="user.tool_confirmation").count() == 1
    other = make_session(workspace)
    use2 = _waiting_on(other, "agent.tool_use", {"name": "bash", "input": {}, "evaluated_permission": "ask"})
    client.post(
        f"/sessions/{other.pk}/confirm", {"tool_use_id": use2.id, "result": "deny", "deny_message": "Not now"}
    )
    denial = other.events.get(type="user.tool_confirmation")
    assert denial.payload["result"] == "deny" and denial.payload["deny_message"] == "Not now"


def test_answer_a_custom_tool_call(workspace):
    session = make_session(workspace)
    call = _waiting_on(session, "agent.custom_tool_use", {"name": "lookup_order", "input": {"number": "42"}})
    client = client_for(workspace, Role.EDITOR)
    page = client.get(f"/sessions/{session.pk}").content.decode()
    assert "lookup_order" in page and "Send result" in page
    client.post(f"/sessions/{session.pk}/custom-result", {"custom_tool_use_id": call.id, "text": "Shipped"})
    result = session.events.get(type="user.custom_tool_result")
    assert result.payload["content"] == text("Shipped") and result.payload["is_error"] is False


def test_archive_a_session(workspace):
    session = make_session(workspace)
    client = client_for(workspace, Role.EDITOR)
    client.post(f"/sessions/{session.pk}/archive")
    session.refresh_from_db()
    assert session.archived_at is not None
    assert session.pk not in client.get("/sessions").content.decode()
    page = client.get(f"/sessions/{session.pk}").content.decode()
    assert "composer-text" not in page

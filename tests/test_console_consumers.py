"""The live session websocket: who may connect, and that new log entries arrive as chat HTML."""

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.db import transaction

from accounts.models import Role, Workspace
from console.ws_routes import websocket_urlpatterns
from sessions.models import Session
from sessions.services import NewEvent, events_append, session_set_status
from tests.console_factories import add_events, fast_passwords, make_session, make_user, text  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def _communicator(user: Any, session_id: str, after: int = 0) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/sessions/{session_id}?after={after}"
    )
    communicator.scope["user"] = user
    return communicator


async def _receive_until(
    communicator: WebsocketCommunicator, predicate: Any, timeout: float = 5
) -> list[dict]:
    seen: list[dict] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        message = json.loads(await communicator.receive_from(timeout=max(0.01, deadline - loop.time())))
        seen.append(message)
        if predicate(message):
            return seen


def test_member_gets_backlog_then_new_events_live(workspace):
    session = make_session(workspace)
    add_events(session, [("user.message", {"content": text("hello agent")})])
    user = make_user(workspace, Role.VIEWER)

    def append_reply() -> None:
        with transaction.atomic():
            events_append(
                session=session.pk, events=[NewEvent("agent.message", {"content": text("hello human")})]
            )

    async def scenario() -> None:
        from channels.db import database_sync_to_async

        communicator = _communicator(user, session.pk)
        connected, _ = await communicator.connect()
        assert connected
        backlog = await _receive_until(communicator, lambda m: "actions_html" in m)
        assert backlog[0]["seq"] == 1 and "hello agent" in backlog[0]["html"]
        await database_sync_to_async(append_reply)()
        live = await _receive_until(communicator, lambda m: m.get("seq") == 2)
        assert "hello human" in live[-1]["html"] and 'class="msg agent"' in live[-1]["html"]
        await communicator.disconnect()

    async_to_sync(scenario)()


def test_status_change_pushes_pending_confirmation(workspace):
    session = make_session(workspace)
    use = add_events(
        session,
        [
            (
                "agent.tool_use",
                {"name": "bash", "input": {"command": "rm -rf build"}, "evaluated_permission": "ask"},
            )
        ],
    )[0]
    user = make_user(workspace, Role.EDITOR)

    def go_idle() -> None:
        with transaction.atomic():
            locked = Session.objects.select_for_update().get(pk=session.pk)
            session_set_status(
                session=locked, status="idle", stop_reason={"type": "requires_action", "event_ids": [use.id]}
            )

    async def scenario() -> None:
        from channels.db import database_sync_to_async

        communicator = _communicator(user, session.pk, after=1)
        assert (await communicator.connect())[0]
        await _receive_until(communicator, lambda m: "actions_html" in m)
        await database_sync_to_async(go_idle)()
        pushed = await _receive_until(
            communicator, lambda m: "wants to run bash" in m.get("actions_html", "")
        )
        assert pushed[-1]["status"] == "idle"
        assert pushed[-1]["usage"].startswith("0 in / 0 out tokens")
        assert f'value="{use.id}"' in pushed[-1]["actions_html"] and "Approve" in pushed[-1]["actions_html"]
        await communicator.disconnect()

    async_to_sync(scenario)()


@pytest.mark.parametrize("who", ["anonymous", "other_workspace", "no_membership"])
def test_outsiders_are_refused(workspace, who):
    from django.contrib.auth import get_user_model

    session = make_session(workspace)
    if who == "anonymous":
        user: Any = AnonymousUser()
    elif who == "other_workspace":
        user = make_user(Workspace.objects.create(name="Other"), Role.ADMIN, "outsider")
    else:
        user = get_user_model().objects.create_user(username="nobody", password="x" * 12)

    async def scenario() -> None:
        communicator = _communicator(user, session.pk)
        connected, code = await communicator.connect()
        assert not connected and code == 4403

    async_to_sync(scenario)()


def test_socket_closes_when_the_session_is_deleted(workspace):
    session = make_session(workspace)
    user = make_user(workspace, Role.VIEWER)

    def delete() -> None:
        Session.objects.filter(pk=session.pk).delete()

    async def scenario() -> None:
        from channels.db import database_sync_to_async

        communicator = _communicator(user, session.pk)
        assert (await communicator.connect())[0]
        await _receive_until(communicator, lambda m: "actions_html" in m)
        await database_sync_to_async(delete)()
        await _receive_until(communicator, lambda m: m.get("gone") is True)
        closed = await communicator.receive_output(timeout=5)
        assert closed["type"] == "websocket.close" and closed["code"] == 4404

    async_to_sync(scenario)()


def test_typing_previews_pass_through(workspace):
    from sessions import streaming

    session = make_session(workspace)
    user = make_user(workspace, Role.VIEWER)

    async def scenario() -> None:
        communicator = _communicator(user, session.pk)
        assert (await communicator.connect())[0]
        await _receive_until(communicator, lambda m: "actions_html" in m)
        await asyncio.sleep(0.05)
        start = {"type": "event_start", "event": {"type": "agent.message", "id": "sevt_preview"}}
        streaming.publish_preview(session.pk, None, start)
        delta = {"content": {"type": "text", "text": "Hel"}}
        streaming.publish_preview(
            session.pk, None, {"type": "event_delta", "event_id": "sevt_preview", "delta": delta}
        )
        got = await _receive_until(communicator, lambda m: (m.get("preview") or {}).get("text") == "Hel")
        assert got[-1]["preview"]["id"] == "sevt_preview"
        await communicator.disconnect()

    async_to_sync(scenario)()

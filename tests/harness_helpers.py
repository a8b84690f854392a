"""Small builders for harness tests: an agent, a session, and user events sent the way the
events API does (append queued, move an idle session to running)."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction

from agents.models import Agent, AgentVersion, Environment
from api.ids import new_id
from sessions.models import Event, Session
from sessions.services import NewEvent, events_append, session_set_status

TOOLSET_ALL = {
    "type": "agent_toolset_20260401",
    "default_config": {"enabled": True, "permission_policy": {"type": "always_allow"}},
    "configs": [],
}


def custom_tool(name: str = "get_weather") -> dict[str, Any]:
    return {
        "type": "custom",
        "name": name,
        "description": f"The {name} tool",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }


def make_session(
    *,
    model: str = "claude-sonnet-4-6",
    system: str | None = "You are terse.",
    tools: list[dict[str, Any]] | None = None,
) -> Session:
    from accounts.services import workspace_get_default

    workspace = workspace_get_default()
    agent = Agent.objects.create(id=new_id("agent"), workspace=workspace, name="tester")
    definition = {
        "name": "tester",
        "description": None,
        "system": system,
        "model": {"id": model, "effort": None, "speed": "standard", "inference_geo": None},
        "tools": tools or [],
        "mcp_servers": [],
        "skills": [],
        "multiagent": None,
        "execution_identity": {"type": "service_account"},
        "metadata": {},
    }
    version = AgentVersion.objects.create(agent=agent, version=1, definition=definition)
    env = Environment.objects.create(
        id=new_id("env"),
        workspace=workspace,
        name=new_id("envname"),
        config={"type": "cloud", "networking": {"type": "unrestricted"}, "packages": {}},
    )
    return Session.objects.create(
        id=new_id("sesn"),
        workspace=workspace,
        agent=agent,
        agent_version=1,
        agent_snapshot=version.snapshot(),
        environment=env,
    )


QUEUED = {"user.message", "user.interrupt", "user.tool_confirmation", "system.message"}


def send(session: Session | str, event_type: str, payload: dict[str, Any] | None = None) -> Event:
    """Append a user event like events.send does: queued events wait with processed_at null,
    and actionable input moves an idle session to running."""
    session_id = session if isinstance(session, str) else session.pk
    with transaction.atomic():
        locked = Session.objects.select_for_update().get(pk=session_id)
        event = events_append(
            session=locked, events=[NewEvent(event_type, payload or {}, processed=event_type not in QUEUED)]
        )[0]
        if locked.status in ("idle", "rescheduling") and event_type != "user.interrupt":
            session_set_status(session=locked, status="running")
    return event


def say(session: Session | str, text: str) -> Event:
    return send(session, "user.message", {"content": [{"type": "text", "text": text}]})


def log_types(session: Session | str) -> list[str]:
    session_id = session if isinstance(session, str) else session.pk
    return list(Event.objects.filter(session_id=session_id).order_by("seq").values_list("type", flat=True))


def events_of(session: Session | str, event_type: str) -> list[Event]:
    session_id = session if isinstance(session, str) else session.pk
    return list(Event.objects.filter(session_id=session_id, type=event_type).order_by("seq"))


def step(session: Session | str) -> None:
    """Run the session's harness work here until nothing moves: its step, then the child thread
    steps it kicked, each on its own thread at the same time (what worker threads do with the
    kicks), then the session's step again when a child kicked it or input is waiting."""
    from unittest import mock

    from django.db import connection

    from harness import threads
    from harness.services import _has_work, session_step

    session_id = session if isinstance(session, str) else session.pk
    kicked: set[str] = set()
    lock = threading.Lock()
    session_kicked = threading.Event()

    def thread_kick(kicked_session: str, thread_id: str) -> None:
        assert kicked_session == session_id
        with lock:
            kicked.add(thread_id)

    def run(thread_id: str) -> None:
        try:
            threads.thread_step(session_id=session_id, thread_id=thread_id)
        finally:
            connection.close()

    with (
        mock.patch.object(threads, "thread_kick", thread_kick),
        mock.patch.object(threads, "session_kick", lambda kicked_session: session_kicked.set()),
    ):
        while True:
            session_step(session_id=session_id)
            with lock:
                children = sorted(kicked)
                kicked.clear()
            if not children:
                return
            session_kicked.clear()
            workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in children]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            if not session_kicked.is_set() and not _has_work(session_id):
                return  # the children wait on something outside (a self-hosted worker's answer)


def step_in_background(session: Session | str) -> threading.Thread:
    from django.db import connection

    def run() -> None:
        try:
            step(session)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@contextmanager
def harness_model(settings: Any) -> Iterator[Any]:
    """A scripted model server the in-process harness talks to, reset afterwards."""
    from harness.providers.anthropic import AnthropicProvider
    from tests.model_server import scripted_model

    with scripted_model() as server:
        use_scripted_model(settings, server)
        try:
            yield server
        finally:
            AnthropicProvider._shared = None


def use_scripted_model(settings: Any, server: Any) -> None:
    """Point the harness's Anthropic provider at a scripted model server."""
    from harness.providers.anthropic import AnthropicProvider

    settings.ANTHROPIC_API_KEY = "sk-test"
    settings.ANTHROPIC_BASE_URL = server.base_url
    settings.GALLEY_MODEL_RETRY_BASE_SECONDS = 0.01
    settings.GALLEY_INTERRUPT_POLL_SECONDS = 0.05
    AnthropicProvider._shared = None

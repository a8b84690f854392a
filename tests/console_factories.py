"""Small ORM builders for console tests: rows shaped like the API would write them."""

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role, Workspace
from accounts.services import user_create
from agents.models import Agent, AgentVersion, Environment
from api.ids import new_id
from sessions.models import Event, Session, SessionThread

PASSWORD = "correct horse battery"


def make_user(workspace: Workspace, role: str, username: str | None = None) -> Any:
    return user_create(username=username or f"{role}-user", password=PASSWORD, role=role, workspace=workspace)


def client_for(workspace: Workspace, role: str) -> Client:
    client = Client()
    client.force_login(make_user(workspace, role))
    return client


def make_agent(
    workspace: Workspace, name: str = "Helper", model: str = "claude-sonnet-4-6", **extra: Any
) -> Agent:
    agent = Agent.objects.create(id=new_id("agent"), workspace=workspace, name=name)
    definition: dict[str, Any] = {
        "name": name,
        "description": None,
        "system": "Be helpful.",
        "model": {"id": model, "speed": "standard"},
        "tools": [],
        "mcp_servers": [],
        "skills": [],
        "multiagent": None,
        "execution_identity": {"type": "service_account"},
        "metadata": {},
    }
    definition.update(extra)
    AgentVersion.objects.create(agent=agent, version=1, definition=definition)
    return agent


def make_environment(workspace: Workspace, name: str = "default") -> Environment:
    return Environment.objects.create(
        id=new_id("env"),
        workspace=workspace,
        name=name,
        config={"type": "cloud", "networking": {"type": "unrestricted"}, "packages": {}},
    )


def make_session(
    workspace: Workspace, agent: Agent | None = None, env: Environment | None = None, **fields: Any
) -> Session:
    agent = agent or make_agent(workspace)
    env = env or Environment.objects.filter(workspace=workspace).first() or make_environment(workspace)
    return Session.objects.create(
        id=new_id("sesn"),
        workspace=workspace,
        agent=agent,
        agent_version=agent.current_version,
        agent_snapshot=agent.latest().snapshot(),
        environment=env,
        **fields,
    )


def add_events(
    session: Session,
    items: list[tuple[str, dict[str, Any]]],
    thread: SessionThread | None = None,
    at: dt.datetime | None = None,
) -> list[Event]:
    now = at or timezone.now()
    rows = []
    for index, (type_, payload) in enumerate(items):
        seq = session.last_seq + index + 1
        rows.append(
            Event(
                id=new_id("sevt"),
                session=session,
                thread=thread,
                seq=seq,
                type=type_,
                payload=payload,
                processed_at=now,
                created_at=now + dt.timedelta(milliseconds=10 * index),
            )
        )
    Event.objects.bulk_create(rows)
    session.last_seq += len(items)
    Session.objects.filter(pk=session.pk).update(last_seq=session.last_seq)
    return rows


def text(value: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": value}]


ROLES = (Role.ADMIN, Role.EDITOR, Role.VIEWER)


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """Console tests create many users; a slow hash only measures the hasher."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def add_turns(session: Session, turns: int) -> None:
    """A big log, bulk-inserted: `turns` turns of 8 events (a question, a model request of 100 in /
    10 out tokens with a bash call `echo item-<n>` and its result, the answer, the idle), 100 ms
    apart. The result of turns 7, 507, 1007, … is an error."""
    start = session.created_at
    rows: list[Event] = []
    seq = session.last_seq

    def add(type_: str, payload: dict[str, Any], ms: int) -> str:
        nonlocal seq
        seq += 1
        event = Event(
            id=new_id("sevt"),
            session=session,
            seq=seq,
            type=type_,
            payload=payload,
            processed_at=start,
            created_at=start + dt.timedelta(milliseconds=ms),
        )
        rows.append(event)
        return event.id

    usage = {"input_tokens": 100, "output_tokens": 10}
    for i in range(turns):
        t = i * 100
        add("user.message", {"content": text(f"Question {i}")}, t)
        add("session.status_running", {}, t)
        span = add("span.model_request_start", {}, t + 1)
        add("agent.message", {"content": text(f"Answer {i}")}, t + 20)
        call = {"name": "bash", "input": {"command": f"echo item-{i}"}, "evaluated_permission": "allow"}
        use = add("agent.tool_use", call, t + 21)
        result = {"tool_use_id": use, "content": text(str(i)), "is_error": i % 500 == 7}
        add("agent.tool_result", result, t + 40)
        end = {"model_request_start_id": span, "is_error": False, "model_usage": usage}
        add("span.model_request_end", end, t + 41)
        add("session.status_idle", {"stop_reason": {"type": "end_turn"}}, t + 42)
    Event.objects.bulk_create(rows, batch_size=2000)
    session.last_seq = seq
    Session.objects.filter(pk=session.pk).update(last_seq=seq)

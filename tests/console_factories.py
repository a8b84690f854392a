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

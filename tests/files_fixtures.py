"""Small builders for the files and session-resources tests."""

from typing import Any

from accounts.models import Workspace
from agents.models import Agent, AgentVersion, Environment
from api.ids import new_id
from sessions.models import Session

DEFINITION: dict[str, Any] = {
    "name": "files-test",
    "description": None,
    "system": None,
    "model": {"id": "claude-sonnet-4-6", "speed": "standard"},
    "tools": [],
    "mcp_servers": [],
    "skills": [],
    "multiagent": None,
    "metadata": {},
}


def make_session(workspace: Workspace) -> Session:
    agent = Agent.objects.create(id=new_id("agent"), workspace=workspace, name="files-test")
    version = AgentVersion.objects.create(agent=agent, version=1, definition=DEFINITION)
    environment = Environment.objects.create(
        id=new_id("env"),
        workspace=workspace,
        name="files-test-" + new_id("x")[-8:],
        config={"type": "cloud", "networking": {"type": "unrestricted"}, "packages": {}},
    )
    return Session.objects.create(
        id=new_id("sesn"),
        workspace=workspace,
        agent=agent,
        agent_version=1,
        agent_snapshot=version.snapshot(),
        environment=environment,
    )


# The same, as a `manage.py shell -c` program for a live server: prints the new session's id.
MAKE_SESSION_SHELL = """
from accounts.services import workspace_get_default
from tests.files_fixtures import make_session
print(make_session(workspace_get_default()).id)
"""

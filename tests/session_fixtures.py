"""Small ORM fixtures for session tests: an agent with versions and an environment in a workspace."""

from typing import Any

from accounts.models import Workspace
from agents.models import Agent, AgentVersion, Environment
from api.ids import new_id


def agent_definition(name: str = "helper", **extra: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": name,
        "description": None,
        "system": "You are helpful.",
        "model": {
            "id": "claude-sonnet-4-6",
            "effort": {"type": "high"},
            "speed": "standard",
            "inference_geo": None,
        },
        "tools": [],
        "mcp_servers": [],
        "skills": [],
        "multiagent": None,
        "execution_identity": {"type": "service_account"},
        "metadata": {},
    }
    definition.update(extra)
    return definition


def make_agent(workspace: Workspace, *, name: str = "helper", versions: int = 1) -> Agent:
    agent = Agent.objects.create(id=new_id("agent"), workspace=workspace, name=name, current_version=versions)
    for number in range(1, versions + 1):
        AgentVersion.objects.create(
            agent=agent,
            version=number,
            definition=agent_definition(name, system=f"You are helpful (v{number})."),
        )
    return agent


def make_environment(
    workspace: Workspace, *, name: str = "default", self_hosted: bool = False
) -> Environment:
    config: dict[str, Any] = (
        {"type": "self_hosted"}
        if self_hosted
        else {"type": "cloud", "networking": {"type": "unrestricted"}, "packages": {"type": "packages"}}
    )
    return Environment.objects.create(id=new_id("env"), workspace=workspace, name=name, config=config)

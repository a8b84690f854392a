"""Request bodies of /v1/agents and /v1/environments, named after the SDK's params types. The top
level is typed here (unknown fields are rejected); nested unions are checked field by field in
agents/definition.py and agents/services.py, which the console calls with the same dicts."""

from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict


class _Body(Schema):
    model_config = ConfigDict(extra="forbid")


class AgentCreateParams(_Body):
    name: str
    model: str | dict[str, Any]
    description: str | None = None
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    skills: list[dict[str, Any]] | None = None
    multiagent: dict[str, Any] | None = None
    execution_identity: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


class AgentUpdateParams(_Body):
    version: int | None = None
    name: str | None = None
    model: str | dict[str, Any] | None = None
    description: str | None = None
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    skills: list[dict[str, Any]] | None = None
    multiagent: dict[str, Any] | None = None
    execution_identity: dict[str, Any] | None = None
    metadata: dict[str, str | None] | None = None


class EnvironmentCreateParams(_Body):
    name: str
    config: dict[str, Any] | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None
    scope: Literal["organization", "account"] | None = None


class EnvironmentUpdateParams(_Body):
    name: str | None = None
    config: dict[str, Any] | None = None
    description: str | None = None
    metadata: dict[str, str | None] | None = None
    scope: Literal["organization", "account"] | None = None


def body_of(params: Schema) -> dict[str, Any]:
    """The fields the client actually sent (an omitted field and an explicit null differ on update)."""
    return params.model_dump(exclude_unset=True)

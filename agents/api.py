"""/v1/agents and /v1/environments (spec 2, 3). Thin: parse, one service call, wire dict."""

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Query, Router

from agents import services
from agents.schemas import (
    AgentCreateParams,
    AgentUpdateParams,
    EnvironmentCreateParams,
    EnvironmentUpdateParams,
    body_of,
)
from api.pagination import page_body
from api.wire import to_utc

router = Router()


@router.post("/agents")
def agents_create(request: HttpRequest, params: AgentCreateParams) -> dict[str, Any]:
    agent = services.agent_create(workspace=request.workspace, body=body_of(params))  # type: ignore[attr-defined]
    return services.agent_wire(services.agent_version_get(agent=agent, version=None))


@router.get("/agents")
def agents_list(
    request: HttpRequest,
    limit: int | None = None,
    page: str | None = None,
    include_archived: bool = False,
    created_at_gte: datetime | None = Query(None, alias="created_at[gte]"),  # type: ignore[type-arg]  # noqa: B008
    created_at_lte: datetime | None = Query(None, alias="created_at[lte]"),  # type: ignore[type-arg]  # noqa: B008
) -> dict[str, Any]:
    found = services.agent_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        created_at_gte=to_utc(created_at_gte, field="created_at[gte]") if created_at_gte else None,
        created_at_lte=to_utc(created_at_lte, field="created_at[lte]") if created_at_lte else None,
        include_archived=include_archived,
        limit=limit,
        page=page,
    )
    return page_body(found, [services.agent_wire(v) for v in services.agent_latest_versions(found.items)])


@router.get("/agents/{agent_id}")
def agents_retrieve(request: HttpRequest, agent_id: str, version: int | None = None) -> dict[str, Any]:
    agent = services.agent_get(workspace=request.workspace, agent_id=agent_id)  # type: ignore[attr-defined]
    return services.agent_wire(services.agent_version_get(agent=agent, version=version))


@router.post("/agents/{agent_id}")
def agents_update(request: HttpRequest, agent_id: str, params: AgentUpdateParams) -> dict[str, Any]:
    agent = services.agent_get(workspace=request.workspace, agent_id=agent_id)  # type: ignore[attr-defined]
    agent = services.agent_update(agent=agent, body=body_of(params))
    return services.agent_wire(services.agent_version_get(agent=agent, version=None))


@router.post("/agents/{agent_id}/archive")
def agents_archive(request: HttpRequest, agent_id: str) -> dict[str, Any]:
    agent = services.agent_get(workspace=request.workspace, agent_id=agent_id)  # type: ignore[attr-defined]
    agent = services.agent_archive(agent=agent)
    return services.agent_wire(services.agent_version_get(agent=agent, version=None))


@router.get("/agents/{agent_id}/versions")
def agents_versions_list(
    request: HttpRequest, agent_id: str, limit: int | None = None, page: str | None = None
) -> dict[str, Any]:
    agent = services.agent_get(workspace=request.workspace, agent_id=agent_id)  # type: ignore[attr-defined]
    found = services.agent_versions_list(agent=agent, limit=limit, page=page)
    return page_body(found, [services.agent_wire(v) for v in found.items])


@router.post("/environments")
def environments_create(request: HttpRequest, params: EnvironmentCreateParams) -> dict[str, Any]:
    environment = services.environment_create(workspace=request.workspace, body=body_of(params))  # type: ignore[attr-defined]
    return services.environment_wire(environment)


@router.get("/environments")
def environments_list(
    request: HttpRequest, limit: int | None = None, page: str | None = None, include_archived: bool = False
) -> dict[str, Any]:
    found = services.environment_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        include_archived=include_archived,
        limit=limit,
        page=page,
    )
    return page_body(found, [services.environment_wire(e) for e in found.items])


@router.get("/environments/{environment_id}")
def environments_retrieve(request: HttpRequest, environment_id: str) -> dict[str, Any]:
    environment = services.environment_get(workspace=request.workspace, environment_id=environment_id)  # type: ignore[attr-defined]
    return services.environment_wire(environment)


@router.post("/environments/{environment_id}")
def environments_update(
    request: HttpRequest, environment_id: str, params: EnvironmentUpdateParams
) -> dict[str, Any]:
    environment = services.environment_get(workspace=request.workspace, environment_id=environment_id)  # type: ignore[attr-defined]
    return services.environment_wire(
        services.environment_update(environment=environment, body=body_of(params))
    )


@router.delete("/environments/{environment_id}")
def environments_delete(request: HttpRequest, environment_id: str) -> dict[str, Any]:
    environment = services.environment_get(workspace=request.workspace, environment_id=environment_id)  # type: ignore[attr-defined]
    return services.environment_delete(environment=environment)


@router.post("/environments/{environment_id}/archive")
def environments_archive(request: HttpRequest, environment_id: str) -> dict[str, Any]:
    environment = services.environment_get(workspace=request.workspace, environment_id=environment_id)  # type: ignore[attr-defined]
    return services.environment_wire(services.environment_archive(environment=environment))

"""/v1/deployments and /v1/deployment_runs (SDK 2.10's `client.beta.deployments` and
`client.beta.deployment_runs`). Thin: parse, one service call, wire dict."""

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router

from api.errors import bad_request
from api.pagination import page_body
from deployments import services
from deployments.models import Deployment

router = Router()


def _body(request: HttpRequest) -> dict[str, Any]:
    raw = request.body
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("body: not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    return body


def _int(request: HttpRequest, name: str) -> int | None:
    raw = request.GET.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name}: expected an integer, got {raw!r}.") from None


def _bool(request: HttpRequest, name: str) -> bool | None:
    raw = (request.GET.get(name) or "").lower()
    if raw == "":
        return None
    if raw in ("true", "1", "false", "0"):
        return raw in ("true", "1")
    raise bad_request(f"{name}: expected true or false, got {raw!r}.")


def _range(request: HttpRequest) -> dict[str, str | None]:
    return {op: request.GET.get(f"created_at[{op}]") for op in ("gt", "gte", "lt", "lte")}


def _deployment(request: HttpRequest, deployment_id: str) -> Deployment:
    return services.deployment_get(workspace=request.workspace, deployment_id=deployment_id)  # type: ignore[attr-defined]


@router.post("/deployments")
def deployments_create(request: HttpRequest) -> HttpResponse:
    deployment = services.deployment_create(workspace=request.workspace, body=_body(request))  # type: ignore[attr-defined]
    return JsonResponse(services.deployment_wire(deployment))


@router.get("/deployments")
def deployments_list(request: HttpRequest) -> HttpResponse:
    page = services.deployment_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        agent_id=request.GET.get("agent_id") or None,
        status=request.GET.get("status") or None,
        include_archived=bool(_bool(request, "include_archived")),
        created_at=_range(request),
        limit=_int(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return JsonResponse(page_body(page, [services.deployment_wire(x) for x in page.items]))


@router.get("/deployments/{deployment_id}")
def deployments_retrieve(request: HttpRequest, deployment_id: str) -> HttpResponse:
    return JsonResponse(services.deployment_wire(_deployment(request, deployment_id)))


@router.post("/deployments/{deployment_id}")
def deployments_update(request: HttpRequest, deployment_id: str) -> HttpResponse:
    deployment = services.deployment_update(
        deployment=_deployment(request, deployment_id), body=_body(request)
    )
    return JsonResponse(services.deployment_wire(deployment))


@router.post("/deployments/{deployment_id}/archive")
def deployments_archive(request: HttpRequest, deployment_id: str) -> HttpResponse:
    return JsonResponse(
        services.deployment_wire(services.deployment_archive(deployment=_deployment(request, deployment_id)))
    )


@router.post("/deployments/{deployment_id}/pause")
def deployments_pause(request: HttpRequest, deployment_id: str) -> HttpResponse:
    return JsonResponse(
        services.deployment_wire(services.deployment_pause(deployment=_deployment(request, deployment_id)))
    )


@router.post("/deployments/{deployment_id}/unpause")
def deployments_unpause(request: HttpRequest, deployment_id: str) -> HttpResponse:
    return JsonResponse(
        services.deployment_wire(services.deployment_unpause(deployment=_deployment(request, deployment_id)))
    )


@router.post("/deployments/{deployment_id}/run")
def deployments_run(request: HttpRequest, deployment_id: str) -> HttpResponse:
    return JsonResponse(
        services.run_wire(services.deployment_run_now(deployment=_deployment(request, deployment_id)))
    )


@router.get("/deployment_runs")
def deployment_runs_list(request: HttpRequest) -> HttpResponse:
    page = services.run_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        deployment_id=request.GET.get("deployment_id") or None,
        has_error=_bool(request, "has_error"),
        trigger_type=request.GET.get("trigger_type") or None,
        created_at=_range(request),
        limit=_int(request, "limit"),
        page=request.GET.get("page") or None,
    )
    return JsonResponse(page_body(page, [services.run_wire(r) for r in page.items]))


@router.get("/deployment_runs/{run_id}")
def deployment_runs_retrieve(request: HttpRequest, run_id: str) -> HttpResponse:
    return JsonResponse(services.run_wire(services.run_get(workspace=request.workspace, run_id=run_id)))  # type: ignore[attr-defined]

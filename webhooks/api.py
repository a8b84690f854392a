"""/v1/organizations/webhooks: webhook endpoints of the caller's workspace, in the shapes of the
SDK's `client.beta.organization.webhooks`. Thin: parse, one service call, wire dict."""

from typing import Any

from django.http import HttpRequest
from ninja import Router

from webhooks import services
from webhooks.models import WebhookEndpoint
from webhooks.schemas import WebhookCreateParams, WebhookUpdateParams, body_of

router = Router()


def _endpoint(request: HttpRequest, endpoint_id: str) -> WebhookEndpoint:
    return services.endpoint_get(workspace=request.workspace, endpoint_id=endpoint_id)  # type: ignore[attr-defined]


@router.post("/organizations/webhooks")
def webhooks_create(request: HttpRequest, params: WebhookCreateParams) -> dict[str, Any]:
    endpoint, secret = services.endpoint_create(workspace=request.workspace, body=body_of(params))  # type: ignore[attr-defined]
    return services.endpoint_wire(endpoint, signing_secret=secret)


@router.get("/organizations/webhooks")
def webhooks_list(
    request: HttpRequest,
    limit: int | None = None,
    order: str | None = None,
    after_id: str | None = None,
    before_id: str | None = None,
) -> dict[str, Any]:
    rows, has_more = services.endpoint_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        limit=limit,
        order=order,
        after_id=after_id,
        before_id=before_id,
    )
    return {
        "data": [services.endpoint_wire(e) for e in rows],
        "has_more": has_more,
        "first_id": rows[0].pk if rows else None,
        "last_id": rows[-1].pk if rows else None,
    }


@router.get("/organizations/webhooks/{endpoint_id}")
def webhooks_retrieve(request: HttpRequest, endpoint_id: str) -> dict[str, Any]:
    return services.endpoint_wire(_endpoint(request, endpoint_id))


@router.post("/organizations/webhooks/{endpoint_id}")
def webhooks_update(request: HttpRequest, endpoint_id: str, params: WebhookUpdateParams) -> dict[str, Any]:
    endpoint = services.endpoint_update(endpoint=_endpoint(request, endpoint_id), body=body_of(params))
    return services.endpoint_wire(endpoint)


@router.delete("/organizations/webhooks/{endpoint_id}")
def webhooks_delete(request: HttpRequest, endpoint_id: str) -> dict[str, Any]:
    return services.endpoint_delete(endpoint=_endpoint(request, endpoint_id))


@router.post("/organizations/webhooks/{endpoint_id}/regenerate_signing_secret")
def webhooks_regenerate_signing_secret(request: HttpRequest, endpoint_id: str) -> dict[str, Any]:
    return {"signing_secret": services.endpoint_rotate_secret(endpoint=_endpoint(request, endpoint_id))}

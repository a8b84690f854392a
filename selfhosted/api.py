"""/v1/environments/{environment_id}/work (spec 4). Thin: authorize, parse, one service call, wire.

Which credential each route takes follows the SDK's docstrings: `list` takes the environment key
and rejects an API key; `retrieve` and `update` take an API key and reject worker credentials;
poll, ack and stats take either; heartbeat and stop also take the item's sessions token.
`work/poll` and `work/stats` are declared before `work/{work_id}`.
"""

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Router

from agents.models import Environment
from agents.services import environment_get
from api.errors import ApiError, bad_request, not_found
from api.pagination import page_body
from selfhosted import services
from selfhosted.auth import API_KEY_OR_WORKER, ENVIRONMENT_KEY, SESSIONS_TOKEN, expired_token, worker_scope
from selfhosted.models import WorkItem

router = Router(tags=["environment work"])

_PREFIX = "/environments/{environment_id}/work"


def _environment(request: HttpRequest, environment_id: str, *, allow: tuple[str, ...]) -> Environment:
    """The environment the caller may act on, checking the credential kind against `allow`
    ("api_key", ENVIRONMENT_KEY, SESSIONS_TOKEN)."""
    scope = worker_scope(request)
    kind = scope.kind if scope is not None else "api_key"
    if scope is not None and scope.environment.pk != environment_id:
        raise not_found("Environment", environment_id, error_code="environment_not_found")
    environment = (
        scope.environment
        if scope is not None
        else environment_get(workspace=request.workspace, environment_id=environment_id)  # type: ignore[attr-defined]
    )
    if kind not in allow:
        names = {
            "api_key": "an API key",
            ENVIRONMENT_KEY: "an environment key",
            SESSIONS_TOKEN: "a sessions token",
        }
        raise ApiError(
            403, f"This route does not accept {names[kind]}; use {' or '.join(names[a] for a in allow)}."
        )
    if scope is not None and kind == SESSIONS_TOKEN and not scope.current:
        raise expired_token()
    if not environment.is_self_hosted:
        raise bad_request(
            f"environment_id: environment {environment_id!r} is not self_hosted and has no work queue."
        )
    return environment


def _item(request: HttpRequest, environment: Environment, work_id: str) -> WorkItem:
    item = services.work_get(environment=environment, work_id=work_id)
    scope = worker_scope(request)
    if (
        scope is not None
        and scope.kind == SESSIONS_TOKEN
        and scope.item is not None
        and scope.item.pk != item.pk
    ):
        raise not_found("work item", work_id)
    return item


def _generation(request: HttpRequest) -> int | None:
    scope = worker_scope(request)
    return scope.generation if scope is not None and scope.kind == SESSIONS_TOKEN else None


def _int_query(request: HttpRequest, name: str) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name}: expected an integer, got {raw!r}.") from None


def _json_body(request: HttpRequest) -> dict[str, Any]:
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


def _poll_params(request: HttpRequest) -> tuple[int | None, int]:
    block_ms = _int_query(request, "block_ms")
    if block_ms is not None and not 1 <= block_ms <= 999:
        raise bad_request(
            f"block_ms: must be between 1 and 999 (leave it out for a non-blocking poll), got {block_ms}."
        )
    reclaim = _int_query(request, "reclaim_older_than_ms")
    if reclaim is None:
        reclaim = services.DEFAULT_RECLAIM_MS
    if reclaim < 0:
        raise bad_request(f"reclaim_older_than_ms: must not be negative, got {reclaim}.")
    return block_ms, reclaim


@router.get(_PREFIX + "/poll", auth=API_KEY_OR_WORKER)
async def work_poll(request: HttpRequest, environment_id: str) -> HttpResponse:
    block_ms, reclaim = _poll_params(request)
    environment = await sync_to_async(_environment)(
        request, environment_id, allow=("api_key", ENVIRONMENT_KEY)
    )
    found = await services.work_poll(
        environment=environment,
        worker_id=request.headers.get("Anthropic-Worker-ID", "").strip(),
        block_ms=block_ms,
        reclaim_ms=reclaim,
    )
    if found is None:
        return JsonResponse(None, safe=False)
    item, token = found
    return JsonResponse(services.work_wire(item, secret=services.work_secret(token)))


@router.get(_PREFIX + "/stats", auth=API_KEY_OR_WORKER)
def work_stats(request: HttpRequest, environment_id: str) -> HttpResponse:
    environment = _environment(request, environment_id, allow=("api_key", ENVIRONMENT_KEY))
    return JsonResponse(services.work_stats(environment=environment))


@router.get(_PREFIX, auth=API_KEY_OR_WORKER)
def work_list(request: HttpRequest, environment_id: str) -> HttpResponse:
    environment = _environment(request, environment_id, allow=(ENVIRONMENT_KEY,))
    page = services.work_list(
        environment=environment, limit=_int_query(request, "limit"), page=request.GET.get("page") or None
    )
    return JsonResponse(page_body(page, [services.work_wire(item) for item in page.items]))


@router.get(_PREFIX + "/{work_id}", auth=API_KEY_OR_WORKER)
def work_retrieve(request: HttpRequest, environment_id: str, work_id: str) -> HttpResponse:
    environment = _environment(request, environment_id, allow=("api_key",))
    return JsonResponse(services.work_wire(_item(request, environment, work_id)))


@router.post(_PREFIX + "/{work_id}", auth=API_KEY_OR_WORKER)
def work_update(request: HttpRequest, environment_id: str, work_id: str) -> HttpResponse:
    environment = _environment(request, environment_id, allow=("api_key",))
    item = services.work_update(item=_item(request, environment, work_id), body=_json_body(request))
    return JsonResponse(services.work_wire(item))


@router.post(_PREFIX + "/{work_id}/ack", auth=API_KEY_OR_WORKER)
def work_ack(request: HttpRequest, environment_id: str, work_id: str) -> HttpResponse:
    environment = _environment(request, environment_id, allow=("api_key", ENVIRONMENT_KEY))
    return JsonResponse(services.work_wire(services.work_ack(item=_item(request, environment, work_id))))


@router.post(_PREFIX + "/{work_id}/heartbeat", auth=API_KEY_OR_WORKER)
def work_heartbeat(request: HttpRequest, environment_id: str, work_id: str) -> HttpResponse:
    scope = worker_scope(request)
    if scope is not None and scope.kind == SESSIONS_TOKEN and not scope.current:
        # A reclaimed item's old token still reaches the heartbeat, which answers it with the 412
        # that tells its worker the lease is gone (a 401 would make it stop the item instead).
        if scope.environment.pk != environment_id:
            raise not_found("Environment", environment_id, error_code="environment_not_found")
        environment = scope.environment
    else:
        environment = _environment(
            request, environment_id, allow=("api_key", ENVIRONMENT_KEY, SESSIONS_TOKEN)
        )
    body = services.work_heartbeat(
        item=_item(request, environment, work_id),
        expected=request.GET.get("expected_last_heartbeat"),
        desired_ttl=_int_query(request, "desired_ttl_seconds"),
        generation=_generation(request),
    )
    return JsonResponse(body)


@router.post(_PREFIX + "/{work_id}/stop", auth=API_KEY_OR_WORKER)
def work_stop(request: HttpRequest, environment_id: str, work_id: str) -> HttpResponse:
    scope = worker_scope(request)
    if scope is not None and scope.kind == SESSIONS_TOKEN and not scope.current:
        if scope.environment.pk != environment_id or scope.item is None or scope.item.pk != work_id:
            raise not_found("work item", work_id)
        if scope.item.state == "stopped" and scope.generation == scope.item.generation:
            raise ApiError(
                409, f"work item {work_id!r} is already stopped.", error_code="work_already_stopped"
            )
        raise ApiError(409, f"work item {work_id!r} was handed to another worker; this token cannot stop it.")
    environment = _environment(request, environment_id, allow=("api_key", ENVIRONMENT_KEY, SESSIONS_TOKEN))
    body = _json_body(request)
    unknown = sorted(set(body) - {"force"})
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise bad_request("force: expected a boolean.")
    item = services.work_stop(
        item=_item(request, environment, work_id), force=force, generation=_generation(request)
    )
    return JsonResponse(services.work_wire(item))

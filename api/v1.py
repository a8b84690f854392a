"""The /v1 API: one NinjaAPI, its authentication and its error handling (spec 1.4, 1.10)."""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import APIKeyHeader

from accounts.models import ApiKey
from api import ratelimit
from api.errors import ApiError
from api.ids import new_id

log = logging.getLogger(__name__)


def request_id(request: HttpRequest) -> str:
    rid = getattr(request, "galley_request_id", None)
    if rid is None:
        rid = new_id("req")
        request.galley_request_id = rid  # type: ignore[attr-defined]
    return rid


def error_response(request: HttpRequest, error: ApiError) -> HttpResponse:
    rid = request_id(request)
    response = JsonResponse(error.body(rid), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    response["request-id"] = rid
    return response


def raw_key_from(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key", "").strip()


class ApiKeyAuth(APIKeyHeader):
    """Accepts `Authorization: Bearer <key>` (what SDK 2.10 sends) and `x-api-key: <key>`."""

    param_name = "x-api-key"

    def __call__(self, request: HttpRequest) -> ApiKey | None:
        throttled = ratelimit.auth_failure_check(request)
        if not throttled.allowed:
            raise ApiError(
                429,
                "Too many failed authentication attempts from this address; retry later.",
                headers=ratelimit.retry_after_headers(throttled),
            )
        api_key = self.authenticate(request, raw_key_from(request))
        if api_key is None:
            ratelimit.auth_failure_record(request)
            return None
        verdict = ratelimit.api_request_verdict(request, key_id=api_key.pk, workspace_id=api_key.workspace_id)
        if not verdict.allowed:
            raise ApiError(
                429,
                f"Rate limit exceeded for {ratelimit.route_class(request)} requests; retry later.",
                headers=ratelimit.retry_after_headers(verdict),
            )
        return api_key

    def authenticate(self, request: HttpRequest, key: str | None) -> ApiKey | None:
        api_key = ApiKey.authenticate(key or "")
        if api_key is not None:
            request.workspace = api_key.workspace  # type: ignore[attr-defined]
        return api_key


api = NinjaAPI(
    title="Galley API",
    version="1",
    description="Self-hosted Managed Agents API, wire-compatible with the official anthropic SDK.",
    urls_namespace="v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
    auth=ApiKeyAuth(),
)


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(request, exc)


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    message = "Missing API key." if not raw_key_from(request) else "Invalid API key."
    return error_response(request, ApiError(401, message))


def _location(loc: list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "payload", "filters")]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    messages = []
    for err in errors[:5]:
        where = _location(list(err.get("loc", [])))
        messages.append(f"{where}: {err.get('msg', 'invalid value')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(messages) + more


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return error_response(request, ApiError(400, describe_validation_errors(list(exc.errors))))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(request, ApiError(exc.status_code, str(exc)))


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.GALLEY_MAX_BODY_BYTES
    return error_response(request, ApiError(413, f"The request body is larger than {limit} bytes."))


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(request, ApiError(500, "Internal server error."))

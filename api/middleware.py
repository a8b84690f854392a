import json
import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from api.v1 import request_id


class RequestIdMiddleware:
    """Every /v1 response carries `request-id: req_...` (spec 1.5)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith("/v1/") and not response.has_header("request-id"):
            response["request-id"] = request_id(request)
        return response


class StorableTextMiddleware:
    """A /v1 request carrying text no database here can store gets a 400 naming where it is,
    instead of a 500 from the database: NUL characters (PostgreSQL rejects them in text and jsonb)
    and lone UTF-16 surrogates from JSON escapes (they have no UTF-8 encoding), in the path, the
    query string or a JSON body."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/v1/"):
            problem = unstorable_text(request)
            if problem is not None:
                from api.errors import ApiError
                from api.v1 import error_response

                return error_response(request, ApiError(400, problem))
        return self.get_response(request)


_SUSPECT_ESCAPE = re.compile(rb"\\u(0000|[dD][89a-fA-F])")


def unstorable_text(request: HttpRequest) -> str | None:
    if "\x00" in request.path:
        return "path: must not contain NUL characters."
    for key, values in request.GET.lists():
        if "\x00" in key or any("\x00" in value for value in values):
            return f"{key.replace(chr(0), '')}: must not contain NUL characters."
    if not (request.content_type or "").startswith("application/json"):
        return None
    try:
        body = request.body
    except RequestDataTooBig:
        return None  # the endpoint answers that itself
    # Cheap first: only a body with a \u0000 or surrogate escape is parsed here.
    if not _SUSPECT_ESCAPE.search(body):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None  # the endpoint reports invalid JSON itself
    where = _find_unstorable(data, "body")
    if where is None:
        return None
    return f"{where}: must not contain NUL characters or unpaired surrogates."


def _bad(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find_unstorable(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        return where if _bad(value) else None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_unstorable(item, f"{where}[{index}]")
            if found:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            path = key if where == "body" else f"{where}.{key}"
            if _bad(key):
                return where
            found = _find_unstorable(item, path)
            if found:
                return found
    return None

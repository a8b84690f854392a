from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from console.api import request_id


class RequestIdMiddleware:
    """Every /v1 response carries `request-id: req_...` (spec 1.5)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith("/v1/") and not response.has_header("request-id"):
            response["request-id"] = request_id(request)
        return response

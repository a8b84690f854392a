"""Styled error pages with the console's navigation (404, 403, 500). The /v1 API keeps its JSON errors."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from console.access import access_for


def _page(request: HttpRequest, status: int, title: str, message: str) -> HttpResponse:
    context: dict[str, Any] = {"title": title, "message": message, "status": status}
    try:
        context["access"] = access_for(getattr(request, "user", None))
    except Exception:  # an error page must render even when the database is the problem
        context["access"] = None
    return HttpResponse(render_to_string("console/error.html", context, request=request), status=status)


def not_found_page(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page(request, 404, "Not found", "There is nothing at this address, or it is not yours to see.")


def forbidden_page(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page(request, 403, "Not allowed", "You do not have access to this page.")


def server_error_page(request: HttpRequest) -> HttpResponse:
    html = render_to_string(
        "console/error.html",
        {
            "title": "Something went wrong",
            "status": 500,
            "message": "The server hit an error. It was logged; try again.",
        },
    )
    return HttpResponse(html, status=500)

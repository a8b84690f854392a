from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from console.api import api, error_response
from console.errors import ApiError
from console.routes import register_routers

register_routers(api)


@csrf_exempt  # API clients send no CSRF token; without this an unknown POST path answers an HTML 403
def v1_not_found(request: HttpRequest, rest: str) -> HttpResponse:
    return error_response(request, ApiError(404, f"No route for {request.method} /v1/{rest}."))


urlpatterns = [
    path("v1/", api.urls),
    re_path(r"^v1/(?P<rest>.*)$", v1_not_found),
]

from django.contrib.auth import login, logout
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from api import ratelimit
from console.access import render_page


def _safe_next(request: HttpRequest, target: str) -> str:
    if target and url_has_allowed_host_and_scheme(
        target, {request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return "/"


def login_view(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if request.method == "POST":
        throttled = ratelimit.auth_failure_check(request)
        if not throttled.allowed:
            wait = ratelimit.retry_after_headers(throttled)["retry-after"]
            response = render_page(
                request,
                "console/login.html",
                {"form": AuthenticationForm(request), "next": next_url, "throttled_seconds": wait},
                status=429,
            )
            response["retry-after"] = wait
            return response
    form = AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        login(request, form.get_user())
        return HttpResponseRedirect(_safe_next(request, next_url))
    if request.method == "POST":
        ratelimit.auth_failure_record(request)
    return render_page(
        request,
        "console/login.html",
        {"form": form, "next": next_url},
        status=400 if request.method == "POST" else 200,
    )


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect("/login")

from django.contrib.staticfiles.views import serve as static_serve
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from console.api import api, error_response
from console.errors import ApiError
from console.routes import register_routers
from console.views import admin, agents, analytics, auth, environments, overview, sessions, vaults
from selfhosted import views as selfhosted_views

register_routers(api)


@csrf_exempt  # API clients send no CSRF token; without this an unknown POST path answers an HTML 403
def v1_not_found(request: HttpRequest, rest: str) -> HttpResponse:
    return error_response(request, ApiError(404, f"No route for {request.method} /v1/{rest}."))


def static(request: HttpRequest, path: str) -> HttpResponseBase:
    # Daphne serves the console's own assets (no CDN, no separate web server needed).
    response = static_serve(request, path, insecure=True)
    response["Cache-Control"] = "public, max-age=300"
    return response


console_urlpatterns = [
    path("", overview.overview),
    path("login", auth.login_view),
    path("logout", auth.logout_view),
    path("agents", agents.agent_list),
    path("agents/new", agents.agent_new),
    path("agents/<str:agent_id>", agents.agent_detail),
    path("agents/<str:agent_id>/edit", agents.agent_edit),
    path("agents/<str:agent_id>/diff", agents.agent_diff),
    path("agents/<str:agent_id>/archive", agents.agent_archive),
    path("agents/<str:agent_id>/start", agents.agent_start_session),
    path("environments", environments.environment_list),
    path("environments/new", environments.environment_new),
    path("environments/<str:environment_id>", environments.environment_detail),
    path("environments/<str:environment_id>/edit", environments.environment_edit),
    path("environments/<str:environment_id>/archive", environments.environment_archive),
    path("environments/<str:environment_id>/keys", selfhosted_views.environment_key_create),
    path(
        "environments/<str:environment_id>/keys/<str:key_id>/revoke", selfhosted_views.environment_key_revoke
    ),
    path("environments/<str:environment_id>/work", selfhosted_views.environment_work),
    path("vaults", vaults.vault_list),
    path("vaults/<str:vault_id>", vaults.vault_detail),
    path("vaults/<str:vault_id>/archive", vaults.vault_archive),
    path("vaults/<str:vault_id>/credentials/<str:credential_id>/replace", vaults.credential_replace),
    path("vaults/<str:vault_id>/credentials/<str:credential_id>/archive", vaults.credential_archive),
    path("sessions", sessions.session_list),
    path("sessions/<str:session_id>", sessions.session_detail),
    path("sessions/<str:session_id>/send", sessions.session_send),
    path("sessions/<str:session_id>/interrupt", sessions.session_interrupt),
    path("sessions/<str:session_id>/confirm", sessions.session_confirm),
    path("sessions/<str:session_id>/custom-result", sessions.session_custom_result),
    path("sessions/<str:session_id>/archive", sessions.session_archive),
    path("sessions/<str:session_id>/trace", sessions.session_trace),
    path("sessions/<str:session_id>/trace.json", sessions.session_trace_json),
    path("analytics", analytics.analytics),
    path("analytics.csv", analytics.analytics_csv),
    path("api-keys", admin.api_keys),
    path("api-keys/<str:key_id>/revoke", admin.api_key_revoke),
    path("users", admin.users),
    path("users/<int:membership_id>/role", admin.user_role),
    re_path(r"^static/(?P<path>.+)$", static),
]

urlpatterns = [
    *console_urlpatterns,
    path("v1/", api.urls),
    re_path(r"^v1/(?P<rest>.*)$", v1_not_found),  # keep last
]

from django.contrib.staticfiles.views import serve as static_serve
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from api.errors import ApiError
from api.routes import register_routers
from api.v1 import api, error_response
from console.views import (
    admin,
    agents,
    analytics,
    auth,
    deployments,
    environments,
    memory,
    overview,
    sessions,
    skills,
    vaults,
    webhooks,
)
from providers import views as providers
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


def favicon(request: HttpRequest) -> HttpResponseBase:
    return static(request, "console/favicon.svg")


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
    path("skills", skills.skill_list),
    path("skills/upload", skills.skill_upload),
    path("skills/<str:skill_id>", skills.skill_detail),
    path("skills/<str:skill_id>/versions", skills.skill_version_upload),
    path("skills/<str:skill_id>/delete", skills.skill_delete),
    path("environments/<str:environment_id>/keys", selfhosted_views.environment_key_create),
    path(
        "environments/<str:environment_id>/keys/<str:key_id>/revoke", selfhosted_views.environment_key_revoke
    ),
    path("environments/<str:environment_id>/work", selfhosted_views.environment_work),
    path("environments/<str:environment_id>/healthcheck", selfhosted_views.environment_healthcheck),
    path("sessions/<str:session_id>/worker-wait", selfhosted_views.session_worker_wait),
    path("vaults", vaults.vault_list),
    path("vaults/<str:vault_id>", vaults.vault_detail),
    path("vaults/<str:vault_id>/archive", vaults.vault_archive),
    path("vaults/<str:vault_id>/credentials/<str:credential_id>/replace", vaults.credential_replace),
    path("vaults/<str:vault_id>/credentials/<str:credential_id>/archive", vaults.credential_archive),
    path("memory", memory.memory_store_list),
    path("memory/<str:store_id>", memory.memory_store_detail),
    path("memory/<str:store_id>/archive", memory.memory_store_archive),
    path("memory/<str:store_id>/m/<str:memory_id>", memory.memory_detail),
    path("memory/<str:store_id>/m/<str:memory_id>/delete", memory.memory_delete),
    path("memory/<str:store_id>/versions/<str:version_id>/redact", memory.memory_version_redact),
    path("sessions", sessions.session_list),
    path("sessions/<str:session_id>", sessions.session_detail),
    path("sessions/<str:session_id>/send", sessions.session_send),
    path("sessions/<str:session_id>/interrupt", sessions.session_interrupt),
    path("sessions/<str:session_id>/confirm", sessions.session_confirm),
    path("sessions/<str:session_id>/custom-result", sessions.session_custom_result),
    path("sessions/<str:session_id>/archive", sessions.session_archive),
    path("sessions/<str:session_id>/trace", sessions.session_trace),
    path("sessions/<str:session_id>/trace.json", sessions.session_trace_json),
    path("sessions/<str:session_id>/trace/tree.json", sessions.session_trace_tree),
    path("sessions/<str:session_id>/trace/data.json", sessions.session_trace_data),
    path("analytics", analytics.analytics),
    path("analytics.csv", analytics.analytics_csv),
    path("analytics/budgets", analytics.analytics_budgets),
    path("api-keys", admin.api_keys),
    path("api-keys/<str:key_id>/revoke", admin.api_key_revoke),
    path("users", admin.users),
    path("webhooks", webhooks.webhook_list),
    path("webhooks/<str:endpoint_id>", webhooks.webhook_detail),
    path("webhooks/<str:endpoint_id>/<str:action>", webhooks.webhook_action),
    path("deployments", deployments.deployment_list),
    path("deployments/<str:deployment_id>", deployments.deployment_detail),
    path("deployments/<str:deployment_id>/<str:action>", deployments.deployment_action),
    path("users/<int:membership_id>/role", admin.user_role),
    path("providers", providers.provider_list),
    path("providers/<str:name>/edit", providers.provider_edit),
    path("providers/<str:name>/delete", providers.provider_delete),
    path("providers/<str:name>/test", providers.provider_test),
    path("users/<int:membership_id>/active", admin.user_active),
    path("users/<int:membership_id>/remove", admin.user_remove),
    path("users/<int:membership_id>/password", admin.user_password),
    path("favicon.ico", favicon),
    re_path(r"^static/(?P<path>.+)$", static),
]

urlpatterns = [
    *console_urlpatterns,
    path("v1/", api.urls),
    re_path(r"^v1/(?P<rest>.*)$", v1_not_found),  # keep last
]

handler403 = "console.views.errors.forbidden_page"
handler404 = "console.views.errors.not_found_page"
handler500 = "console.views.errors.server_error_page"

"""Console pages of a self_hosted environment: its keys (created and revoked by admins, the raw
key shown once after a POST-redirect-GET), its work queue, the workers that poll it, and the
admin's "Check workers" healthcheck (htmx: the section swaps itself until the check is answered)."""

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import Role
from agents.models import Environment
from api.errors import ApiError
from console.access import console_view, forbidden, render_page
from selfhosted import services
from selfhosted.models import EnvironmentKey, WorkItem

_ONCE = "galley_environment_key_once"  # the raw key, kept in the login session until shown once


def _environment(request: HttpRequest, environment_id: str) -> Environment:
    env = Environment.objects.filter(pk=environment_id, workspace=request.access.workspace).first()  # type: ignore[attr-defined]
    if env is None or not env.is_self_hosted:
        raise Http404("No such self-hosted environment")
    return env


def work_context(env: Environment) -> dict[str, Any]:
    return {
        "work_items": list(WorkItem.objects.filter(environment=env).order_by("-created_at")[:50]),
        "workers": services.workers_recent(environment=env),
        "stats": services.work_stats(environment=env),
        "polling_since": timezone.now() - services.WORKERS_POLLING_WINDOW,
    }


def environment_context(request: HttpRequest, env: Environment) -> dict[str, Any]:
    """What the environment page shows for a self_hosted environment (called by its view)."""
    raw_key = None
    once = request.session.pop(_ONCE, None)
    if isinstance(once, dict) and once.get("environment_id") == env.pk:
        raw_key = once.get("raw_key")
    keys = (
        EnvironmentKey.objects.filter(environment=env)
        .select_related("created_by")
        .order_by("revoked_at", "-created_at")
    )
    return {
        "env_keys": keys,
        "raw_env_key": raw_key,
        "healthcheck": services.healthcheck_latest(environment=env),
        **work_context(env),
    }


@require_POST
@console_view(Role.ADMIN)
def environment_key_create(request: HttpRequest, environment_id: str) -> HttpResponse:
    env = _environment(request, environment_id)
    try:
        key, raw = services.environment_key_create(
            environment=env, name=request.POST.get("name", ""), created_by=request.user
        )
    except ApiError as exc:
        messages.error(request, exc.message.replace("name: ", "Key name: "))
    else:
        request.session[_ONCE] = {"environment_id": env.pk, "raw_key": raw}
        messages.success(request, f"Environment key {key.name!r} created.")
    return HttpResponseRedirect(f"/environments/{env.pk}#keys")


@require_POST
@console_view(Role.ADMIN)
def environment_key_revoke(request: HttpRequest, environment_id: str, key_id: str) -> HttpResponse:
    env = _environment(request, environment_id)
    key = EnvironmentKey.objects.filter(pk=key_id, environment=env).first()
    if key is None:
        raise Http404("No such key")
    services.environment_key_revoke(key=key)
    messages.success(request, f"Key {key.name!r} revoked; workers using it are refused from now on.")
    return HttpResponseRedirect(f"/environments/{env.pk}#keys")


@console_view()
def environment_work(request: HttpRequest, environment_id: str) -> HttpResponse:
    """The queue section alone, which the page polls with htmx."""
    env = _environment(request, environment_id)
    return render_page(request, "console/_environment_work.html", {"env": env, **work_context(env)})


@console_view()
def environment_healthcheck(request: HttpRequest, environment_id: str) -> HttpResponse:
    """GET: the healthcheck section alone (polled while a check waits). POST (admins): enqueue a
    healthcheck item and answer with the section, which then polls until the check ends."""
    env = _environment(request, environment_id)
    context: dict[str, Any] = {"env": env}
    if request.method == "POST":
        if not request.access.is_admin:  # type: ignore[attr-defined]
            return forbidden(request, "Checking workers needs the admin role.")
        try:
            item = services.work_healthcheck_enqueue(environment=env)
        except ApiError as exc:
            context["healthcheck_error"] = exc.message
        else:
            context["healthcheck"] = services.healthcheck_result(item)
        if not request.htmx:  # type: ignore[attr-defined]  # a plain form post: back to the page
            if "healthcheck_error" in context:
                messages.error(request, context["healthcheck_error"])
            return HttpResponseRedirect(f"/environments/{env.pk}#healthcheck")
    if "healthcheck" not in context:
        context["healthcheck"] = services.healthcheck_latest(environment=env)
    return render_page(request, "console/_environment_healthcheck.html", context)


def session_worker_context(session: Any) -> dict[str, Any]:
    """What a session's page says about its worker (called by its view): nothing unless the session
    is in a self_hosted environment and waits for a worker that has not come."""
    if not session.environment.is_self_hosted:
        return {}
    return {
        "self_hosted": True,
        "worker_wait_since": services.worker_wait_since(session_id=session.pk),
        "workers_polling": services.work_stats(environment=session.environment)["workers_polling"],
    }


@console_view()
def session_worker_wait(request: HttpRequest, session_id: str) -> HttpResponse:
    """The session page's "waiting for a worker" line alone, which the page polls with htmx."""
    from console.views.sessions import _session

    session = _session(request, session_id)
    if not session.environment.is_self_hosted:
        raise Http404("No such self-hosted session")
    return render_page(
        request, "console/_session_worker_wait.html", {"session": session, **session_worker_context(session)}
    )

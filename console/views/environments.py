from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from agents.models import Agent, Environment
from api.errors import ApiError
from console import forms
from console.access import console_view, render_page
from sandboxes.packages import package_prefix_summary


def _environment(request: HttpRequest, environment_id: str) -> Environment:
    env = Environment.objects.filter(pk=environment_id, workspace=request.access.workspace).first()  # type: ignore[attr-defined]
    if env is None:
        raise Http404("No such environment")
    return env


@console_view()
def environment_list(request: HttpRequest) -> HttpResponse:
    qs = Environment.objects.filter(workspace=request.access.workspace)  # type: ignore[attr-defined]
    if not request.GET.get("archived"):
        qs = qs.filter(archived_at=None)
    return render_page(
        request,
        "console/environment_list.html",
        {"nav": "environments", "environments": qs.order_by("name"), "archived": request.GET.get("archived")},
    )


def _form(
    request: HttpRequest,
    env: Environment | None,
    state: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
) -> HttpResponse:
    return render_page(
        request,
        "console/environment_form.html",
        {
            "nav": "environments",
            "env": env,
            "f": state,
            "errors": errors,
            "back_agent": request.POST.get("agent") or request.GET.get("agent") or "",
        },
        status=status,
    )


def _save(request: HttpRequest, env: Environment | None) -> HttpResponse:
    from agents import services

    body, errors = forms.environment_body(request.POST)
    if not errors:
        try:
            with transaction.atomic():
                if env is None:
                    env = services.environment_create(workspace=request.access.workspace, body=body)  # type: ignore[attr-defined]
                else:
                    env = services.environment_update(environment=env, body=body)
            messages.success(request, f"Environment {env.name!r} saved.")
            back = request.POST.get("agent", "")
            # Back to the agent page that sent the user here, once the environment exists.
            suffix = f"?agent={back}" if back.replace("_", "").isalnum() else ""
            return HttpResponseRedirect(f"/environments/{env.pk}{suffix}")
        except ApiError as exc:
            field, message = forms.error_field(exc)
            errors[field] = message
    state = forms.environment_form_state(body["config"], body["name"], body.get("description") or "")
    return _form(request, env, state, errors, status=400)


@console_view(Role.EDITOR)
def environment_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _save(request, None)
    return _form(request, None, forms.environment_form_state(None), {})


@console_view(Role.EDITOR)
def environment_edit(request: HttpRequest, environment_id: str) -> HttpResponse:
    env = _environment(request, environment_id)
    if request.method == "POST":
        return _save(request, env)
    return _form(request, env, forms.environment_form_state(env.config, env.name, env.description or ""), {})


@console_view()
def environment_detail(request: HttpRequest, environment_id: str) -> HttpResponse:
    env = _environment(request, environment_id)
    # htmx polls the build section while a build runs.
    template = "console/_environment_build.html" if request.htmx else "console/environment_detail.html"  # type: ignore[attr-defined]
    context = {
        "nav": "environments",
        "env": env,
        "f": forms.environment_form_state(env.config, env.name),
        "prefix": package_prefix_summary(env),
        # The agent page that sent the user here to create this environment, to go back to.
        "back_agent": Agent.objects.filter(
            workspace=env.workspace, pk=request.GET.get("agent", ""), archived_at=None
        ).first(),
    }
    if env.is_self_hosted:
        from selfhosted.views import environment_context

        context.update(environment_context(request, env))  # keys, the work queue, its workers
    return render_page(request, template, context)


@require_POST
@console_view(Role.EDITOR)
def environment_archive(request: HttpRequest, environment_id: str) -> HttpResponse:
    from agents.services import environment_archive as archive

    env = _environment(request, environment_id)
    try:
        archive(environment=env)
    except ApiError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Environment {env.name!r} archived.")
    return HttpResponseRedirect(f"/environments/{env.pk}")

"""Deployment pages: the list with a create form, and one deployment with pause/unpause, run now
and its runs linking to their sessions."""

import json
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from agents.models import Agent, Environment
from api.errors import ApiError
from console.access import console_view, forbidden, render_page
from console.forms import error_field
from deployments import services
from deployments.models import Deployment, DeploymentRun

_FORM_FIELDS = ("name", "agent", "environment_id", "initial_events", "expression", "timezone")


def _deployment(request: HttpRequest, deployment_id: str) -> Deployment:
    try:
        return services.deployment_get(workspace=request.access.workspace, deployment_id=deployment_id)  # type: ignore[attr-defined]
    except ApiError:
        raise Http404("No such deployment") from None


@console_view(Role.VIEWER)
def deployment_list(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    form = {
        "name": "",
        "agent": "",
        "environment_id": "",
        "task": "",
        "expression": "0 9 * * 1-5",
        "timezone": "UTC",
    }
    if request.method == "POST":
        if not request.access.can_edit:  # type: ignore[attr-defined]
            return forbidden(request, "Creating deployments needs the editor role.")
        form = {key: request.POST.get(key, "").strip() for key in form}
        body: dict[str, Any] = {
            "name": form["name"],
            "agent": form["agent"],
            "environment_id": form["environment_id"],
            "initial_events": [{"type": "user.message", "content": [{"type": "text", "text": form["task"]}]}]
            if form["task"]
            else [],
        }
        if form["expression"]:
            body["schedule"] = {
                "type": "cron",
                "expression": form["expression"],
                "timezone": form["timezone"],
            }
        try:
            created = services.deployment_create(workspace=workspace, body=body)
            messages.success(request, f"Deployment {created.name!r} created.")
            return HttpResponseRedirect(f"/deployments/{created.pk}")
        except ApiError as exc:
            head = exc.message.split(":", 1)[0]
            field = head.split(".")[-1] if head.startswith("schedule.") else error_field(exc)[0]
            errors[field if field in _FORM_FIELDS else "form"] = exc.message
    deployments = Deployment.objects.filter(workspace=workspace, archived_at__isnull=True).order_by(
        "-created_at"
    )
    return render_page(
        request,
        "console/deployment_list.html",
        {
            "nav": "deployments",
            "deployments": [(d, services.deployment_wire(d)) for d in deployments[:200]],
            "agents": Agent.objects.filter(workspace=workspace, archived_at__isnull=True).order_by("name"),
            "environments": Environment.objects.filter(
                workspace=workspace, archived_at__isnull=True
            ).order_by("name"),
            "errors": errors,
            "form": form,
        },
        status=400 if errors else 200,
    )


@console_view(Role.VIEWER)
def deployment_detail(request: HttpRequest, deployment_id: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    runs = DeploymentRun.objects.filter(deployment=deployment).order_by("-created_at")[:100]
    return render_page(
        request,
        "console/deployment_detail.html",
        {
            "nav": "deployments",
            "deployment": deployment,
            "wire": services.deployment_wire(deployment),
            "initial_events": json.dumps(deployment.initial_events, indent=2),
            "runs": runs,
        },
    )


@require_POST
@console_view(Role.EDITOR)
def deployment_action(request: HttpRequest, deployment_id: str, action: str) -> HttpResponse:
    deployment = _deployment(request, deployment_id)
    try:
        if action == "pause":
            services.deployment_pause(deployment=deployment)
            messages.success(request, "Paused: the schedule does not fire until you unpause it.")
        elif action == "unpause":
            services.deployment_unpause(deployment=deployment)
            messages.success(request, "Unpaused: the schedule resumes from now.")
        elif action == "run":
            run = services.deployment_run_now(deployment=deployment)
            if run.session_id:
                messages.success(request, f"Run {run.pk} started session {run.session_id}.")
            else:
                messages.error(request, f"Run {run.pk} failed: {run.error['message'] if run.error else ''}")
        elif action == "archive":
            services.deployment_archive(deployment=deployment)
            messages.success(request, "Archived: it no longer runs.")
        else:
            raise Http404("No such action")
    except ApiError as exc:
        messages.error(request, exc.message)
    return HttpResponseRedirect(f"/deployments/{deployment.pk}")

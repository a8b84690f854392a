import difflib
import json
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from agents.models import Agent, AgentVersion, Environment
from api.errors import ApiError
from console import forms
from console.access import console_view, render_page
from console.timeline import with_costs
from skills.models import Skill


def _agent(request: HttpRequest, agent_id: str) -> Agent:
    agent = Agent.objects.filter(pk=agent_id, workspace=request.access.workspace).first()  # type: ignore[attr-defined]
    if agent is None:
        raise Http404("No such agent")
    return agent


def _roster_choices(request: HttpRequest, exclude: str | None = None) -> list[Agent]:
    qs = Agent.objects.filter(workspace=request.access.workspace, archived_at=None).order_by("name")  # type: ignore[attr-defined]
    return [a for a in qs if a.pk != exclude]


@console_view()
def agent_list(request: HttpRequest) -> HttpResponse:
    qs = Agent.objects.filter(workspace=request.access.workspace)  # type: ignore[attr-defined]
    if not request.GET.get("archived"):
        qs = qs.filter(archived_at=None)
    text = request.GET.get("q", "").strip()
    if text:
        qs = qs.filter(name__icontains=text)
    page = Paginator(qs.order_by("name", "id"), 50).get_page(request.GET.get("page"))
    versions = {
        (v.agent_id, v.version): v
        for v in AgentVersion.objects.filter(agent__in=list(page.object_list)).only(
            "agent_id", "version", "definition"
        )
    }
    rows = [{"agent": a, "version": versions.get((a.pk, a.current_version))} for a in page.object_list]
    return render_page(
        request,
        "console/agent_list.html",
        {"nav": "agents", "rows": rows, "page": page, "q": text, "archived": request.GET.get("archived")},
    )


def _form_page(
    request: HttpRequest,
    agent: Agent | None,
    state: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
) -> HttpResponse:
    context = {
        "nav": "agents",
        "agent": agent,
        "f": state,
        "errors": errors,
        "model_groups": forms.model_groups(),
        "efforts": forms.EFFORTS,
        "policies": forms.POLICIES,
        "skills": forms.SKILLS,
        "custom_skills": Skill.objects.filter(workspace=request.access.workspace).order_by("name"),  # type: ignore[attr-defined]
        "roster_agents": _roster_choices(request, agent.pk if agent else None),
    }
    return render_page(request, "console/agent_form.html", context, status=status)


def _save(request: HttpRequest, agent: Agent | None) -> HttpResponse:
    from agents import services

    body, errors = forms.agent_body(request.POST)
    if not errors:
        try:
            with transaction.atomic():
                if agent is None:
                    agent = services.agent_create(workspace=request.access.workspace, body=body)  # type: ignore[attr-defined]
                    messages.success(request, f"Agent {agent.name!r} created (version 1).")
                else:
                    before = agent.current_version
                    expected = request.POST.get("version", "")
                    if expected.isdigit():
                        body["version"] = int(expected)
                    agent = services.agent_update(agent=agent, body=body)
                    if agent.current_version == before:
                        messages.success(request, "Nothing changed, so no new version was made.")
                    else:
                        messages.success(request, f"Saved as version {agent.current_version}.")
            return HttpResponseRedirect(f"/agents/{agent.pk}")
        except ApiError as exc:
            field, message = forms.error_field(exc)
            errors[field] = message
    return _form_page(request, agent, forms.form_state_from_post(request.POST), errors, status=400)


@console_view(Role.EDITOR)
def agent_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _save(request, None)
    return _form_page(request, None, forms.agent_form_state(None), {})


@console_view(Role.EDITOR)
def agent_edit(request: HttpRequest, agent_id: str) -> HttpResponse:
    agent = _agent(request, agent_id)
    if agent.is_archived:
        messages.error(request, "This agent is archived and read-only.")
        return HttpResponseRedirect(f"/agents/{agent.pk}")
    if request.method == "POST":
        return _save(request, agent)
    return _form_page(request, agent, forms.agent_form_state(agent.latest().definition), {})


@console_view()
def agent_detail(request: HttpRequest, agent_id: str) -> HttpResponse:
    return _detail_page(request, _agent(request, agent_id), forms.session_start_state(None), {})


def _detail_page(
    request: HttpRequest, agent: Agent, start: dict[str, Any], errors: dict[str, str], status: int = 200
) -> HttpResponse:
    """The agent page; after a failed start, with the start form as the user left it and the errors
    on its fields."""
    latest = agent.latest()
    versions = list(agent.versions.order_by("-version").only("version", "created_at", "definition")[:100])
    environments = Environment.objects.filter(workspace=agent.workspace, archived_at=None).order_by("name")
    context = {
        "nav": "agents",
        "agent": agent,
        "latest": latest,
        "d": latest.definition,
        "versions": versions,
        "environments": environments,
        "definition_json": json.dumps(latest.definition, indent=2, sort_keys=True),
        "recent": with_costs(list(agent.sessions.order_by("-created_at")[:10])),
        "tools": forms.agent_form_state(latest.definition),
        "start": start,
        "errors": errors,
        **_start_choices(agent.workspace),
    }
    return render_page(request, "console/agent_detail.html", context, status=status)


def _start_choices(workspace: Any) -> dict[str, Any]:
    """What a new session can be given from the agent page: vaults, uploaded files, memory stores."""
    from files.models import File
    from memory.models import MemoryStore
    from vaults.models import Vault

    return {
        "vaults": Vault.objects.filter(workspace=workspace, archived_at=None).order_by("-created_at")[:50],
        "files": File.objects.filter(workspace=workspace, scope_id=None).order_by("-created_at")[:50],
        "memory_stores": MemoryStore.objects.filter(workspace=workspace, archived_at=None).order_by("name")[
            :50
        ],
    }


@console_view()
def agent_diff(request: HttpRequest, agent_id: str) -> HttpResponse:
    agent = _agent(request, agent_id)
    try:
        a = int(request.GET.get("a", max(1, agent.current_version - 1)))
        b = int(request.GET.get("b", agent.current_version))
    except ValueError:
        a, b = max(1, agent.current_version - 1), agent.current_version
    found = {v.version: v for v in agent.versions.filter(version__in=[a, b])}
    if a not in found or b not in found:
        raise Http404("No such version")
    left = json.dumps(found[a].definition, indent=2, sort_keys=True).splitlines()
    right = json.dumps(found[b].definition, indent=2, sort_keys=True).splitlines()
    rows = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        span = max(i2 - i1, j2 - j1)
        for k in range(span):
            old = left[i1 + k] if i1 + k < i2 else ""
            new = right[j1 + k] if j1 + k < j2 else ""
            rows.append({"tag": tag, "old": old, "new": new})
    context = {
        "nav": "agents",
        "agent": agent,
        "a": a,
        "b": b,
        "rows": rows,
        "changed": any(r["tag"] != "equal" for r in rows),
        "numbers": list(agent.versions.order_by("-version").values_list("version", flat=True)),
    }
    return render_page(request, "console/agent_diff.html", context)


@require_POST
@console_view(Role.EDITOR)
def agent_archive(request: HttpRequest, agent_id: str) -> HttpResponse:
    from agents.services import agent_archive as archive

    agent = _agent(request, agent_id)
    archive(agent=agent)
    messages.success(
        request, f"Agent {agent.name!r} archived. Existing sessions keep running; no new ones can start."
    )
    return HttpResponseRedirect(f"/agents/{agent.pk}")


@require_POST
@console_view(Role.EDITOR)
def agent_start_session(request: HttpRequest, agent_id: str) -> HttpResponse:
    from costs.services import session_starter_record
    from sessions.services import events_send, session_create

    agent = _agent(request, agent_id)
    first = request.POST.get("message", "").strip()
    field = "form"
    try:
        body = forms.session_start_body(request.POST, agent_id=agent.pk)
        with transaction.atomic():
            session = session_create(workspace=request.access.workspace, body=body)  # type: ignore[attr-defined]
            session_starter_record(session=session, user=request.user)
            if first:
                field = "message"  # what fails from here on is the first message
                events_send(
                    session=session,
                    events=[{"type": "user.message", "content": [{"type": "text", "text": first}]}],
                )
    except ApiError as exc:
        if field == "form":
            field = forms.session_start_error_field(request.POST, exc)
        errors = {field: exc.message}
        return _detail_page(request, agent, forms.session_start_state(request.POST), errors, status=400)
    return HttpResponseRedirect(f"/sessions/{session.pk}")

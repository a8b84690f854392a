"""The console's providers page (admins): the registry's rows, GALLEY_PROVIDERS read-only, and a
connection test. Keys are write-only: a form shows whether one is set, never the key."""

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from console.access import console_view, render_page
from providers import forms, registry, services
from providers.config import TYPE_LABELS, ProviderConfigError
from providers.models import ModelProvider


def _page(
    request: HttpRequest, form: dict[str, Any], errors: dict[str, str], status: int = 200
) -> HttpResponse:
    return render_page(
        request,
        "console/providers.html",
        {
            "nav": "providers",
            "rows": ModelProvider.objects.all(),
            "env_rows": registry.env_providers(),
            "types": TYPE_LABELS,
            "f": form,
            "errors": errors,
        },
        status=status,
    )


def _blank() -> dict[str, Any]:
    return {
        "name": "",
        "type": "openai",
        "base_url": "",
        "region": "",
        "project_id": "",
        "models": "",
        "headers": "",
    }


@console_view(Role.ADMIN)
def provider_list(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _page(request, _blank(), {})
    form = {k: request.POST.get(k, "") for k in forms.FIELDS} | {
        "list_models": request.POST.get("list_models") == "on"
    }
    try:
        row = services.provider_create(data=forms.provider_data(request.POST))
    except ProviderConfigError as exc:
        return _page(request, form, {forms.field_of(exc): str(exc)}, status=400)
    messages.success(request, f"Provider {row.name!r} added. Its models are used as {row.name}/<model>.")
    return HttpResponseRedirect("/providers")


def _row(name: str) -> ModelProvider:
    row = ModelProvider.objects.filter(name=name).first()
    if row is None:
        raise Http404("No such provider")
    return row


@console_view(Role.ADMIN)
def provider_edit(request: HttpRequest, name: str) -> HttpResponse:
    row = _row(name)
    errors: dict[str, str] = {}
    status = 200
    if request.method == "POST":
        try:
            services.provider_update(provider=row, data=forms.provider_data(request.POST))
        except ProviderConfigError as exc:
            errors[forms.field_of(exc)] = str(exc)
            status = 400
        else:
            messages.success(request, f"Provider {row.name!r} saved.")
            return HttpResponseRedirect("/providers")
    form = {
        "name": row.name,
        "type": request.POST.get("type", row.type),
        "base_url": request.POST.get("base_url", row.base_url),
        "region": request.POST.get("region", row.region),
        "project_id": request.POST.get("project_id", row.project_id),
        "models": request.POST.get("models", forms.models_lines(row.served_models)),
        "headers": "",
        "list_models": row.list_models,
    }
    return render_page(
        request,
        "console/provider_form.html",
        {"nav": "providers", "row": row, "f": form, "errors": errors, "types": TYPE_LABELS},
        status=status,
    )


@require_POST
@console_view(Role.ADMIN)
def provider_delete(request: HttpRequest, name: str) -> HttpResponse:
    row = _row(name)
    services.provider_delete(provider=row)
    messages.success(
        request, f"Provider {name!r} removed; agents using its models fail their turns until it is back."
    )
    return HttpResponseRedirect("/providers")


@require_POST
@console_view(Role.ADMIN)
def provider_test(request: HttpRequest, name: str) -> HttpResponse:
    result = services.provider_test(name=name, model=request.POST.get("model") or None)
    if request.headers.get("HX-Request"):
        return render_page(request, "console/_provider_test.html", {"name": name, "result": result})
    (messages.success if result.ok else messages.error)(request, f"{name}: {result.message}")
    return HttpResponseRedirect("/providers")

"""Vaults and credentials (admins only). Secrets go in through forms and never come back out:
pages show only the public half of a credential, and a failed form never re-fills a secret."""

from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from api.errors import ApiError
from console.access import console_view, render_page
from console.forms import (
    CREDENTIAL_KINDS,
    CREDENTIAL_PUBLIC_FIELDS,
    TOKEN_ENDPOINT_AUTHS,
    credential_body,
    credential_error_field,
)
from vaults.models import Credential, Vault

SECRET_FIELD = {"static_bearer": "token", "environment_variable": "secret_value", "mcp_oauth": "access_token"}


def _vault(request: HttpRequest, vault_id: str) -> Vault:
    vault = Vault.objects.filter(pk=vault_id, workspace=request.access.workspace).first()  # type: ignore[attr-defined]
    if vault is None:
        raise Http404("No such vault")
    return vault


def _credential(vault: Vault, credential_id: str) -> Credential:
    credential = Credential.objects.filter(pk=credential_id, vault=vault).first()
    if credential is None:
        raise Http404("No such credential")
    return credential


@console_view(Role.ADMIN)
def vault_list(request: HttpRequest) -> HttpResponse:
    from vaults.services import vault_create

    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    if request.method == "POST":
        name = request.POST.get("display_name", "").strip()
        if not name:
            errors["display_name"] = "Give the vault a name."
        else:
            try:
                with transaction.atomic():
                    vault = vault_create(workspace=workspace, body={"display_name": name})
                messages.success(request, f"Vault {name!r} created. Add credentials to it below.")
                return HttpResponseRedirect(f"/vaults/{vault.pk}")
            except ApiError as exc:
                errors["display_name"] = exc.message
    vaults = Vault.objects.filter(workspace=workspace).order_by("archived_at", "display_name")
    return render_page(
        request,
        "console/vault_list.html",
        {"nav": "vaults", "vaults": vaults, "errors": errors, "name": request.POST.get("display_name", "")},
        status=400 if errors else 200,
    )


@console_view(Role.ADMIN)
def vault_detail(request: HttpRequest, vault_id: str) -> HttpResponse:
    from vaults.services import credential_create

    vault = _vault(request, vault_id)
    errors: dict[str, str] = {}
    if request.method == "POST":
        body, errors = credential_body(request.POST)
        if not errors:
            try:
                with transaction.atomic():
                    credential_create(vault=vault, body=body)
                messages.success(request, "Credential saved. Its secret will not be shown again.")
                return HttpResponseRedirect(f"/vaults/{vault.pk}")
            except ApiError as exc:
                errors[credential_error_field(request.POST.get("type", ""), exc)] = exc.message
    credentials = vault.credentials.order_by("archived_at", "-created_at")
    # Only the public half (no secret field) reaches the template.
    form = {k.replace("-", "_"): request.POST.get(k, "") for k in CREDENTIAL_PUBLIC_FIELDS}
    context = {
        "nav": "vaults",
        "vault": vault,
        "credentials": credentials,
        "errors": errors,
        "types": CREDENTIAL_KINDS,
        "endpoint_auths": TOKEN_ENDPOINT_AUTHS,
        "form": form,
        "field_errors": {k.replace("-", "_"): v for k, v in errors.items()},
    }
    return render_page(request, "console/vault_detail.html", context, status=400 if errors else 200)


@require_POST
@console_view(Role.ADMIN)
def vault_archive(request: HttpRequest, vault_id: str) -> HttpResponse:
    from vaults.services import vault_archive as archive

    vault = _vault(request, vault_id)
    archive(vault=vault)
    messages.success(request, f"Vault {vault.display_name!r} archived.")
    return HttpResponseRedirect(f"/vaults/{vault.pk}")


@require_POST
@console_view(Role.ADMIN)
def credential_replace(request: HttpRequest, vault_id: str, credential_id: str) -> HttpResponse:
    from vaults.services import credential_update

    vault = _vault(request, vault_id)
    credential = _credential(vault, credential_id)
    secret = request.POST.get("secret", "")
    field = SECRET_FIELD.get(credential.auth_type)
    if not secret or field is None:
        messages.error(request, "Enter the new secret.")
        return HttpResponseRedirect(f"/vaults/{vault.pk}")
    try:
        with transaction.atomic():
            credential_update(
                credential=credential, body={"auth": {"type": credential.auth_type, field: secret}}
            )
    except ApiError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Secret replaced.")
    return HttpResponseRedirect(f"/vaults/{vault.pk}")


@require_POST
@console_view(Role.ADMIN)
def credential_archive(request: HttpRequest, vault_id: str, credential_id: str) -> HttpResponse:
    from vaults.services import credential_archive as archive

    vault = _vault(request, vault_id)
    credential = _credential(vault, credential_id)
    archive(credential=credential)
    messages.success(request, "Credential archived; sessions no longer receive it.")
    return HttpResponseRedirect(f"/vaults/{vault.pk}")

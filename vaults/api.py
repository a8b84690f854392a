"""/v1/vaults and their credentials (spec 12). Thin: parse, one service call, wire dict."""

from typing import Any

from django.http import HttpRequest
from ninja import Router

from api.pagination import page_body
from vaults import services
from vaults.schemas import (
    CredentialCreateParams,
    CredentialUpdateParams,
    VaultCreateParams,
    VaultUpdateParams,
    body_of,
)

router = Router()


def _vault(request: HttpRequest, vault_id: str):  # type: ignore[no-untyped-def]
    return services.vault_get(workspace=request.workspace, vault_id=vault_id)  # type: ignore[attr-defined]


@router.post("/vaults")
def vaults_create(request: HttpRequest, params: VaultCreateParams) -> dict[str, Any]:
    vault = services.vault_create(workspace=request.workspace, body=body_of(params))  # type: ignore[attr-defined]
    return services.vault_wire(vault)


@router.get("/vaults")
def vaults_list(
    request: HttpRequest, limit: int | None = None, page: str | None = None, include_archived: bool = False
) -> dict[str, Any]:
    found = services.vault_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        include_archived=include_archived,
        limit=limit,
        page=page,
    )
    return page_body(found, [services.vault_wire(v) for v in found.items])


@router.get("/vaults/{vault_id}")
def vaults_retrieve(request: HttpRequest, vault_id: str) -> dict[str, Any]:
    return services.vault_wire(_vault(request, vault_id))


@router.post("/vaults/{vault_id}")
def vaults_update(request: HttpRequest, vault_id: str, params: VaultUpdateParams) -> dict[str, Any]:
    return services.vault_wire(services.vault_update(vault=_vault(request, vault_id), body=body_of(params)))


@router.delete("/vaults/{vault_id}")
def vaults_delete(request: HttpRequest, vault_id: str) -> dict[str, Any]:
    return services.vault_delete(vault=_vault(request, vault_id))


@router.post("/vaults/{vault_id}/archive")
def vaults_archive(request: HttpRequest, vault_id: str) -> dict[str, Any]:
    return services.vault_wire(services.vault_archive(vault=_vault(request, vault_id)))


@router.post("/vaults/{vault_id}/credentials")
def credentials_create(request: HttpRequest, vault_id: str, params: CredentialCreateParams) -> dict[str, Any]:
    credential = services.credential_create(vault=_vault(request, vault_id), body=body_of(params))
    return services.credential_wire(credential)


@router.get("/vaults/{vault_id}/credentials")
def credentials_list(
    request: HttpRequest,
    vault_id: str,
    limit: int | None = None,
    page: str | None = None,
    include_archived: bool = False,
) -> dict[str, Any]:
    found = services.credential_list(
        vault=_vault(request, vault_id), include_archived=include_archived, limit=limit, page=page
    )
    return page_body(found, [services.credential_wire(c) for c in found.items])


@router.get("/vaults/{vault_id}/credentials/{credential_id}")
def credentials_retrieve(request: HttpRequest, vault_id: str, credential_id: str) -> dict[str, Any]:
    credential = services.credential_get(vault=_vault(request, vault_id), credential_id=credential_id)
    return services.credential_wire(credential)


@router.post("/vaults/{vault_id}/credentials/{credential_id}")
def credentials_update(
    request: HttpRequest, vault_id: str, credential_id: str, params: CredentialUpdateParams
) -> dict[str, Any]:
    credential = services.credential_get(vault=_vault(request, vault_id), credential_id=credential_id)
    return services.credential_wire(services.credential_update(credential=credential, body=body_of(params)))


@router.delete("/vaults/{vault_id}/credentials/{credential_id}")
def credentials_delete(request: HttpRequest, vault_id: str, credential_id: str) -> dict[str, Any]:
    credential = services.credential_get(vault=_vault(request, vault_id), credential_id=credential_id)
    return services.credential_delete(credential=credential)


@router.post("/vaults/{vault_id}/credentials/{credential_id}/archive")
def credentials_archive(request: HttpRequest, vault_id: str, credential_id: str) -> dict[str, Any]:
    credential = services.credential_get(vault=_vault(request, vault_id), credential_id=credential_id)
    return services.credential_wire(services.credential_archive(credential=credential))


@router.post("/vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate")
def credentials_mcp_oauth_validate(request: HttpRequest, vault_id: str, credential_id: str) -> dict[str, Any]:
    credential = services.credential_get(vault=_vault(request, vault_id), credential_id=credential_id)
    return services.credential_mcp_oauth_validate(credential=credential)

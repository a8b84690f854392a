"""Vaults and credentials (spec 12). Secrets are write-only: they go straight into
Credential.set_secret and never appear in a response, a log line or an error message."""

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import Workspace
from agents import definition as d
from api.errors import bad_request, conflict, not_found
from api.ids import has_prefix, new_id
from api.pagination import Page, check_limit, paginate
from api.wire import check_metadata, iso, patch_metadata
from vaults import crypto, oauth
from vaults.models import Credential, Vault
from webhooks.services import webhook_event_emit

AUTH_TYPES = ("static_bearer", "mcp_oauth", "environment_variable")
TOKEN_ENDPOINT_AUTH = ("none", "client_secret_basic", "client_secret_post")
MAX_CREDENTIAL_HOSTS = 16
SECRET_MAX = 16_384
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_HOST = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


def _check_body_keys(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    for key in body:
        if key not in allowed:
            raise bad_request(f"{key}: unknown field.")
    return body


# --- vaults -------------------------------------------------------------------------------------------


def vault_get(*, workspace: Workspace, vault_id: str) -> Vault:
    found = (
        Vault.objects.filter(workspace=workspace, id=vault_id).first()
        if has_prefix(vault_id, "vlt")
        else None
    )
    if found is None:
        raise not_found("Vault", vault_id)
    return found


def vault_wire(vault: Vault) -> dict[str, Any]:
    return {
        "id": vault.id,
        "type": "vault",
        "display_name": vault.display_name,
        "metadata": vault.metadata,
        "created_at": iso(vault.created_at),
        "updated_at": iso(vault.updated_at),
        "archived_at": iso(vault.archived_at),
    }


def vault_create(*, workspace: Workspace, body: dict[str, Any]) -> Vault:
    _check_body_keys(body, ("display_name", "metadata"))
    name = d.expect_str(body.get("display_name"), "display_name", min_len=1, max_len=255)
    metadata = (
        check_metadata(d.expect_dict(body["metadata"], "metadata"))
        if body.get("metadata") is not None
        else {}
    )
    with transaction.atomic():
        vault = Vault.objects.create(
            id=new_id("vlt"), workspace=workspace, display_name=name, metadata=metadata
        )
        webhook_event_emit(workspace=workspace, type="vault.created", data={"id": vault.pk})
    return vault


def vault_update(*, vault: Vault, body: dict[str, Any]) -> Vault:
    _check_body_keys(body, ("display_name", "metadata"))
    with transaction.atomic():
        locked = Vault.objects.select_for_update().get(pk=vault.pk)
        if locked.archived_at is not None:
            raise bad_request(f"Vault {vault.id!r} is archived and cannot be updated.")
        if body.get("display_name") is not None:
            locked.display_name = d.expect_str(body["display_name"], "display_name", min_len=1, max_len=255)
        if body.get("metadata") is not None:
            locked.metadata = patch_metadata(locked.metadata, d.expect_dict(body["metadata"], "metadata"))
        locked.updated_at = timezone.now()
        locked.save()
    return locked


def vault_archive(*, vault: Vault) -> Vault:
    """Archiving a vault also archives its credentials, so no session can use them any more."""
    now = timezone.now()
    with transaction.atomic():
        archived = Vault.objects.filter(pk=vault.pk, archived_at__isnull=True)
        if archived.update(archived_at=now, updated_at=now):
            webhook_event_emit(workspace=vault.workspace_id, type="vault.archived", data={"id": vault.pk})
        for credential_id in Credential.objects.filter(vault=vault, archived_at__isnull=True).values_list(
            "pk", flat=True
        ):
            webhook_event_emit(
                workspace=vault.workspace_id,
                type="vault_credential.archived",
                data={"id": credential_id, "vault_id": vault.pk},
            )
        Credential.objects.filter(vault=vault, archived_at__isnull=True).update(
            archived_at=now, updated_at=now
        )
    vault.refresh_from_db()
    return vault


def vault_delete(*, vault: Vault) -> dict[str, Any]:
    vault_id = vault.id
    with transaction.atomic():
        vault.delete()  # credentials cascade; sessions keep only the id in vault_ids
        webhook_event_emit(workspace=vault.workspace_id, type="vault.deleted", data={"id": vault_id})
    return {"id": vault_id, "type": "vault_deleted"}


def vault_list(
    *, workspace: Workspace, include_archived: bool = False, limit: int | None = None, page: str | None = None
) -> Page:
    qs = Vault.objects.filter(workspace=workspace)
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )


# --- credentials: parsing of `auth` -------------------------------------------------------------------


def _secret(value: Any, field: str) -> str:
    # The message names the field but never echoes the value.
    if not isinstance(value, str) or not value:
        raise bad_request(f"{field}: expected a non-empty string.")
    if len(value) > SECRET_MAX:
        raise bad_request(f"{field}: must be at most {SECRET_MAX} characters.")
    return value


def _future_time(value: Any, field: str) -> str | None:
    if value is None:
        return None
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is None or parsed.tzinfo is None:
        raise bad_request(f"{field}: expected an RFC 3339 timestamp with a timezone.")
    if parsed <= timezone.now():
        raise bad_request(f"{field}: must be in the future.")
    return iso(parsed)


def _token_endpoint_auth(value: Any, field: str) -> tuple[dict[str, str], str | None]:
    data = d.expect_dict(value, field)
    kind = d.require_type(data, field, TOKEN_ENDPOINT_AUTH)
    if kind == "none":
        d.only_keys(data, ("type",), field)
        return {"type": "none"}, None
    d.only_keys(data, ("type", "client_secret"), field)
    return {"type": kind}, _secret(data.get("client_secret"), f"{field}.client_secret")


def _credential_networking(value: Any, field: str) -> dict[str, Any]:
    data = d.expect_dict(value, field)
    kind = d.require_type(data, field, ("unrestricted", "limited"))
    if kind == "unrestricted":
        d.only_keys(data, ("type",), field)
        return {"type": "unrestricted"}
    d.only_keys(data, ("type", "allowed_hosts"), field)
    hosts = d.expect_list(data.get("allowed_hosts"), f"{field}.allowed_hosts")
    if not 1 <= len(hosts) <= MAX_CREDENTIAL_HOSTS:
        raise bad_request(f"{field}.allowed_hosts: must list 1 to {MAX_CREDENTIAL_HOSTS} hosts.")
    for i, host in enumerate(hosts):
        text = d.expect_str(host, f"{field}.allowed_hosts[{i}]", min_len=1, max_len=253)
        if not _HOST.match(text):
            raise bad_request(
                f"{field}.allowed_hosts[{i}]: {text!r} is not a hostname, IPv4 address or *.domain."
            )
    return {"type": "limited", "allowed_hosts": [str(h).lower() for h in hosts]}


def _injection_location(value: Any, field: str, current: dict[str, bool] | None) -> dict[str, bool]:
    resolved = dict(current) if current else {"header": True, "body": False}
    if value is None:
        return resolved
    data = d.expect_dict(value, field)
    d.only_keys(data, ("header", "body"), field)
    for key in ("header", "body"):
        if data.get(key) is not None:
            resolved[key] = d.expect_bool(data[key], f"{field}.{key}")
    if not (resolved["header"] or resolved["body"]):
        raise bad_request(f"{field}: at least one of header or body must be true.")
    return resolved


def _parse_auth_create(value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """auth -> (public fields as the wire shows them, secret fields to encrypt)."""
    field = "auth"
    data = d.expect_dict(value, field)
    kind = d.require_type(data, field, AUTH_TYPES)
    if kind == "static_bearer":
        d.only_keys(data, ("type", "mcp_server_url", "token"), field)
        url = d.check_url(data.get("mcp_server_url"), f"{field}.mcp_server_url")
        return {"type": kind, "mcp_server_url": url}, {"token": _secret(data.get("token"), f"{field}.token")}
    if kind == "mcp_oauth":
        d.only_keys(data, ("type", "mcp_server_url", "access_token", "expires_at", "refresh"), field)
        url = d.check_url(data.get("mcp_server_url"), f"{field}.mcp_server_url")
        secret: dict[str, Any] = {"access_token": _secret(data.get("access_token"), f"{field}.access_token")}
        public: dict[str, Any] = {
            "type": kind,
            "mcp_server_url": url,
            "expires_at": _future_time(data.get("expires_at"), f"{field}.expires_at"),
            "refresh": None,
        }
        if data.get("refresh") is not None:
            where = f"{field}.refresh"
            refresh = d.expect_dict(data["refresh"], where)
            d.only_keys(
                refresh,
                ("refresh_token", "client_id", "token_endpoint", "token_endpoint_auth", "scope", "resource"),
                where,
            )
            endpoint_auth, client_secret = _token_endpoint_auth(
                refresh.get("token_endpoint_auth"), f"{where}.token_endpoint_auth"
            )
            public["refresh"] = {
                "client_id": d.expect_str(
                    refresh.get("client_id"), f"{where}.client_id", min_len=1, max_len=1024
                ),
                "token_endpoint": d.check_url(refresh.get("token_endpoint"), f"{where}.token_endpoint"),
                "token_endpoint_auth": endpoint_auth,
                "scope": d.optional_str(refresh.get("scope"), f"{where}.scope", max_len=4096),
                "resource": d.optional_str(refresh.get("resource"), f"{where}.resource", max_len=2048),
            }
            secret["refresh_token"] = _secret(refresh.get("refresh_token"), f"{where}.refresh_token")
            if client_secret is not None:
                secret["client_secret"] = client_secret
        return public, secret
    d.only_keys(data, ("type", "secret_name", "secret_value", "networking", "injection_location"), field)
    name = d.expect_str(data.get("secret_name"), f"{field}.secret_name", min_len=1)
    if not _ENV_NAME.match(name):
        raise bad_request(
            f"{field}.secret_name: must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)."
        )
    return (
        {
            "type": kind,
            "secret_name": name,
            "networking": _credential_networking(data.get("networking"), f"{field}.networking"),
            "injection_location": _injection_location(
                data.get("injection_location"), f"{field}.injection_location", None
            ),
        },
        {"secret_value": _secret(data.get("secret_value"), f"{field}.secret_value")},
    )


def _immutable(data: dict[str, Any], key: str, current: Any, field: str) -> None:
    if key in data and data[key] != current:
        raise bad_request(f"{field}.{key}: cannot be changed; create a new credential instead.")


def _parse_auth_update(
    value: Any, public: dict[str, Any], secret: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply an auth update over the stored public and secret fields. The type never changes."""
    field = "auth"
    data = d.expect_dict(value, field)
    kind = public["type"]
    if data.get("type") != kind:
        raise bad_request(f"{field}.type: a credential's type cannot change (it is {kind!r}).")
    public, secret = dict(public), dict(secret)
    if kind == "static_bearer":
        d.only_keys(data, ("type", "token", "mcp_server_url"), field)
        _immutable(data, "mcp_server_url", public["mcp_server_url"], field)
        if data.get("token") is not None:
            secret["token"] = _secret(data["token"], f"{field}.token")
        return public, secret
    if kind == "mcp_oauth":
        d.only_keys(data, ("type", "access_token", "expires_at", "refresh", "mcp_server_url"), field)
        _immutable(data, "mcp_server_url", public["mcp_server_url"], field)
        if data.get("access_token") is not None:
            secret["access_token"] = _secret(data["access_token"], f"{field}.access_token")
        if "expires_at" in data:
            public["expires_at"] = _future_time(data["expires_at"], f"{field}.expires_at")
        if "refresh" in data and data["refresh"] is None:
            public["refresh"] = None
            secret.pop("refresh_token", None)
            secret.pop("client_secret", None)
        elif data.get("refresh") is not None:
            where = f"{field}.refresh"
            refresh = d.expect_dict(data["refresh"], where)
            d.only_keys(refresh, ("refresh_token", "scope", "token_endpoint_auth", "client_id"), where)
            if public.get("refresh") is None:
                raise bad_request(
                    f"{where}: this credential has no refresh settings to update; create a new one."
                )
            stored = dict(public["refresh"])
            _immutable(refresh, "client_id", stored["client_id"], where)
            if refresh.get("refresh_token") is not None:
                secret["refresh_token"] = _secret(refresh["refresh_token"], f"{where}.refresh_token")
            if "scope" in refresh:
                stored["scope"] = d.optional_str(refresh["scope"], f"{where}.scope", max_len=4096)
            if refresh.get("token_endpoint_auth") is not None:
                auth_data = d.expect_dict(refresh["token_endpoint_auth"], f"{where}.token_endpoint_auth")
                if auth_data.get("type") in ("client_secret_basic", "client_secret_post") and (
                    auth_data.get("client_secret") is None and "client_secret" in secret
                ):
                    auth_data = {**auth_data, "client_secret": secret["client_secret"]}  # keep the stored one
                endpoint_auth, client_secret = _token_endpoint_auth(auth_data, f"{where}.token_endpoint_auth")
                stored["token_endpoint_auth"] = endpoint_auth
                secret.pop("client_secret", None)
                if client_secret is not None:
                    secret["client_secret"] = client_secret
            public["refresh"] = stored
        return public, secret
    d.only_keys(data, ("type", "secret_value", "networking", "injection_location", "secret_name"), field)
    _immutable(data, "secret_name", public["secret_name"], field)
    if data.get("secret_value") is not None:
        secret["secret_value"] = _secret(data["secret_value"], f"{field}.secret_value")
    if data.get("networking") is not None:
        public["networking"] = _credential_networking(data["networking"], f"{field}.networking")
    if "injection_location" in data:
        public["injection_location"] = _injection_location(
            data["injection_location"], f"{field}.injection_location", public["injection_location"]
        )
    return public, secret


# --- credentials: workflows ---------------------------------------------------------------------------


def credential_get(*, vault: Vault, credential_id: str) -> Credential:
    found = None
    if has_prefix(credential_id, "vcrd"):
        found = Credential.objects.filter(vault=vault, id=credential_id).first()
    if found is None:
        raise not_found("Credential", credential_id)
    return found


def credential_wire(credential: Credential) -> dict[str, Any]:
    return {
        "id": credential.id,
        "type": "vault_credential",
        "vault_id": credential.vault_id,
        "display_name": credential.display_name,
        "auth": credential.auth_public,
        "metadata": credential.metadata,
        "created_at": iso(credential.created_at),
        "updated_at": iso(credential.updated_at),
        "archived_at": iso(credential.archived_at),
    }


def _check_unique(vault: Vault, public: dict[str, Any], *, exclude: str | None = None) -> None:
    """One active credential per MCP server URL (and per env var name) in a vault. Callers hold the
    vault row lock, so two creates cannot both pass this check."""
    active = Credential.objects.filter(vault=vault, archived_at__isnull=True)
    if exclude:
        active = active.exclude(pk=exclude)
    url = public.get("mcp_server_url")
    if url and active.filter(mcp_server_url=url).exists():
        raise conflict(
            f"auth.mcp_server_url: vault {vault.id!r} already has an active credential for {url!r}."
        )
    name = public.get("secret_name")
    if name and any(
        c.auth_public.get("secret_name") == name for c in active.filter(auth_type="environment_variable")
    ):
        raise conflict(
            f"auth.secret_name: vault {vault.id!r} already has an active credential named {name!r}."
        )


def credential_create(*, vault: Vault, body: dict[str, Any]) -> Credential:
    _check_body_keys(body, ("auth", "display_name", "metadata"))
    public, secret = _parse_auth_create(body.get("auth"))
    display_name = d.optional_str(body.get("display_name"), "display_name", max_len=255)
    metadata = (
        check_metadata(d.expect_dict(body["metadata"], "metadata"))
        if body.get("metadata") is not None
        else {}
    )
    with transaction.atomic():
        locked = Vault.objects.select_for_update().get(pk=vault.pk)
        if locked.archived_at is not None:
            raise bad_request(f"Vault {vault.id!r} is archived; credentials cannot be added.")
        _check_unique(locked, public)
        credential = Credential(
            id=new_id("vcrd"),
            vault=locked,
            display_name=display_name,
            auth_type=public["type"],
            auth_public=public,
            mcp_server_url=public.get("mcp_server_url"),
            metadata=metadata,
        )
        credential.set_secret(secret)
        credential.save(force_insert=True)
        webhook_event_emit(
            workspace=locked.workspace_id,
            type="vault_credential.created",
            data={"id": credential.pk, "vault_id": locked.pk},
        )
    return credential


def credential_update(*, credential: Credential, body: dict[str, Any]) -> Credential:
    _check_body_keys(body, ("auth", "display_name", "metadata"))
    with transaction.atomic():
        Vault.objects.select_for_update().get(pk=credential.vault_id)
        locked = Credential.objects.select_for_update().get(pk=credential.pk)
        if locked.archived_at is not None:
            raise bad_request(f"Credential {credential.id!r} is archived and cannot be updated.")
        if body.get("auth") is not None:
            public, secret = _parse_auth_update(body["auth"], locked.auth_public, locked.secret())
            locked.auth_public = public
            locked.set_secret(secret)
        if "display_name" in body:
            locked.display_name = d.optional_str(body["display_name"], "display_name", max_len=255)
        if body.get("metadata") is not None:
            locked.metadata = patch_metadata(locked.metadata, d.expect_dict(body["metadata"], "metadata"))
        locked.updated_at = timezone.now()
        locked.save()
    return locked


def credential_archive(*, credential: Credential) -> Credential:
    now = timezone.now()
    with transaction.atomic():
        if Credential.objects.filter(pk=credential.pk, archived_at__isnull=True).update(
            archived_at=now, updated_at=now
        ):
            webhook_event_emit(
                workspace=credential.vault.workspace_id,
                type="vault_credential.archived",
                data={"id": credential.pk, "vault_id": credential.vault_id},
            )
    credential.refresh_from_db()
    return credential


def credential_delete(*, credential: Credential) -> dict[str, Any]:
    credential_id = credential.id
    with transaction.atomic():
        workspace_id, vault_id = credential.vault.workspace_id, credential.vault_id
        credential.delete()
        webhook_event_emit(
            workspace=workspace_id,
            type="vault_credential.deleted",
            data={"id": credential_id, "vault_id": vault_id},
        )
    return {"id": credential_id, "type": "vault_credential_deleted"}


def credential_list(
    *, vault: Vault, include_archived: bool = False, limit: int | None = None, page: str | None = None
) -> Page:
    qs = Credential.objects.filter(vault=vault)
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )


# --- key rotation -------------------------------------------------------------------------------------


def vault_keys_rotate() -> int:
    """Re-encrypt every credential with the first configured key. On the embedded key file a fresh
    key is prepended first; with GALLEY_VAULT_KEYS the operator has already put the new key first."""
    if not settings.GALLEY_VAULT_KEYS:
        crypto.add_key_to_file()
    crypto.reset_cache()
    rotated = 0
    for pk, ciphertext in list(Credential.objects.values_list("pk", "secret_ciphertext")):
        # Conditional: a concurrent update already wrote a ciphertext under the new key.
        rotated += Credential.objects.filter(pk=pk, secret_ciphertext=ciphertext).update(
            secret_ciphertext=crypto.rotate(ciphertext)
        )
    from webhooks.services import webhook_secrets_rotate_keys

    webhook_secrets_rotate_keys()  # webhook signing secrets are encrypted with the same keys
    return rotated


# --- live validation of mcp_oauth credentials ---------------------------------------------------------


def credential_mcp_oauth_validate(*, credential: Credential) -> dict[str, Any]:
    """Probe the MCP server with the stored access token; on a 401/403 try the refresh_token grant,
    keep the new tokens and probe again. Network calls run outside any transaction."""
    if credential.auth_type != "mcp_oauth":
        raise bad_request(
            f"Credential {credential.id!r} is {credential.auth_type!r}; only mcp_oauth can be validated."
        )
    if credential.archived_at is not None:
        raise bad_request(f"Credential {credential.id!r} is archived.")
    public = credential.auth_public
    secret = credential.secret()
    secrets = [str(v) for v in secret.values()]
    probe = oauth.probe_mcp(public["mcp_server_url"], secret["access_token"], secrets)
    refresh: dict[str, Any] | None = None
    status = "valid" if probe.ok else "unknown"
    if probe.unauthorized:
        status = "invalid"
        if public.get("refresh") is None or not secret.get("refresh_token"):
            refresh = {"status": "no_refresh_token", "http_response": None}
        else:
            result = oauth.refresh_tokens(public["refresh"], secret, secrets)
            refresh = {
                "status": result.status,
                "http_response": result.response.wire() if result.response else None,
            }
            if result.status != "succeeded":
                credential_refresh_failed(credential=credential)
            if result.status == "succeeded":
                _store_refreshed_tokens(credential, result.tokens)
                secret = credential.secret()
                probe = oauth.probe_mcp(
                    public["mcp_server_url"], secret["access_token"], [*secrets, *map(str, secret.values())]
                )
                status = "valid" if probe.ok else ("invalid" if probe.unauthorized else "unknown")
    mcp_probe = None
    if not probe.ok:
        mcp_probe = {
            "method": "initialize",
            "http_response": probe.response.wire() if probe.response else None,
        }
    return {
        "type": "vault_credential_validation",
        "credential_id": credential.id,
        "vault_id": credential.vault_id,
        "status": status,
        "has_refresh_token": bool(secret.get("refresh_token")),
        "validated_at": iso(timezone.now()),
        "mcp_probe": mcp_probe,
        "refresh": refresh,
    }


def credential_refresh_failed(*, credential: Credential) -> None:
    """A refresh_token grant failed: the `vault_credential.refresh_failed` webhook event."""
    with transaction.atomic():
        webhook_event_emit(
            workspace=credential.vault.workspace_id,
            type="vault_credential.refresh_failed",
            data={"id": credential.pk, "vault_id": credential.vault_id},
        )


def credential_store_refreshed_tokens(credential: Credential, tokens: dict[str, Any]) -> None:
    """Keep the tokens a refresh_token grant returned (also used by the harness's MCP client)."""
    _store_refreshed_tokens(credential, tokens)


def _store_refreshed_tokens(credential: Credential, tokens: dict[str, Any]) -> None:
    with transaction.atomic():
        locked = Credential.objects.select_for_update().get(pk=credential.pk)
        secret = locked.secret()
        secret["access_token"] = tokens["access_token"]
        if isinstance(tokens.get("refresh_token"), str) and tokens["refresh_token"]:
            secret["refresh_token"] = tokens["refresh_token"]  # the server rotated it
        public = dict(locked.auth_public)
        expires_in = tokens.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            public["expires_at"] = iso(timezone.now() + timedelta(seconds=float(expires_in)))
        locked.auth_public = public
        locked.set_secret(secret)
        locked.updated_at = timezone.now()
        locked.save(update_fields=["auth_public", "secret_ciphertext", "updated_at"])
    credential.refresh_from_db()

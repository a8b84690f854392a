import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.utils import timezone

from accounts.models import Workspace
from api.errors import ApiError
from galley.env import ConfigError
from vaults import crypto, services
from vaults.models import Credential, Vault

pytestmark = pytest.mark.django_db

BEARER = {"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/mcp", "token": "secret-token"}


@pytest.fixture(autouse=True)
def isolated_keys(settings, tmp_path):
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    crypto.reset_cache()
    yield
    crypto.reset_cache()


def error_of(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def vault(workspace: Workspace) -> Vault:
    return services.vault_create(
        workspace=workspace, body={"display_name": "Team secrets", "metadata": {"team": "a"}}
    )


def everything_stored(credential: Credential) -> str:
    credential.refresh_from_db()
    return (
        json.dumps(services.credential_wire(credential))
        + credential.secret_ciphertext
        + json.dumps(credential.auth_public)
    )


def test_vault_crud(workspace):
    v = vault(workspace)
    assert services.vault_wire(v)["display_name"] == "Team secrets"
    v = services.vault_update(vault=v, body={"display_name": "Renamed", "metadata": {"team": None, "x": "1"}})
    assert v.display_name == "Renamed" and v.metadata == {"x": "1"}
    v = services.vault_archive(vault=v)
    assert services.vault_wire(v)["archived_at"] is not None
    assert services.vault_list(workspace=workspace).items == []
    vault_id = v.id
    assert services.vault_delete(vault=v) == {"id": vault_id, "type": "vault_deleted"}
    assert not Vault.objects.filter(pk=vault_id).exists()
    assert (
        "display_name"
        in error_of(lambda: services.vault_create(workspace=workspace, body={"display_name": ""})).message
    )


def test_static_bearer_secret_is_write_only_and_encrypted(workspace):
    credential = services.credential_create(
        vault=vault(workspace), body={"auth": BEARER, "display_name": "docs"}
    )
    out = services.credential_wire(credential)
    assert out["auth"] == {"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/mcp"}
    assert "secret-token" not in everything_stored(credential)
    assert credential.secret() == {"token": "secret-token"}


def test_mcp_oauth_hides_every_secret(workspace):
    expires = (timezone.now() + timedelta(hours=1)).isoformat()
    auth = {
        "type": "mcp_oauth",
        "mcp_server_url": "https://mcp.example.com/mcp",
        "access_token": "at-secret",
        "expires_at": expires,
        "refresh": {
            "refresh_token": "rt-secret",
            "client_id": "cid",
            "token_endpoint": "https://auth.example.com/token",
            "token_endpoint_auth": {"type": "client_secret_post", "client_secret": "cs-secret"},
            "scope": "read",
        },
    }
    credential = services.credential_create(vault=vault(workspace), body={"auth": auth})
    public = services.credential_wire(credential)["auth"]
    assert public["refresh"] == {
        "client_id": "cid",
        "token_endpoint": "https://auth.example.com/token",
        "token_endpoint_auth": {"type": "client_secret_post"},
        "scope": "read",
        "resource": None,
    }
    stored = everything_stored(credential)
    for secret in ("at-secret", "rt-secret", "cs-secret"):
        assert secret not in stored
    assert credential.secret() == {
        "access_token": "at-secret",
        "refresh_token": "rt-secret",
        "client_secret": "cs-secret",
    }
    updated = services.credential_update(
        credential=credential,
        body={"auth": {"type": "mcp_oauth", "access_token": "at2", "refresh": {"scope": "write"}}},
    )
    assert updated.secret() == {
        "access_token": "at2",
        "refresh_token": "rt-secret",
        "client_secret": "cs-secret",
    }
    assert updated.auth_public["refresh"]["scope"] == "write"
    err = error_of(
        lambda: services.credential_update(
            credential=updated, body={"auth": {"type": "mcp_oauth", "refresh": {"client_id": "other"}}}
        )
    )
    assert "auth.refresh.client_id" in err.message


def test_expires_at_must_be_in_the_future(workspace):
    auth = {
        "type": "mcp_oauth",
        "mcp_server_url": "https://m.example",
        "access_token": "t",
        "expires_at": "2001-01-01T00:00:00Z",
    }
    err = error_of(lambda: services.credential_create(vault=vault(workspace), body={"auth": auth}))
    assert "auth.expires_at" in err.message


def test_environment_variable_credential(workspace):
    auth = {
        "type": "environment_variable",
        "secret_name": "GITHUB_TOKEN",
        "secret_value": "ghp-secret",
        "networking": {"type": "limited", "allowed_hosts": ["api.github.com", "*.githubusercontent.com"]},
    }
    credential = services.credential_create(vault=vault(workspace), body={"auth": auth})
    assert services.credential_wire(credential)["auth"] == {
        "type": "environment_variable",
        "secret_name": "GITHUB_TOKEN",
        "networking": {"type": "limited", "allowed_hosts": ["api.github.com", "*.githubusercontent.com"]},
        "injection_location": {"header": True, "body": False},
    }
    assert "ghp-secret" not in everything_stored(credential)
    updated = services.credential_update(
        credential=credential,
        body={
            "auth": {
                "type": "environment_variable",
                "secret_value": "new",
                "injection_location": {"body": True},
            }
        },
    )
    assert updated.secret() == {"secret_value": "new"}
    assert updated.auth_public["injection_location"] == {"header": True, "body": True}
    err = error_of(
        lambda: services.credential_update(
            credential=updated, body={"auth": {"type": "environment_variable", "secret_name": "OTHER"}}
        )
    )
    assert "auth.secret_name" in err.message
    hosts = [f"h{i}.example.com" for i in range(17)]
    err = error_of(
        lambda: services.credential_create(
            vault=vault(workspace),
            body={"auth": {**auth, "networking": {"type": "limited", "allowed_hosts": hosts}}},
        )
    )
    assert "allowed_hosts" in err.message


def test_changing_the_type_or_the_url_is_rejected(workspace):
    credential = services.credential_create(vault=vault(workspace), body={"auth": BEARER})
    err = error_of(
        lambda: services.credential_update(
            credential=credential, body={"auth": {"type": "mcp_oauth", "access_token": "x"}}
        )
    )
    assert err.status == 400 and "auth.type" in err.message
    err = error_of(
        lambda: services.credential_update(
            credential=credential,
            body={"auth": {"type": "static_bearer", "mcp_server_url": "https://other.example"}},
        )
    )
    assert "auth.mcp_server_url" in err.message


def test_one_active_credential_per_mcp_url(workspace):
    v = vault(workspace)
    first = services.credential_create(vault=v, body={"auth": BEARER})
    err = error_of(lambda: services.credential_create(vault=v, body={"auth": BEARER}))
    assert err.status == 409 and err.headers["x-should-retry"] == "false"
    services.credential_archive(credential=first)
    services.credential_create(vault=v, body={"auth": BEARER})


def test_errors_never_echo_a_secret(workspace, caplog):
    caplog.set_level(logging.DEBUG)
    bad = {**BEARER, "token": "x" * 20000}
    err = error_of(lambda: services.credential_create(vault=vault(workspace), body={"auth": bad}))
    assert "xxxx" not in err.message
    services.credential_create(vault=vault(workspace), body={"auth": BEARER})
    assert "secret-token" not in caplog.text


def test_credentials_of_another_vault_or_workspace_are_404(workspace):
    v = vault(workspace)
    credential = services.credential_create(vault=v, body={"auth": BEARER})
    other_vault = vault(workspace)
    assert (
        error_of(lambda: services.credential_get(vault=other_vault, credential_id=credential.id)).status
        == 404
    )
    other = Workspace.objects.create(name="other")
    assert error_of(lambda: services.vault_get(workspace=other, vault_id=v.id)).status == 404
    assert error_of(lambda: services.vault_get(workspace=workspace, vault_id="agent_1")).status == 404


def test_archived_vault_takes_no_new_credentials_and_archives_its_own(workspace):
    v = vault(workspace)
    credential = services.credential_create(vault=v, body={"auth": BEARER})
    services.vault_archive(vault=v)
    credential.refresh_from_db()
    assert credential.archived_at is not None
    assert error_of(lambda: services.credential_create(vault=v, body={"auth": BEARER})).status == 400


def test_credential_delete(workspace):
    credential = services.credential_create(vault=vault(workspace), body={"auth": BEARER})
    credential_id = credential.id
    assert services.credential_delete(credential=credential) == {
        "id": credential_id,
        "type": "vault_credential_deleted",
    }
    assert not Credential.objects.filter(pk=credential_id).exists()


def test_rotation_on_the_embedded_key_file(workspace, settings):
    credential = services.credential_create(vault=vault(workspace), body={"auth": BEARER})
    old_keys = crypto.configured_keys()
    assert len(old_keys) == 1
    call_command("rotate_vault_keys")
    new_keys = crypto.configured_keys()
    assert len(new_keys) == 2 and new_keys[1] == old_keys[0]
    credential.refresh_from_db()
    assert json.loads(Fernet(new_keys[0].encode()).decrypt(credential.secret_ciphertext.encode())) == {
        "token": "secret-token"
    }
    settings.GALLEY_VAULT_KEY_FILE.write_text(new_keys[0] + "\n")  # the old key is no longer needed
    crypto.reset_cache()
    assert credential.secret() == {"token": "secret-token"}


def test_rotation_with_configured_keys(workspace, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GALLEY_VAULT_KEYS = [old]
    crypto.reset_cache()
    credential = services.credential_create(vault=vault(workspace), body={"auth": BEARER})
    settings.GALLEY_VAULT_KEYS = [new]
    crypto.reset_cache()
    with pytest.raises(ConfigError):
        credential.secret()
    settings.GALLEY_VAULT_KEYS = [new, old]
    crypto.reset_cache()
    assert credential.secret() == {"token": "secret-token"}  # old ciphertexts still decrypt mid-rotation
    assert services.vault_keys_rotate() == 1
    settings.GALLEY_VAULT_KEYS = [new]
    crypto.reset_cache()
    credential.refresh_from_db()
    assert credential.secret() == {"token": "secret-token"}
    assert not settings.GALLEY_VAULT_KEY_FILE.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_credentials_for_one_url_give_exactly_one(workspace):
    from tests.concurrency import race

    v = vault(workspace)
    outcomes = race(lambda: services.credential_create(vault=v, body={"auth": BEARER}).id)
    assert outcomes.count(409) == 1
    assert Credential.objects.filter(vault=v, archived_at__isnull=True).count() == 1

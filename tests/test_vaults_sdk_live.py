"""Vaults and credentials through the official SDK with strict response validation."""

import anthropic
import pytest

from tests.fake_oauth import fake_oauth_server

TOKEN = "secret-token-3f9a1c"


def test_vault_and_static_bearer_credential_lifecycle(live):
    client = live.client()
    vault = client.beta.vaults.create(display_name="Team secrets", metadata={"team": "core"})
    assert vault.id.startswith("vlt_") and vault.type == "vault"

    raw = client.beta.vaults.credentials.with_raw_response.create(
        vault.id,
        auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/mcp", "token": TOKEN},
    )
    bodies = [raw.text()]
    credential = raw.parse()
    assert credential.id.startswith("vcrd_") and credential.vault_id == vault.id
    assert (
        credential.auth.type == "static_bearer"
        and credential.auth.mcp_server_url == "https://mcp.example.com/mcp"
    )

    with pytest.raises(anthropic.ConflictError):
        client.beta.vaults.credentials.create(
            vault.id,
            auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.com/mcp", "token": "t2"},
        )

    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.vaults.credentials.update(
            credential.id, vault_id=vault.id, auth={"type": "mcp_oauth", "access_token": "x"}
        )
    assert "auth.type" in info.value.message

    for call in (
        lambda: client.beta.vaults.credentials.with_raw_response.retrieve(credential.id, vault_id=vault.id),
        lambda: client.beta.vaults.credentials.with_raw_response.list(vault.id),
        lambda: client.beta.vaults.credentials.with_raw_response.update(
            credential.id,
            vault_id=vault.id,
            auth={"type": "static_bearer", "token": TOKEN + "-2"},
            display_name="docs",
        ),
        lambda: client.beta.vaults.credentials.with_raw_response.archive(credential.id, vault_id=vault.id),
    ):
        bodies.append(call().text())
    assert all(TOKEN not in body for body in bodies)
    assert TOKEN not in (live.data_dir / "serve.log").read_text()

    assert [c.id for c in client.beta.vaults.credentials.list(vault.id)] == []
    assert [c.id for c in client.beta.vaults.credentials.list(vault.id, include_archived=True)] == [
        credential.id
    ]
    deleted = client.beta.vaults.credentials.delete(credential.id, vault_id=vault.id)
    assert deleted.type == "vault_credential_deleted" and deleted.id == credential.id

    updated = client.beta.vaults.update(vault.id, display_name="Renamed", metadata={"team": None})
    assert updated.display_name == "Renamed" and updated.metadata == {}
    assert vault.id in [v.id for v in client.beta.vaults.list()]
    assert client.beta.vaults.archive(vault.id).archived_at is not None
    assert vault.id not in [v.id for v in client.beta.vaults.list()]
    assert client.beta.vaults.delete(vault.id).type == "vault_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.retrieve(vault.id)


def test_oauth_and_environment_variable_credentials_parse_strictly(live):
    client = live.client()
    vault = client.beta.vaults.create(display_name="More secrets")
    oauth = client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "mcp_oauth",
            "mcp_server_url": "https://mcp.linear.example/mcp",
            "access_token": "at-secret",
            "expires_at": "2099-01-01T00:00:00Z",
            "refresh": {
                "refresh_token": "rt-secret",
                "client_id": "client-1",
                "token_endpoint": "https://auth.example.com/token",
                "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": "cs-secret"},
            },
        },
    )
    assert (
        oauth.auth.type == "mcp_oauth"
        and oauth.auth.refresh.token_endpoint_auth.type == "client_secret_basic"
    )
    assert oauth.auth.expires_at.year == 2099
    env = client.beta.vaults.credentials.create(
        vault.id,
        display_name="GitHub",
        auth={
            "type": "environment_variable",
            "secret_name": "GITHUB_TOKEN",
            "secret_value": "ghp-secret",
            "networking": {"type": "limited", "allowed_hosts": ["api.github.com"]},
        },
    )
    assert env.auth.secret_name == "GITHUB_TOKEN" and env.auth.injection_location.header is True
    text = client.beta.vaults.credentials.with_raw_response.list(vault.id).text()
    for secret in ("at-secret", "rt-secret", "cs-secret", "ghp-secret"):
        assert secret not in text


def test_mcp_oauth_validate_probes_and_refreshes(live):
    client = live.client()
    vault = client.beta.vaults.create(display_name="v")
    with fake_oauth_server() as oauth:
        credential = client.beta.vaults.credentials.create(
            vault.id,
            auth={
                "type": "mcp_oauth",
                "mcp_server_url": f"{oauth.base_url}/mcp",
                "access_token": "stale-token",
                "refresh": {
                    "refresh_token": "rt-good",
                    "client_id": "client-1",
                    "token_endpoint": f"{oauth.base_url}/token",
                    "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": "cs-secret"},
                },
            },
        )
        result = client.beta.vaults.credentials.mcp_oauth_validate(credential.id, vault_id=vault.id)
        assert result.status == "valid" and result.refresh.status == "succeeded"
        assert result.credential_id == credential.id and result.vault_id == vault.id
        assert result.has_refresh_token is True

    other = client.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "mcp_server_url": "https://m.example/mcp", "token": "t"}
    )
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.vaults.credentials.mcp_oauth_validate(other.id, vault_id=vault.id)
    assert "mcp_oauth" in info.value.message


def test_bad_credential_bodies_name_the_field(live):
    client = live.client()
    vault = client.beta.vaults.create(display_name="v")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.vaults.credentials.create(
            vault.id, auth={"type": "static_bearer", "mcp_server_url": "ftp://x"}
        )
    assert "auth.mcp_server_url" in info.value.message
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.vaults.create(display_name="")
    assert "display_name" in info.value.message
    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.credentials.retrieve("vcrd_nope", vault_id=vault.id)


def test_another_workspaces_vaults_are_404(live):
    from tests.test_agents_sdk_live import other_workspace_client

    client = live.client()
    other = other_workspace_client(live)
    vault = client.beta.vaults.create(display_name="mine")
    credential = client.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "mcp_server_url": "https://iso.example/mcp", "token": "t"}
    )
    with pytest.raises(anthropic.NotFoundError):
        other.beta.vaults.retrieve(vault.id)
    with pytest.raises(anthropic.NotFoundError):
        other.beta.vaults.credentials.retrieve(credential.id, vault_id=vault.id)
    with pytest.raises(anthropic.NotFoundError):
        other.beta.vaults.delete(vault.id)
    assert vault.id not in [v.id for v in other.beta.vaults.list()]
    assert client.beta.vaults.retrieve(vault.id).id == vault.id


def test_rotating_keys_under_a_running_server_keeps_credentials_usable(live):
    client = live.client()
    vault = client.beta.vaults.create(display_name="rotated")
    credential = client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "environment_variable",
            "secret_name": "API_TOKEN",
            "secret_value": "before",
            "networking": {"type": "unrestricted"},
        },
    )
    client.beta.vaults.credentials.update(credential.id, vault_id=vault.id, display_name="warm the key cache")
    keys_before = (live.data_dir / "vault.keys").read_text().split()
    out = live.manage("rotate_vault_keys").stdout
    assert "Re-encrypted" in out
    keys_after = (live.data_dir / "vault.keys").read_text().split()
    assert len(keys_after) == len(keys_before) + 1 and keys_after[1:] == keys_before
    # The server decrypts the re-encrypted secret (it re-reads the key file) to merge this update.
    updated = client.beta.vaults.credentials.update(
        credential.id,
        vault_id=vault.id,
        auth={
            "type": "environment_variable",
            "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]},
        },
    )
    assert updated.auth.networking.type == "limited"

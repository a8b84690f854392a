import json
from typing import Any

import pytest

from tests.fake_oauth import fake_oauth_server
from vaults import crypto, services

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("outbound_private")]


@pytest.fixture(autouse=True)
def isolated_keys(settings, tmp_path):
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    crypto.reset_cache()
    yield
    crypto.reset_cache()


@pytest.fixture
def oauth():  # type: ignore[no-untyped-def]
    with fake_oauth_server() as server:
        yield server


def credential(
    workspace, base_url: str, access_token: str, *, refresh: bool = True, method: str = "client_secret_post"
) -> Any:  # type: ignore[no-untyped-def]
    vault = services.vault_create(workspace=workspace, body={"display_name": "v"})
    auth: dict[str, Any] = {
        "type": "mcp_oauth",
        "mcp_server_url": f"{base_url}/mcp",
        "access_token": access_token,
    }
    if refresh:
        auth["refresh"] = {
            "refresh_token": "rt-good",
            "client_id": "client-1",
            "token_endpoint": f"{base_url}/token",
            "token_endpoint_auth": {"type": method, "client_secret": "cs-secret"},
        }
    return services.credential_create(vault=vault, body={"auth": auth})


def test_a_working_token_is_valid(workspace, oauth):
    result = services.credential_mcp_oauth_validate(
        credential=credential(workspace, oauth.base_url, "good-token")
    )
    assert result["status"] == "valid" and result["mcp_probe"] is None and result["refresh"] is None
    assert result["has_refresh_token"] is True


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_an_expired_token_is_refreshed_and_stored(workspace, oauth, method):
    cred = credential(workspace, oauth.base_url, "stale-token", method=method)
    result = services.credential_mcp_oauth_validate(credential=cred)
    assert result["status"] == "valid"
    assert result["refresh"] == {"status": "succeeded", "http_response": None}
    cred.refresh_from_db()
    assert cred.secret()["access_token"] == "fresh-token" and cred.secret()["refresh_token"] == "rt-rotated"
    assert cred.auth_public["expires_at"] is not None
    assert oauth.token_requests[0]["grant_type"] == ["refresh_token"]


def test_a_rejected_token_without_refresh_is_invalid(workspace, oauth):
    result = services.credential_mcp_oauth_validate(
        credential=credential(workspace, oauth.base_url, "bad-token", refresh=False)
    )
    assert result["status"] == "invalid"
    assert result["refresh"] == {"status": "no_refresh_token", "http_response": None}
    assert result["mcp_probe"]["method"] == "initialize"
    assert result["mcp_probe"]["http_response"]["status_code"] == 401
    assert "bad-token" not in json.dumps(result)  # the server echoed it; the body is scrubbed


def test_a_failed_refresh_is_reported_scrubbed(workspace, oauth):
    oauth.refresh_tokens.clear()
    result = services.credential_mcp_oauth_validate(
        credential=credential(workspace, oauth.base_url, "bad-token")
    )
    assert result["status"] == "invalid"
    assert result["refresh"]["status"] == "failed"
    assert result["refresh"]["http_response"]["status_code"] == 400
    assert "rt-good" not in json.dumps(result)


def test_an_unreachable_server_is_unknown(workspace):
    cred = credential(workspace, "http://127.0.0.1:9", "good-token")
    result = services.credential_mcp_oauth_validate(credential=cred)
    assert result["status"] == "unknown"
    assert result["mcp_probe"] == {"method": "initialize", "http_response": None}

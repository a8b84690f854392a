"""Malformed requests get a 4xx in the error shape, never a 500 (Django test client, no live server)."""

import json

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def call(client, api_key):  # type: ignore[no-untyped-def]
    def send(method: str, path: str, body: str | None = None):  # type: ignore[no-untyped-def]
        kwargs = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
        if body is not None:
            kwargs["data"] = body
            kwargs["content_type"] = "application/json"
        return getattr(client, method)(path, **kwargs)

    return send


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("post", "/v1/agents", "{not json", 400, ""),
        ("post", "/v1/agents", "[]", 400, ""),
        ("post", "/v1/agents", "", 400, ""),
        ("post", "/v1/agents", json.dumps({"name": "a", "model": 5}), 400, "model"),
        ("post", "/v1/agents", json.dumps({"name": "a", "model": "claude-m", "tools": "all"}), 400, "tools"),
        (
            "post",
            "/v1/agents",
            json.dumps({"name": "a", "model": "claude-m", "tools": [{}]}),
            400,
            "tools[0].type",
        ),
        ("post", "/v1/agents", json.dumps({"name": "a", "model": {"speed": "fast"}}), 400, "model.id"),
        ("get", "/v1/agents?limit=abc", None, 400, "limit"),
        ("get", "/v1/agents?limit=0", None, 400, "limit"),
        ("get", "/v1/agents?page=bogus", None, 400, "page"),
        ("get", "/v1/agents?created_at[gte]=yesterday", None, 400, "created_at[gte]"),
        ("get", "/v1/agents?include_archived=maybe", None, 400, "include_archived"),
        ("get", "/v1/agents/agent_nope?version=abc", None, 400, "version"),
        ("get", "/v1/agents/agent_nope", None, 404, "agent_nope"),
        (
            "post",
            "/v1/environments",
            json.dumps({"name": "e", "config": {"type": "moon"}}),
            400,
            "config.type",
        ),
        (
            "post",
            "/v1/environments",
            json.dumps(
                {
                    "name": "e",
                    "config": {
                        "type": "cloud",
                        "networking": {"type": "limited", "allowed_hosts": ["bad host"]},
                    },
                }
            ),
            400,
            "allowed_hosts[0]",
        ),
        ("post", "/v1/environments", json.dumps({"name": "e", "scope": "galaxy"}), 400, "scope"),
        ("get", "/v1/environments/env_nope", None, 404, "env_nope"),
        ("delete", "/v1/environments/env_nope", None, 404, "env_nope"),
        (
            "post",
            "/v1/vaults",
            json.dumps({"display_name": "v", "metadata": {"k" * 65: "v"}}),
            400,
            "metadata",
        ),
        (
            "post",
            "/v1/vaults/vlt_nope/credentials",
            json.dumps({"auth": {"type": "static_bearer"}}),
            404,
            "vlt_nope",
        ),
    ],
)
def test_malformed_requests_are_clean_4xx(call, method, path, body, status, needle):
    response = call(method, path, body)
    assert response.status_code == status, response.content
    payload = response.json()
    assert payload["type"] == "error" and payload["request_id"].startswith("req_")
    assert needle in payload["error"]["message"]


def test_metadata_limits_on_agents(call):
    too_many = {f"k{i}": "v" for i in range(17)}
    response = call(
        "post", "/v1/agents", json.dumps({"name": "a", "model": "claude-m", "metadata": too_many})
    )
    assert response.status_code == 400 and "metadata" in response.json()["error"]["message"]
    response = call(
        "post", "/v1/agents", json.dumps({"name": "a", "model": "claude-m", "metadata": {"k": "v" * 513}})
    )
    assert response.status_code == 400 and "metadata.k" in response.json()["error"]["message"]


def test_an_unknown_v1_post_path_is_a_json_404(api_key):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)  # as a real server does
    response = client.post(
        "/v1/agents/agent_x/teleport",
        data="{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"

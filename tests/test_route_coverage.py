"""Every endpoint the SDK knows is either routed (P0/P1) or answers in the spec's error shape (the
rest), never with a bare 404 page, a 405 or a 500. The endpoint list is tests/spec_endpoints.txt."""

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

ENDPOINTS_FILE = Path(__file__).with_name("spec_endpoints.txt")
ROUTED = ("P0", "P1")


def load_endpoints() -> list[tuple[str, str, str]]:
    rows = []
    for line in ENDPOINTS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        priority, method, path = line.split()
        assert priority in ("P0", "P1", "P2", "out"), line
        rows.append((priority, method, path))
    return rows


ENDPOINTS = load_endpoints()


def fake_path(path: str) -> str:
    """Fill every {param} with an id that cannot exist (a version with a number)."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "version":
            return "1"
        return name.removesuffix("_id") + "_01missingmissingmissing"

    return re.sub(r"\{(\w+)\}", fill, path)


def call(client: Client, method: str, path: str) -> Any:
    if method == "POST":
        return client.post(path, "{}", content_type="application/json")
    if method == "DELETE":
        return client.delete(path)
    return client.get(path)


def assert_error_shape(response: Any) -> dict[str, Any]:
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert body["type"] == "error", body
    assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), body
    assert body["request_id"].startswith("req_"), body
    return body


def is_unrouted(response: Any) -> bool:
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    return assert_error_shape(response)["error"]["message"].startswith("No route")


@pytest.fixture
def client(api_key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")


def test_the_endpoint_list_is_well_formed() -> None:
    assert len(ENDPOINTS) == len({(m, p) for _, m, p in ENDPOINTS}), "duplicate endpoint lines"
    assert {p for p, _, _ in ENDPOINTS} == {"P0", "P1", "P2", "out"}
    assert ("P1", "POST", "/v1/files") in ENDPOINTS
    assert ("P0", "GET", "/v1/sessions/{session_id}/events/stream") in ENDPOINTS


@pytest.mark.parametrize(
    ("priority", "method", "path"),
    [e for e in ENDPOINTS if e[0] in ROUTED],
    ids=[f"{m} {p}" for pr, m, p in ENDPOINTS if pr in ROUTED],
)
def test_core_endpoint_is_routed(client: Client, priority: str, method: str, path: str) -> None:
    response = call(client, method, fake_path(path))
    assert not is_unrouted(response), f"{method} {path} ({priority}) is not routed"
    assert response.status_code < 500, f"{method} {path} answered {response.status_code}"
    if response.status_code >= 400:
        assert_error_shape(response)


@pytest.mark.parametrize(
    ("priority", "method", "path"),
    [e for e in ENDPOINTS if e[0] not in ROUTED],
    ids=[f"{m} {p}" for pr, m, p in ENDPOINTS if pr not in ROUTED],
)
def test_optional_endpoint_answers_in_the_error_shape(
    client: Client, priority: str, method: str, path: str
) -> None:
    response = call(client, method, fake_path(path))
    # Unbuilt: 501 (or the plain "No route" 404). Built later: a fake id is a 404, an empty body a
    # 400, a list a 200.
    if response.status_code == 200 and method == "GET" and "{" not in path:
        return
    assert response.status_code in (400, 404, 501), f"{method} {path} answered {response.status_code}"
    body = assert_error_shape(response)
    if response.status_code == 501:
        assert "not supported by this Galley server" in body["error"]["message"]
        assert response["x-should-retry"] == "false"


@pytest.mark.django_db
def test_unsupported_families_still_require_an_api_key() -> None:
    response = Client().get("/v1/dreams")
    assert response.status_code == 401
    assert_error_shape(response)


def test_capabilities_doc_names_every_unsupported_family() -> None:
    from api.unsupported import FAMILIES

    doc = (Path(__file__).resolve().parent.parent / "docs" / "capabilities.md").read_text()
    for prefix, _ in FAMILIES:
        assert f"/v1{prefix}" in doc, prefix

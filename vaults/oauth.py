"""Outbound HTTP for mcp_oauth credentials: a live MCP `initialize` probe and the refresh_token
grant. Every captured response body is truncated and scrubbed of the credential's secrets before it
can reach a response."""

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx2
from django.conf import settings

from outbound.guard import AddressRefused, http_client

TIMEOUT_SECONDS = 10.0
BODY_LIMIT = 2048
_TOKENISH = re.compile(
    r'("?(?:access_token|refresh_token|id_token|client_secret)"?\s*[:=]\s*"?)[^",&\s}]+', re.I
)


def _client() -> httpx2.Client:
    """Token endpoints and MCP servers are user-chosen URLs: connect only to checked addresses."""
    return http_client(allow_private=settings.GALLEY_OUTBOUND_ALLOW_PRIVATE, timeout=TIMEOUT_SECONDS)


@dataclass
class Captured:
    status_code: int
    content_type: str
    body: str
    body_truncated: bool

    def wire(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "content_type": self.content_type,
            "body": self.body,
            "body_truncated": self.body_truncated,
        }


def capture(response: httpx2.Response, secrets: list[str]) -> Captured:
    text = response.text
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _TOKENISH.sub(r"\1[redacted]", text)
    return Captured(
        status_code=response.status_code,
        content_type=response.headers.get("content-type", ""),
        body=text[:BODY_LIMIT],
        body_truncated=len(text) > BODY_LIMIT,
    )


@dataclass
class ProbeResult:
    ok: bool
    unauthorized: bool
    response: Captured | None  # None when the server could not be reached


def probe_mcp(url: str, access_token: str, secrets: list[str]) -> ProbeResult:
    """POST the MCP `initialize` request; a 2xx answer means the token is accepted."""
    payload = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "galley-credential-check", "version": "1"},
        },
    }
    headers = {
        "Authorization": f"Bearer {access_token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    try:
        with _client() as client:
            response = client.post(url, content=json.dumps(payload), headers=headers)
    except (httpx2.HTTPError, AddressRefused):
        return ProbeResult(ok=False, unauthorized=False, response=None)
    if 200 <= response.status_code < 300:
        return ProbeResult(ok=True, unauthorized=False, response=None)
    return ProbeResult(
        ok=False, unauthorized=response.status_code in (401, 403), response=capture(response, secrets)
    )


@dataclass
class RefreshResult:
    status: str  # succeeded | failed | connect_error
    response: Captured | None
    tokens: dict[str, Any]


def refresh_tokens(refresh: dict[str, Any], secret: dict[str, Any], secrets: list[str]) -> RefreshResult:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": secret["refresh_token"],
        "client_id": refresh["client_id"],
    }
    if refresh.get("scope"):
        form["scope"] = refresh["scope"]
    if refresh.get("resource"):
        form["resource"] = refresh["resource"]
    auth: tuple[str, str] | None = None
    method = refresh["token_endpoint_auth"]["type"]
    if method == "client_secret_post":
        form["client_secret"] = secret.get("client_secret", "")
    elif method == "client_secret_basic":
        auth = (refresh["client_id"], secret.get("client_secret", ""))
    try:
        with _client() as client:
            extra: dict[str, Any] = {"auth": auth} if auth is not None else {}
            response = client.post(
                refresh["token_endpoint"], data=form, headers={"Accept": "application/json"}, **extra
            )
    except (httpx2.HTTPError, AddressRefused):
        return RefreshResult(status="connect_error", response=None, tokens={})
    try:
        tokens = response.json() if 200 <= response.status_code < 300 else {}
    except ValueError:
        tokens = {}
    if not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
        return RefreshResult(status="failed", response=capture(response, secrets), tokens={})
    return RefreshResult(status="succeeded", response=None, tokens=tokens)

"""MCP servers, from the harness (spec 10 "B. mcp_toolset"): a small client for the Streamable
HTTP transport (JSON-RPC 2.0 over POST; answers in JSON or as an SSE stream; Mcp-Session-Id),
and the lookup of a session's vault credential for a server URL.

Tokens are plaintext only inside `McpClient` while a request is built; errors carry a message
that names the server, never the token or the server's body."""

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx2
from django.conf import settings
from django.utils import timezone

from outbound.guard import AddressRefused, http_client

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "2025-06-18"
MAX_TOOL_PAGES = 50


class McpError(Exception):
    """kind: "connection" (unreachable, timeout, bad answer) or "authentication" (401/403)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class McpTool:
    name: str
    description: str
    input_schema: dict[str, Any]


def _sse_messages(text: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    data: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line:
            if data:
                try:
                    value = json.loads("\n".join(data))
                except ValueError:
                    value = None
                if isinstance(value, dict):
                    messages.append(value)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return messages


class McpClient:
    """One MCP session with one server. Not thread-safe; a step uses it from its own thread."""

    def __init__(self, *, url: str, token: str | None, server_name: str) -> None:
        self.url = url
        self.server_name = server_name
        self._token = token
        self._session_id: str | None = None
        self._initialized = False
        self._next_id = 0

    def set_token(self, token: str | None) -> None:
        self._token = token
        self._session_id = None
        self._initialized = False

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": PROTOCOL_VERSION,
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        return headers

    def _post(self, body: dict[str, Any]) -> httpx2.Response:
        try:
            private = settings.GALLEY_OUTBOUND_ALLOW_PRIVATE
            with http_client(allow_private=private, timeout=settings.GALLEY_MCP_TIMEOUT_SECONDS) as client:
                return client.post(self.url, content=json.dumps(body), headers=self._headers())
        except AddressRefused as exc:
            message = f"MCP server {self.server_name!r} at {exc.host} was not contacted: {exc.reason}."
            raise McpError("connection", message) from None
        except httpx2.TimeoutException:
            raise McpError("connection", f"MCP server {self.server_name!r} did not answer in time.") from None
        except httpx2.HTTPError as exc:
            raise McpError(
                "connection", f"Could not connect to MCP server {self.server_name!r} ({type(exc).__name__})."
            ) from None

    def _check_status(self, response: httpx2.Response) -> None:
        if response.status_code in (401, 403):
            raise McpError(
                "authentication",
                f"MCP server {self.server_name!r} refused the credentials (HTTP {response.status_code}).",
            )
        if not 200 <= response.status_code < 300:
            raise McpError(
                "connection", f"MCP server {self.server_name!r} answered HTTP {response.status_code}."
            )

    def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        response = self._post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        self._check_status(response)
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            self._session_id = session_id
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" in content_type:
            messages = _sse_messages(response.text)
        else:
            try:
                value = response.json()
            except ValueError:
                value = None
            messages = value if isinstance(value, list) else [value]
        for message in messages:
            if not isinstance(message, dict) or message.get("id") != request_id:
                continue  # server-initiated requests and notifications are not for us
            if isinstance(message.get("error"), dict):
                error = message["error"]
                raise McpError(
                    "connection",
                    f"MCP server {self.server_name!r} returned error {error.get('code')} for {method}: "
                    f"{str(error.get('message') or '')[:200]}",
                )
            result = message.get("result")
            if isinstance(result, dict):
                return result
        raise McpError("connection", f"MCP server {self.server_name!r} gave no answer to {method}.")

    def _notify(self, method: str) -> None:
        response = self._post({"jsonrpc": "2.0", "method": method})
        self._check_status(response)

    def connect(self) -> None:
        if self._initialized:
            return
        self._session_id = None
        self._request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "galley", "version": "1"},
            },
        )
        self._notify("notifications/initialized")
        self._initialized = True

    def list_tools(self) -> list[McpTool]:
        self.connect()
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            result = self._request("tools/list", {"cursor": cursor} if cursor else {})
            for raw in result.get("tools") or []:
                if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                    continue
                schema = raw.get("inputSchema")
                tools.append(
                    McpTool(
                        name=raw["name"],
                        description=str(raw.get("description") or ""),
                        input_schema=schema if isinstance(schema, dict) else {"type": "object"},
                    )
                )
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return tools

    def call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The tool's content as Messages API blocks, and whether it is an error."""
        self.connect()
        result = self._request("tools/call", {"name": name, "arguments": arguments})
        return content_blocks(result), bool(result.get("isError"))


def content_blocks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """MCP content (text, image, embedded resources, ...) as Messages API content blocks."""
    blocks: list[dict[str, Any]] = []
    for item in result.get("content") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": str(item.get("text") or "")})
        elif kind == "image" and item.get("data"):
            blocks.append(
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": str(item.get("mimeType") or "image/png"),
                        "data": str(item["data"]),
                    },
                }
            )
        elif kind == "resource" and isinstance(item.get("resource"), dict):
            resource = item["resource"]
            if isinstance(resource.get("text"), str):
                blocks.append({"type": "text", "text": resource["text"]})
            else:
                blocks.append({"type": "text", "text": f"[resource {resource.get('uri', '')}]"})
        elif kind == "resource_link":
            blocks.append({"type": "text", "text": f"[resource {item.get('uri', '')}]"})
        elif kind == "audio":
            blocks.append({"type": "text", "text": "[audio content omitted]"})
    if not blocks and isinstance(result.get("structuredContent"), dict):
        blocks.append({"type": "text", "text": json.dumps(result["structuredContent"])})
    return blocks


# --- credentials ----------------------------------------------------------------------------------------


def credential_for(*, vault_ids: list[str], url: str) -> Any | None:
    """The first active static_bearer / mcp_oauth credential for `url` in the session's vaults, in order."""
    from vaults.models import Credential

    for vault_id in vault_ids or []:
        credential = (
            Credential.objects.filter(
                vault_id=vault_id,
                vault__archived_at__isnull=True,
                archived_at__isnull=True,
                auth_type__in=("static_bearer", "mcp_oauth"),
                mcp_server_url=url,
            )
            .order_by("created_at")
            .first()
        )
        if credential is not None:
            return credential
    return None


def credential_token(credential: Any | None) -> str | None:
    if credential is None:
        return None
    secret = credential.secret()
    token = secret.get("token") if credential.auth_type == "static_bearer" else secret.get("access_token")
    return token if isinstance(token, str) and token else None


def credential_refresh(credential: Any | None) -> str | None:
    """A new access token for an mcp_oauth credential with a refresh token, or None."""
    if credential is None or credential.auth_type != "mcp_oauth":
        return None
    from vaults import oauth
    from vaults.services import credential_refresh_failed, credential_store_refreshed_tokens

    public = credential.auth_public or {}
    secret = credential.secret()
    if not public.get("refresh") or not secret.get("refresh_token"):
        return None
    result = oauth.refresh_tokens(public["refresh"], secret, [str(v) for v in secret.values()])
    if result.status != "succeeded":
        log.info("mcp_oauth refresh for credential %s: %s", credential.pk, result.status)
        credential_refresh_failed(credential=credential)
        return None
    credential_store_refreshed_tokens(credential, result.tokens)
    log.info("mcp_oauth credential %s refreshed at %s", credential.pk, timezone.now().isoformat())
    return credential_token(credential)


class McpConnection:
    """A client for one of the session's MCP servers with its credential, refreshing an mcp_oauth
    token once when the server answers 401/403."""

    def __init__(self, *, server_name: str, url: str, vault_ids: list[str]) -> None:
        self.server_name = server_name
        self.url = url
        self._credential = credential_for(vault_ids=vault_ids, url=url)
        self._client = McpClient(url=url, token=credential_token(self._credential), server_name=server_name)
        self._refreshed = False

    def _with_refresh(self, action: Any) -> Any:
        try:
            return action()
        except McpError as exc:
            if exc.kind != "authentication" or self._refreshed:
                raise
            self._refreshed = True
            token = credential_refresh(self._credential)
            if token is None:
                raise
            self._client.set_token(token)
            return action()

    def list_tools(self) -> list[McpTool]:
        return self._with_refresh(self._client.list_tools)

    def call_tool(self, name: str, arguments: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        return self._with_refresh(lambda: self._client.call_tool(name, arguments))

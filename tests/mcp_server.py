"""A small MCP server of the tests' own on loopback (Streamable HTTP: JSON-RPC over POST).

Tools: `add(a, b)` and `echo(text)`. It records every request (method and the Authorization
header), can refuse with 401 unless the bearer token matches, can answer in SSE form, and pages
tools/list one tool per page so the client's cursor handling is exercised."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from tests.live import free_port

TOOLS = [
    {
        "name": "add",
        "description": "Add two numbers.",
        "inputSchema": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
    {
        "name": "echo",
        "description": "Echo the text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
]


@dataclass
class Seen:
    method: str
    authorization: str | None
    session_id: str | None


class McpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.seen: list[Seen] = []
        self.required_token: str | None = None  # when set, other tokens get 401
        self.sse = False
        self.fail_method: str | None = None  # this method gets HTTP 502
        self.call_delay = 0.0  # seconds tools/call takes
        # POST /token: the refresh_token grant; this refresh token gets `required_token`.
        self.token_url = f"http://127.0.0.1:{self.port}/token"
        self.refresh_token = "rt-valid"
        self.token_requests = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def calls(self, method: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == method]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mcp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if self.path == "/token":
                    form = parse_qs(raw.decode())
                    with mcp.lock:
                        mcp.token_requests += 1
                    if form.get("refresh_token") == [mcp.refresh_token] and mcp.required_token:
                        body = json.dumps({"access_token": mcp.required_token, "expires_in": 3600})
                        self._send(200, body.encode(), "application/json", {})
                    else:
                        self._send(400, b'{"error":"invalid_grant"}', "application/json", {})
                    return
                message = json.loads(raw or b"{}")
                auth = self.headers.get("authorization")
                with mcp.lock:
                    mcp.seen.append(Seen(message.get("method", ""), auth, self.headers.get("mcp-session-id")))
                if mcp.required_token is not None and auth != f"Bearer {mcp.required_token}":
                    self._send(401, b'{"error":"invalid_token"}', "application/json", {})
                    return
                if message.get("method") == mcp.fail_method:
                    self._send(502, b"bad gateway", "text/plain", {})
                    return
                if "id" not in message:
                    self._send(202, b"", "application/json", {})
                    return
                result = self._result(message)
                reply = json.dumps({"jsonrpc": "2.0", "id": message["id"], **result}).encode()
                headers = {"Mcp-Session-Id": "mcp-session-1"} if message.get("method") == "initialize" else {}
                if mcp.sse:
                    notice = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
                    body = f"event: message\ndata: {notice}\n\nevent: message\ndata: {reply.decode()}\n\n"
                    self._send(200, body.encode(), "text/event-stream", headers)
                else:
                    self._send(200, reply, "application/json", headers)

            def _result(self, message: dict[str, Any]) -> dict[str, Any]:
                method = message.get("method")
                params = message.get("params") or {}
                if method == "initialize":
                    return {
                        "result": {
                            "protocolVersion": params.get("protocolVersion"),
                            "capabilities": {"tools": {}},
                            "serverInfo": {"name": "test-mcp", "version": "1"},
                        }
                    }
                if method == "tools/list":
                    index = int(params.get("cursor") or 0)
                    page: dict[str, Any] = {"tools": [TOOLS[index]]}
                    if index + 1 < len(TOOLS):
                        page["nextCursor"] = str(index + 1)
                    return {"result": page}
                if method == "tools/call":
                    time.sleep(mcp.call_delay)
                    args = params.get("arguments") or {}
                    if params.get("name") == "add":
                        total = args.get("a", 0) + args.get("b", 0)
                        return {"result": {"content": [{"type": "text", "text": str(total)}]}}
                    if params.get("name") == "echo":
                        return {"result": {"content": [{"type": "text", "text": str(args.get("text"))}]}}
                    return {
                        "result": {"content": [{"type": "text", "text": "no such tool"}], "isError": True}
                    }
                return {"error": {"code": -32601, "message": "method not found"}}

        return Handler


@contextmanager
def mcp_server() -> Iterator[McpServer]:
    server = McpServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()

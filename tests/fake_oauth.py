"""A loopback MCP endpoint and OAuth token endpoint for credential validation tests."""

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class FakeOAuth:
    def __init__(self) -> None:
        self.valid_tokens = {"good-token"}
        self.refresh_tokens = {"rt-good": "fresh-token"}
        self.client_secret = "cs-secret"
        self.token_requests: list[dict[str, list[str]]] = []
        self.base_url = ""


@contextmanager
def fake_oauth_server() -> Iterator[FakeOAuth]:
    state = FakeOAuth()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/mcp":
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token in state.valid_tokens:
                    self._send(200, {"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2025-06-18"}})
                else:
                    self._send(401, {"error": "invalid_token", "echo": token})
                return
            if self.path == "/token":
                form = parse_qs(raw.decode())
                state.token_requests.append(form)
                basic = self.headers.get("Authorization", "")
                secret_ok = (
                    form.get("client_secret") == [state.client_secret]
                    or basic
                    == "Basic " + base64.b64encode(f"client-1:{state.client_secret}".encode()).decode()
                )
                fresh = state.refresh_tokens.get(form.get("refresh_token", [""])[0])
                if secret_ok and fresh:
                    state.valid_tokens.add(fresh)
                    self._send(
                        200, {"access_token": fresh, "refresh_token": "rt-rotated", "expires_in": 3600}
                    )
                else:
                    self._send(
                        400, {"error": "invalid_grant", "refresh_token": form.get("refresh_token", [""])[0]}
                    )
                return
            self._send(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()

"""The outbound-address guard (outbound/guard.py): one resolution, every refused kind of address, the
connection made to exactly the checked address, and its users (web_fetch, MCP, OAuth refresh) refusing
private URLs with a clear reason."""

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from harness.mcp import McpConnection, McpError
from outbound.guard import AddressRefused, http_client, resolve_checked
from tests.mcp_server import McpServer, mcp_server

PUBLIC = "93.184.216.34"  # a global unicast address; nothing here ever connects to it for real


class _Page(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        self.server.hits.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/internal")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(body: bytes) -> ThreadingHTTPServer:
    handler = type("Handler", (_Page,), {"body": body})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.hits = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def servers() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    """(the server behind the public address, an internal service on loopback)."""
    public, internal = _serve(b"public page"), _serve(b"internal-canary-77")
    yield public, internal
    public.shutdown()
    internal.shutdown()


@pytest.fixture
def rebinding(monkeypatch, servers) -> list[str]:  # type: ignore[no-untyped-def]
    """A resolver the test controls: rebind.test answers PUBLIC to the first lookup and 127.0.0.1 after.
    Connections to PUBLIC land on the `public` server, as if it were that host."""
    public, _internal = servers
    lookups: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            lookups.append(host)
            address = PUBLIC if len(lookups) == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if address[0] == PUBLIC:
            address = ("127.0.0.1", public.server_port)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return lookups


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.5", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.7", "CGNAT"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_every_non_public_kind_of_address_is_refused_with_its_name(address: str, kind: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        resolve_checked(address, 80)
    assert kind in str(refused.value) and address in str(refused.value)
    assert resolve_checked(address, 80, allow_private=True) == address


def test_a_public_address_is_returned_as_the_one_to_connect_to() -> None:
    assert resolve_checked("8.8.8.8", 443) == "8.8.8.8"
    assert resolve_checked("[2606:4700:4700::1111]", 443) == "2606:4700:4700::1111"


def test_a_name_with_any_private_answer_is_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 80)) for a in (PUBLIC, "10.0.0.5")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(AddressRefused, match=r"mixed\.test: it resolves to 10\.0\.0\.5, a private address"):
        resolve_checked("mixed.test", 80)


def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(AddressRefused, match="does not resolve"):
        resolve_checked("no-such-host.invalid", 80)


def test_the_client_connects_to_the_checked_address_and_keeps_the_name(rebinding, servers) -> None:  # type: ignore[no-untyped-def]
    public, internal = servers
    with http_client() as client:
        response = client.get(f"http://rebind.test:{internal.server_port}/page")
        assert response.text == "public page"
        # A second connection is checked again: the name now answers loopback and is refused.
        client.headers["Connection"] = "close"
    with http_client() as client, pytest.raises(AddressRefused, match="127.0.0.1, a loopback address"):
        client.get(f"http://rebind.test:{internal.server_port}/page")
    assert public.hits == [("/page", f"rebind.test:{internal.server_port}")]  # type: ignore[attr-defined]
    assert internal.hits == []  # type: ignore[attr-defined]


def test_the_client_never_follows_redirects(servers) -> None:  # type: ignore[no-untyped-def]
    public, _internal = servers
    with http_client(allow_private=True) as client:
        response = client.get(f"http://127.0.0.1:{public.server_port}/redirect")
    assert response.status_code == 302 and response.headers["location"] == "http://127.0.0.1:1/internal"


@pytest.mark.django_db
def test_web_fetch_connects_to_the_address_it_checked_not_a_rebound_one(
    rebinding, servers, make_sandbox_session, settings
) -> None:  # type: ignore[no-untyped-def]
    from tests.sandbox_fixtures import run, text

    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = False
    public, internal = servers
    session = make_sandbox_session()
    out = run(session, "web_fetch", url=f"http://rebind.test:{internal.server_port}/page")
    assert not out.is_error, text(out)
    assert "public page" in text(out) and "internal-canary-77" not in text(out)
    assert rebinding == ["rebind.test"]  # resolved once, for the check and the connection
    assert internal.hits == []  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_web_fetch_checks_every_redirect_hop(servers, make_sandbox_session, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.sandbox_fixtures import run, text

    public, _internal = servers
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, public.server_port))]
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda h, *a, **k: answers if h == "site.test" else real_getaddrinfo(h, *a, **k),
    )
    monkeypatch.setattr(
        socket,
        "create_connection",
        lambda address, *a, **k: real_connect(
            ("127.0.0.1", public.server_port) if address[0] == PUBLIC else address, *a, **k
        ),
    )
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = False
    out = run(make_sandbox_session(), "web_fetch", url=f"http://site.test:{public.server_port}/redirect")
    assert out.is_error and "127.0.0.1, a loopback address" in text(out), text(out)


@pytest.fixture
def mcp() -> Iterator[McpServer]:
    with mcp_server() as server:
        yield server


def test_a_private_mcp_server_url_is_refused_with_a_clear_error(mcp: McpServer, settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = False
    connection = McpConnection(server_name="calc", url=mcp.url, vault_ids=[])
    with pytest.raises(McpError) as refused:
        connection.list_tools()
    assert refused.value.kind == "connection"
    assert refused.value.message == (
        "MCP server 'calc' at 127.0.0.1 was not contacted: it resolves to 127.0.0.1, a loopback address."
    )
    assert mcp.seen == []
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = True  # the one setting that lets tests reach loopback servers
    assert [tool.name for tool in connection.list_tools()]


def test_an_oauth_refresh_to_a_private_token_endpoint_is_not_sent(mcp: McpServer, settings) -> None:  # type: ignore[no-untyped-def]
    from vaults import oauth

    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = False
    mcp.required_token = "new-access-token"
    refresh = {"token_endpoint": mcp.token_url, "client_id": "c", "token_endpoint_auth": {"type": "none"}}
    result = oauth.refresh_tokens(refresh, {"refresh_token": mcp.refresh_token}, [])
    assert result.status == "connect_error" and mcp.token_requests == 0
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = True
    assert oauth.refresh_tokens(refresh, {"refresh_token": mcp.refresh_token}, []).status == "succeeded"
    assert mcp.token_requests == 1

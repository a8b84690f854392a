"""Networking: the egress proxy lets exactly the allowlist through; web_fetch and web_search honour their
rules."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sandboxes.egress import EgressRules, egress_decide
from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db]

PAGE = (
    b"<html><head><title>Fib page</title><style>.x{}</style><script>var secret=1</script></head>"
    b"<body><h1>Fibonacci</h1><p>1, 1, 2, 3, 5</p></body></html>"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/search"):
            body = json.dumps(
                {
                    "results": [
                        {
                            "title": "Fibonacci number",
                            "url": "https://en.wikipedia.org/wiki/Fibonacci",
                            "content": "A seq",
                        },
                        {"title": "Spam", "url": "https://spam.example/x", "content": "buy"},
                    ]
                }
            ).encode()
            ctype = "application/json"
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/page")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body, ctype = PAGE, "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_allowlist_decision():
    rules = EgressRules(
        allowed_hosts=("api.example.com", "*.corp.test"),
        allow_package_managers=True,
        registries=("pypi.org",),
        mcp_hosts=("mcp.example",),
    )
    assert egress_decide("api.example.com", rules)[0]
    assert egress_decide("API.Example.com", rules)[0]
    assert egress_decide("x.y.corp.test", rules)[0]
    assert not egress_decide("corp.test", rules)[0]
    assert not egress_decide("evilcorp.test", rules)[0]
    assert not egress_decide("example.com", rules)[0]
    assert egress_decide("pypi.org", rules)[0]
    assert not egress_decide("mcp.example", rules)[0]


def test_limited_sandbox_reaches_allowed_host_over_http_and_connect(make_sandbox_session, server):
    session = make_sandbox_session(
        networking={
            "type": "limited",
            "allowed_hosts": ["127.0.0.1"],
            "allow_package_managers": False,
            "allow_mcp_servers": False,
        }
    )
    # 127.0.0.1 is in NO_PROXY (the sandbox's own loopback), so name the proxy explicitly.
    out = run(session, "bash", command=f"curl -s -m 5 --noproxy '' -x $HTTP_PROXY http://{server}/page")
    assert "<h1>Fibonacci</h1>" in text(out), text(out)
    out = run(
        session, "bash", command=f"curl -s -m 5 --noproxy '' -x $HTTP_PROXY -p http://{server}/page"
    )  # tunnelled through CONNECT
    assert "<h1>Fibonacci</h1>" in text(out), text(out)
    out = run(
        session,
        "bash",
        command="python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', 3128)); "
        f"s.sendall(b'GET http://{server}/page HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); "
        'print(s.recv(100).split()[1].decode())"',
    )
    assert text(out) == "200"
    out = run(session, "bash", command="curl -s -m 5 http://localhost.localdomain/")
    assert "refused" in text(out) and "[egress proxy refused a connection to localhost.localdomain" in text(
        out
    )


def test_web_fetch_converts_html_and_follows_redirects(make_sandbox_session, server, settings):
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = True
    session = make_sandbox_session()
    out = run(session, "web_fetch", url=f"http://{server}/redirect")
    assert not out.is_error, text(out)
    body = text(out)
    assert f"URL: http://{server}/page" in body and "Title: Fib page" in body
    assert "Fibonacci\n1, 1, 2, 3, 5" in body and "secret" not in body
    session.refresh_from_db()
    assert session.web_fetch_requests == 1


def test_web_fetch_refusals(make_sandbox_session, server, settings):
    session = make_sandbox_session()
    out = run(session, "web_fetch", url=f"http://{server}/page")
    assert out.is_error and "a loopback address" in text(out)  # never the host's internal services by default
    settings.GALLEY_OUTBOUND_ALLOW_PRIVATE = True
    tools = [
        {
            "type": "agent_toolset_20260401",
            "configs": [{"name": "web_fetch", "blocked_domains": ["127.0.0.1"]}],
        }
    ]
    out = run(make_sandbox_session(tools=tools), "web_fetch", url=f"http://{server}/page")
    assert out.is_error and "blocked_domains" in text(out)
    tools = [
        {
            "type": "agent_toolset_20260401",
            "configs": [{"name": "web_fetch", "allowed_domains": ["example.com"]}],
        }
    ]
    out = run(make_sandbox_session(tools=tools), "web_fetch", url=f"http://{server}/page")
    assert out.is_error and "allowed_domains" in text(out)
    limited = make_sandbox_session(networking={"type": "limited", "allowed_hosts": ["other.test"]})
    out = run(limited, "web_fetch", url=f"http://{server}/page")
    assert out.is_error and "allowed_hosts" in text(out)
    out = run(session, "web_fetch", url="file:///etc/passwd")
    assert out.is_error and "only http and https" in text(out)


def test_web_search_without_provider_is_a_clear_error(make_sandbox_session, settings):
    settings.GALLEY_SEARXNG_URL = None
    out = run(make_sandbox_session(), "web_search", query="fibonacci")
    assert out.is_error and "no search provider is configured" in text(out)


def test_web_search_through_searxng_with_domain_filters(make_sandbox_session, server, settings):
    settings.GALLEY_SEARXNG_URL = f"http://{server}"
    tools = [
        {
            "type": "agent_toolset_20260401",
            "configs": [{"name": "web_search", "blocked_domains": ["spam.example"]}],
        }
    ]
    session = make_sandbox_session(tools=tools)
    out = run(session, "web_search", query="fibonacci")
    assert not out.is_error
    assert text(out) == "1. Fibonacci number\n   https://en.wikipedia.org/wiki/Fibonacci\n   A seq"
    session.refresh_from_db()
    assert session.web_search_requests == 1

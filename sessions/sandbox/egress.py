"""The egress proxy of `limited` sandboxes: HTTP CONNECT and plain HTTP, one Unix socket per sandbox.

The sandbox has no network of its own. A bridge inside it (bridge.py) forwards 127.0.0.1:3128 to this proxy's
socket, which is bind-mounted into the sandbox. Each request's host goes through `egress_decide`; refusals
answer 403 with a clear message and are kept for the tool result (so the session log records them).
"""

import logging
import os
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from outbound.guard import AddressRefused, resolve_checked

logger = logging.getLogger(__name__)

PACKAGE_REGISTRIES = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "rubygems.org",
    "index.rubygems.org",
    "proxy.golang.org",
    "sum.golang.org",
    "deb.debian.org",
    "security.debian.org",
    "archive.ubuntu.com",
    "security.ubuntu.com",
)
HEADER_LIMIT = 64 * 1024
BODY_INJECT_LIMIT = 10 * 1024 * 1024
IDLE_SECONDS = 300.0


@dataclass(frozen=True)
class EgressRules:
    allowed_hosts: tuple[str, ...] = ()
    allow_package_managers: bool = False
    allow_mcp_servers: bool = False
    mcp_hosts: tuple[str, ...] = ()
    registries: tuple[str, ...] = field(default_factory=tuple)
    allow_public: bool = False  # `unrestricted` through the proxy: any host with a public address


def egress_rules(*, networking: dict, agent_snapshot: dict) -> EgressRules:
    if networking.get("type") != "limited":
        return EgressRules(allow_public=True)
    mcp_hosts = tuple(
        (urlsplit(s.get("url", "")).hostname or "").lower()
        for s in (agent_snapshot or {}).get("mcp_servers") or []
        if isinstance(s, dict)
    )
    registries = list(PACKAGE_REGISTRIES)
    for url in (settings.GALLEY_PIP_INDEX_URL, settings.GALLEY_NPM_REGISTRY):
        hostname = urlsplit(url).hostname if url else None
        if hostname:
            registries.append(hostname.lower())
    return EgressRules(
        allowed_hosts=tuple(h.lower() for h in networking.get("allowed_hosts") or []),
        allow_package_managers=bool(networking.get("allow_package_managers")),
        allow_mcp_servers=bool(networking.get("allow_mcp_servers")),
        mcp_hosts=tuple(h for h in mcp_hosts if h),
        registries=tuple(registries),
    )


def host_matches(host: str, pattern: str) -> bool:
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def egress_decide(host: str, rules: EgressRules) -> tuple[bool, str]:
    """The one allowlist decision: (allowed, reason when refused)."""
    host = host.lower().strip("[]")
    if not host:
        return False, "no host"
    if rules.allow_public:
        return True, ""
    patterns = list(rules.allowed_hosts)
    if rules.allow_package_managers:
        patterns += rules.registries
    if rules.allow_mcp_servers:
        patterns += rules.mcp_hosts
    if any(host_matches(host, p) for p in patterns):
        return True, ""
    return False, "not in this environment's allowed_hosts (networking: limited)"


def _resolve(host: str, port: int, rules: EgressRules) -> tuple[str | None, str]:
    """The address to connect to (outbound/guard.py). A private or loopback one only for an allowed literal
    of it."""
    bare = host.strip("[]")
    try:
        return resolve_checked(bare, port, allow_private=bare.lower() in rules.allowed_hosts), ""
    except AddressRefused as exc:
        return None, f"{bare}: {exc.reason}"


class EgressProxy:
    def __init__(self, *, session_id: str, rules: EgressRules, slots: list[Any] | None = None) -> None:
        self.session_id = session_id
        self.rules = rules
        self.slots = list(slots or [])  # sessions.sandbox.credentials.SecretSlot
        self._listener: socket.socket | None = None
        self._denials: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def listen(self, path: Path, *, uid: int) -> None:
        if self._listener is not None:
            self._listener.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, uid, uid)
        listener.listen(64)
        self._listener = listener
        threading.Thread(
            target=self._accept_loop, args=(listener,), daemon=True, name=f"egress-{self.session_id}"
        ).start()

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
            self._listener = None

    def drain_denials(self) -> list[tuple[str, str]]:
        with self._lock:
            denials, self._denials = self._denials, []
        return denials

    def _deny(self, client: socket.socket, host: str, reason: str, status: str = "403 Forbidden") -> None:
        with self._lock:
            self._denials.append((host, reason))
        logger.info("egress refused for session %s: %s (%s)", self.session_id, host, reason)
        body = f"Galley egress proxy: connection to {host} refused: {reason}\n".encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "X-Galley-Egress: refused\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            client.sendall(head + body)
        except OSError:
            pass
        client.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            self._serve(client)
        except Exception:
            logger.exception("egress proxy connection failed")
            try:
                client.close()
            except OSError:
                pass

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            data += chunk
            if len(data) > HEADER_LIMIT:
                self._deny(client, "?", "request header too large", "431 Request Header Fields Too Large")
                return
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._deny(client, "?", "malformed request line", "400 Bad Request")
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host = host.strip("[]")
            port = int(port_text) if port_text.isdigit() else 443
            upstream = self._open(client, host, port)
            if upstream is None:
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            slots = [slot for slot in self.slots if slot.applies_to(host)]
            if slots and not rest:
                self._intercept(client, upstream, host, slots)
                return
            if rest:
                upstream.sendall(rest)
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                self._deny(
                    client,
                    url.hostname or target[:100],
                    "only http:// URLs and CONNECT are proxied",
                    "400 Bad Request",
                )
                return
            upstream = self._open(client, url.hostname, url.port or 80)
            if upstream is None:
                return
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            slots = [slot for slot in self.slots if slot.applies_to(url.hostname)]
            request, rest = _rewrite(client, f"{method} {path} {version}", lines[1:], rest, slots)
            upstream.sendall(request + rest)
        _pipe(client, upstream)

    def _intercept(self, client: socket.socket, upstream: socket.socket, host: str, slots: list[Any]) -> None:
        """TLS to a host with credentials: terminate it here, inject, and open a verified TLS upstream."""
        from sessions.sandbox.credentials import leaf_context, upstream_context

        try:
            inner = leaf_context(host).wrap_socket(client, server_side=True)
            outer = upstream_context().wrap_socket(upstream, server_hostname=host)
        except (ssl.SSLError, OSError) as exc:
            logger.info("egress TLS interception for %s failed: %s", host, exc)
            client.close()
            upstream.close()
            return
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = inner.recv(65536)
            if not chunk or len(data) > HEADER_LIMIT:
                inner.close()
                outer.close()
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        request, rest = _rewrite(inner, lines[0], lines[1:], rest, slots)
        outer.sendall(request + rest)
        _pipe(inner, outer)

    def _open(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        allowed, reason = egress_decide(host, self.rules)
        if not allowed:
            self._deny(client, host, reason)
            return None
        address, reason = _resolve(host, port, self.rules)
        if address is None:
            self._deny(client, host, reason)
            return None
        try:
            return socket.create_connection((address, port), timeout=30)
        except OSError as exc:
            self._deny(client, host, f"upstream connection failed: {exc.strerror or exc}", "502 Bad Gateway")
            return None


def _rewrite(
    client: socket.socket, request_line: str, header_lines: list[str], rest: bytes, slots: list[Any]
) -> tuple[bytes, bytes]:
    """The request head to send upstream (hop-by-hop headers dropped, one request per connection), with
    credential placeholders replaced in the headers and, when enabled and the body has a length, the body."""
    from sessions.sandbox.credentials import secret_value

    hop = ("proxy-connection", "proxy-authorization", "connection", "keep-alive")
    headers = [line for line in header_lines if line.split(":", 1)[0].strip().lower() not in hop]
    length_text = next(
        (
            line.split(":", 1)[1].strip()
            for line in headers
            if line.split(":", 1)[0].strip().lower() == "content-length"
        ),
        None,
    )
    values: dict[str, str] = {}
    for slot in slots:
        if slot.header and any(slot.placeholder in line for line in headers):
            values.setdefault(slot.placeholder, secret_value(slot.credential_id) or slot.placeholder)
            headers = [line.replace(slot.placeholder, values[slot.placeholder]) for line in headers]
    body_slots = [slot for slot in slots if slot.body]
    if body_slots and length_text and length_text.isdigit() and int(length_text) <= BODY_INJECT_LIMIT:
        length = int(length_text)
        while len(rest) < length:
            chunk = client.recv(65536)
            if not chunk:
                break
            rest += chunk
        body, rest = rest[:length], rest[length:]
        for slot in body_slots:
            if slot.placeholder.encode() in body:
                value = values.get(slot.placeholder) or secret_value(slot.credential_id) or slot.placeholder
                body = body.replace(slot.placeholder.encode(), value.encode())
        headers = [line for line in headers if line.split(":", 1)[0].strip().lower() != "content-length"]
        headers.append(f"Content-Length: {len(body)}")
        rest = body + rest
    head = "\r\n".join([request_line, *headers, "Connection: close"]) + "\r\n\r\n"
    return head.encode("latin-1", errors="replace"), rest


def _pipe(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    b.settimeout(None)
    sockets: list[Any] = [a, b]
    try:
        while True:
            # TLS sockets may hold decrypted bytes that select() cannot see.
            ready = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(sockets, [], [], IDLE_SECONDS)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        pass
    finally:
        a.close()
        b.close()

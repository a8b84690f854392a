"""The egress proxy of `limited` sandboxes: HTTP CONNECT and plain HTTP, one Unix socket per sandbox.

The sandbox has no network of its own. A bridge inside it (bridge.py) forwards 127.0.0.1:3128 to this proxy's
socket, which is bind-mounted into the sandbox. Each request's host goes through `egress_decide`; refusals
answer 403 with a clear message and are kept for the tool result (so the session log records them).
"""

import ipaddress
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

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
IDLE_SECONDS = 300.0


@dataclass(frozen=True)
class EgressRules:
    allowed_hosts: tuple[str, ...] = ()
    allow_package_managers: bool = False
    allow_mcp_servers: bool = False
    mcp_hosts: tuple[str, ...] = ()
    registries: tuple[str, ...] = field(default_factory=tuple)


def egress_rules(*, networking: dict, agent_snapshot: dict) -> EgressRules:
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


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def egress_decide(host: str, rules: EgressRules) -> tuple[bool, str]:
    """The one allowlist decision: (allowed, reason when refused)."""
    host = host.lower().strip("[]")
    if not host:
        return False, "no host"
    patterns = list(rules.allowed_hosts)
    if rules.allow_package_managers:
        patterns += rules.registries
    if rules.allow_mcp_servers:
        patterns += rules.mcp_hosts
    if any(host_matches(host, p) for p in patterns):
        return True, ""
    return False, "not in this environment's allowed_hosts (networking: limited)"


def _resolve(host: str, port: int, rules: EgressRules) -> tuple[str | None, str]:
    """The address to connect to. A private or loopback address only for an allowed literal of it."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return None, f"cannot resolve {bare}: {exc.strerror or exc}"
    literal = bare.lower() in rules.allowed_hosts
    for info in infos:
        address = str(info[4][0])
        if _is_private(address) and not literal:
            return None, f"{bare} resolves to a private or loopback address ({address})"
        return address, ""
    return None, f"cannot resolve {bare}"


class EgressProxy:
    def __init__(self, *, session_id: str, rules: EgressRules) -> None:
        self.session_id = session_id
        self.rules = rules
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
            port = int(port_text) if port_text.isdigit() else 443
            upstream = self._open(client, host, port)
            if upstream is None:
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
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
            headers = [
                line
                for line in lines[1:]
                if line.split(":", 1)[0].strip().lower()
                not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")
            ]
            request = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close"]) + "\r\n\r\n"
            upstream.sendall(request.encode("latin-1") + rest)
        _pipe(client, upstream)

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


def _pipe(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    b.settimeout(None)
    sockets = [a, b]
    try:
        while True:
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

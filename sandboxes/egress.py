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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    from sandboxes.packages import configured_registry_hosts

    registries = [*PACKAGE_REGISTRIES, *configured_registry_hosts()]
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


def _resolve(
    host: str, port: int, rules: EgressRules, *, allow_private: bool = False
) -> tuple[str | None, str]:
    """The address to connect to (outbound/guard.py). A private or loopback one only for an allowed literal
    of it (or a git host an administrator listed in GALLEY_GIT_HOSTS, for its repositories)."""
    bare = host.strip("[]")
    try:
        allowed = allow_private or bare.lower() in rules.allowed_hosts
        return resolve_checked(bare, port, allow_private=allowed), ""
    except AddressRefused as exc:
        return None, f"{bare}: {exc.reason}"


# Connections one sandbox may hold open through its proxy at once: each is a thread of the worker, which other
# sessions share. Past it a connection gets a 503 at once, from the accepting thread.
MAX_CONNECTIONS = 64
# Distinct refusals kept between two drains (one tool call); more are only counted, so a loop of refused
# requests cannot grow the worker's memory or the tool result past the output limit.
MAX_DENIALS = 20
MAX_HOST_CHARS = 255


class EgressProxy:
    def __init__(
        self,
        *,
        session_id: str,
        rules: EgressRules,
        slots: list[Any] | None = None,
        repositories: bool = True,
    ) -> None:
        self.session_id = session_id
        self.rules = rules
        # Whether the session's repository resources get their token injected (read from the
        # database per connection); a package build has none, and may run on a host with no database.
        self.repositories = repositories
        self.slots = list(slots or [])  # sandboxes.credentials.SecretSlot
        self._listener: socket.socket | None = None
        self._denials: dict[tuple[str, str], None] = {}  # distinct, in order
        self._dropped = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def listen(self, path: Path, *, uid: int) -> None:
        if self._listener is not None:
            self._listener.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A socket address holds at most 107 bytes and the data directory may be deeper than that: bind
        # through a descriptor of the socket's directory, whose /proc/self/fd path is always short.
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            listener.bind(f"/proc/self/fd/{directory}/{path.name}")
        except OSError:
            listener.close()
            raise
        finally:
            os.close(directory)
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

    def drain_denials(self) -> tuple[list[tuple[str, str]], int]:
        """The distinct (host, reason) refusals since the last drain, and how many more were not kept."""
        with self._lock:
            denials, self._denials = list(self._denials), {}
            dropped, self._dropped = self._dropped, 0
        return denials, dropped

    def _record(self, host: str, reason: str) -> None:
        if len(host) > MAX_HOST_CHARS:
            host = host[:MAX_HOST_CHARS] + "..."
        with self._lock:
            if (host, reason) in self._denials:
                return
            if len(self._denials) < MAX_DENIALS:
                self._denials[(host, reason)] = None
            else:
                self._dropped += 1

    def _deny(self, client: socket.socket, host: str, reason: str, status: str = "403 Forbidden") -> None:
        self._record(host, reason)
        logger.info("egress refused for session %s: %s (%s)", self.session_id, host[:MAX_HOST_CHARS], reason)
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
            if not self._connections.acquire(blocking=False):
                client.settimeout(1.0)  # never blocks the accepting thread for long
                self._deny(
                    client,
                    "(any host)",
                    f"more than {MAX_CONNECTIONS} connections open at once",
                    status="503 Service Unavailable",
                )
                continue
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
        finally:
            self._connections.release()

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
            targets = self._repo_targets(host, port)
            upstream = self._open(client, host, port, repo=bool(targets))
            if upstream is None:
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            slots = [slot for slot in self.slots if slot.applies_to(host)]
            if (slots or targets) and not rest:
                self._intercept(client, upstream, host, slots, targets=targets, port=port)
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
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            port = url.port or 80
            target = _repo_match(self._repo_targets(url.hostname, port), url.hostname, port, path)
            upstream = self._open(client, url.hostname, port, repo=target is not None)
            if upstream is None:
                return
            slots = [slot for slot in self.slots if slot.applies_to(url.hostname)]
            request, rest, injected = _rewrite(
                client, f"{method} {path} {version}", lines[1:], rest, slots, auth=_repo_auth(target)
            )
            upstream.sendall(request + rest)
            if injected:
                _pipe_masked(client, upstream, injected, method)
                return
        _pipe(client, upstream)

    def _intercept(
        self,
        client: socket.socket,
        upstream: socket.socket,
        host: str,
        slots: list[Any],
        *,
        targets: list[Any] | None = None,
        port: int = 443,
    ) -> None:
        """TLS to a host with credentials or attached repositories: terminate it here, inject, and open a
        verified TLS upstream."""
        from sandboxes.credentials import leaf_context, upstream_context

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
        parts = lines[0].split(" ")
        target = _repo_match(targets or [], host, port, parts[1] if len(parts) > 1 else "/")
        if targets and target is None and not egress_decide(host, self.rules)[0]:
            # The host is reachable only for its attached repositories, and this is not one of them.
            outer.close()
            reason = "only git requests for this session's repositories are allowed to this host"
            self._deny(inner, host, reason)
            return
        request, rest, injected = _rewrite(inner, lines[0], lines[1:], rest, slots, auth=_repo_auth(target))
        outer.sendall(request + rest)
        if injected:
            _pipe_masked(inner, outer, injected, lines[0].split(" ", 1)[0])
        else:
            _pipe(inner, outer)

    def _repo_targets(self, host: str, port: int) -> list[Any]:
        from sandboxes.repos import session_targets

        if not self.repositories:
            return []
        bare = host.lower().rstrip(".").strip("[]")
        return [t for t in session_targets(self.session_id) if t.host == bare and t.port == port]

    def _open(
        self, client: socket.socket, host: str, port: int, *, repo: bool = False
    ) -> socket.socket | None:
        """repo: the request is git traffic for one of the session's repositories (allowed whatever the
        environment's allowlist says, and to a private address when the host is in GALLEY_GIT_HOSTS)."""
        from sandboxes.repos import is_listed

        allowed, reason = egress_decide(host, self.rules)
        if not allowed and not repo:
            self._deny(client, host, reason)
            return None
        address, reason = _resolve(host, port, self.rules, allow_private=repo and is_listed(host, port))
        if address is None:
            self._deny(client, host, reason)
            return None
        try:
            return socket.create_connection((address, port), timeout=30)
        except OSError as exc:
            self._deny(client, host, f"upstream connection failed: {exc.strerror or exc}", "502 Bad Gateway")
            return None


def _repo_match(targets: list[Any], host: str, port: int, path: str) -> Any:
    return next((t for t in targets if t.matches(host=host, port=port, path=path)), None)


def _repo_auth(target: Any) -> str | None:
    """The Authorization header line for an attached repository's request, read at the moment of use."""
    if target is None:
        return None
    from sandboxes.repos import auth_header, target_token

    token = target_token(target.resource_id)
    return auth_header(token) if token else None


def _rewrite(
    client: socket.socket,
    request_line: str,
    header_lines: list[str],
    rest: bytes,
    slots: list[Any],
    *,
    auth: str | None = None,
) -> tuple[bytes, bytes, dict[str, str]]:
    """The request head to send upstream (hop-by-hop headers dropped, one request per connection), with
    credential placeholders replaced in the headers and, when enabled and the body has a length, the body;
    `auth` (a repository's Authorization line) replaces any Authorization the sandbox sent.
    Also returns {placeholder: value} of the vault values injected, for re-masking the response (git
    traffic is not re-masked: git servers do not echo credentials, and packs are large binary streams)."""
    from sandboxes.credentials import secret_value

    hop = ("proxy-connection", "proxy-authorization", "connection", "keep-alive")
    if auth is not None:
        hop += ("authorization",)
    headers = [line for line in header_lines if line.split(":", 1)[0].strip().lower() not in hop]
    if auth is not None:
        headers.append(auth)
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
                values[slot.placeholder] = value
                body = body.replace(slot.placeholder.encode(), value.encode())
        headers = [line for line in headers if line.split(":", 1)[0].strip().lower() != "content-length"]
        headers.append(f"Content-Length: {len(body)}")
        rest = body + rest
    injected = {placeholder: value for placeholder, value in values.items() if value != placeholder}
    if injected:
        # The response is re-masked, which needs it uncompressed: ask for identity.
        headers = [line for line in headers if line.split(":", 1)[0].strip().lower() != "accept-encoding"]
    head = "\r\n".join([request_line, *headers, "Connection: close"]) + "\r\n\r\n"
    return head.encode("latin-1", errors="replace"), rest, injected


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


class ResponseFilter:
    """The upstream's answer to a request that carried injected credentials, re-masked before the sandbox
    sees it: every real value becomes its placeholder again, in the head and in the body (decoded from
    chunked transfer coding and gzip/deflate first, since a value may hide in either). The re-masked body
    changes length, so it goes to the sandbox without Content-Length or chunking, ended by closing the
    connection (the request asked for `Connection: close` anyway)."""

    DECODABLE = ("gzip", "x-gzip", "deflate")

    def __init__(self, values: dict[str, str], method: str) -> None:
        from sandboxes.credentials import SecretMasker

        self.masker = SecretMasker(values)
        self.method = method.upper()
        self.state = "head"
        self.buffer = b""
        self.remaining = 0  # body bytes left (length framing) or in the current chunk
        self.chunked = False
        self.decoder: Any = None
        self.done = False  # the response is complete: close the connection after sending the output

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out: list[bytes] = []
        while self.buffer and not self.done:
            if self.state == "head":
                if b"\r\n\r\n" not in self.buffer:
                    if len(self.buffer) > HEADER_LIMIT:
                        return self._refuse("response header too large")
                    break
                head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                output = self._head(head)
                if output is None:
                    return self._refuse(self._reason)
                out.append(output)
            elif self.state == "raw":
                out.append(self._body(self.buffer))
                self.buffer = b""
            elif self.state == "length":
                piece, self.buffer = self.buffer[: self.remaining], self.buffer[self.remaining :]
                self.remaining -= len(piece)
                out.append(self._body(piece))
                if self.remaining == 0:
                    out.append(self._end())
            elif self.state == "chunk-size":
                if b"\r\n" not in self.buffer:
                    if len(self.buffer) > 1024:
                        return self._refuse("malformed chunked response")
                    break
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                try:
                    self.remaining = int(line.split(b";", 1)[0].strip() or b"x", 16)
                except ValueError:
                    return self._refuse("malformed chunked response")
                self.state = "chunk" if self.remaining else "trailer"
            elif self.state == "chunk":
                piece, self.buffer = self.buffer[: self.remaining], self.buffer[self.remaining :]
                self.remaining -= len(piece)
                out.append(self._body(piece))
                if self.remaining == 0:
                    self.state = "chunk-end"
            elif self.state == "chunk-end":
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.state = "chunk-size"
            elif self.state == "trailer":
                if b"\r\n" not in self.buffer:
                    break
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                if not line:  # trailers are dropped: the body is no longer chunked
                    out.append(self._end())
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream closed: whatever is still held back."""
        if self.done or self.state == "head":
            return b""
        return self._end()

    _reason = ""

    def _head(self, head: bytes) -> bytes | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = lines[1:]

        def value(name: str) -> str:
            return next(
                (line.split(":", 1)[1].strip().lower() for line in headers if _name(line) == name), ""
            )

        masked = self.masker.mask(head)
        if 100 <= code < 200 and code != 101:
            return masked + b"\r\n\r\n"  # an interim answer; the real one follows
        if code == 101:
            self.state = "raw"
            return masked + b"\r\n\r\n"
        if self.method == "HEAD" or code in (204, 304):
            self.done = True
            return masked + b"\r\n\r\n"
        encoding = value("content-encoding")
        if encoding and encoding != "identity":
            if encoding not in self.DECODABLE:
                self._reason = f"cannot check a {encoding}-encoded response for credential values"
                return None
            self.decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
        framing = ("content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding")
        kept = masked.decode("latin-1").split("\r\n")[1:]
        kept = [line for line in kept if _name(line) not in framing]
        if encoding and encoding != "identity":
            kept = [line for line in kept if _name(line) != "content-md5"]
        status = self.masker.mask(lines[0].encode("latin-1")).decode("latin-1")
        if "chunked" in value("transfer-encoding"):
            self.state = "chunk-size"
        elif value("content-length").isdigit():
            self.state = "length"
            self.remaining = int(value("content-length"))
        else:
            self.state = "raw"
        output = ("\r\n".join([status, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
        if self.state == "length" and self.remaining == 0:
            output += self._end()
        return output

    def _body(self, piece: bytes) -> bytes:
        if self.decoder is not None:
            try:
                piece = self.decoder.decompress(piece)
            except zlib.error:
                self.done = True
                return self.masker.flush()
        return self.masker.feed(piece)

    def _end(self) -> bytes:
        tail = b""
        if self.decoder is not None:
            try:
                tail = self.decoder.flush()
            except zlib.error:
                tail = b""
        self.done = True
        return self.masker.feed(tail) + self.masker.flush()

    def _refuse(self, reason: str) -> bytes:
        self.done = True
        logger.info("egress response refused: %s", reason)
        body = f"Galley egress proxy: {reason}\n".encode()
        return (
            f"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "X-Galley-Egress: refused\r\nConnection: close\r\n\r\n"
        ).encode() + body


def _name(line: str) -> str:
    return line.split(":", 1)[0].strip().lower()


def _pipe_masked(client: socket.socket, upstream: socket.socket, values: dict[str, str], method: str) -> None:
    """Like _pipe, but the upstream's answer passes through a ResponseFilter first."""
    response = ResponseFilter(values, method)
    client.settimeout(None)
    upstream.settimeout(None)
    sockets: list[Any] = [client, upstream]
    try:
        while not response.done:
            ready = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(sockets, [], [], IDLE_SECONDS)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if s is client:
                    if not data:
                        sockets.remove(client)  # the request is sent; keep reading the answer
                        continue
                    upstream.sendall(data)
                    continue
                if not data:
                    client.sendall(response.finish())
                    return
                output = response.feed(data)
                if output:
                    client.sendall(output)
                if response.done:
                    break
    except OSError:
        pass
    finally:
        client.close()
        upstream.close()

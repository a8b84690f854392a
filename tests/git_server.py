"""A token-protected git smart-HTTP server on loopback for repository tests: `git http-backend` behind a
small http.server CGI wrapper. It listens on 127.0.0.2 (still loopback) so that sandboxes, whose NO_PROXY
names 127.0.0.1, reach it through the egress proxy as they would reach a real git host."""

import base64
import datetime
import ipaddress
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.2"


@dataclass
class GitServer:
    root: Path
    port: int
    token: str
    scheme: str = "http"
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def netloc(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.netloc}/{name}.git"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for HOST (its own CA): the test trusts it as GALLEY_EGRESS_UPSTREAM_CA_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "git.crt", directory / "git.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def make_repository(server: GitServer, name: str, branches: dict[str, dict[str, str]]) -> dict[str, str]:
    """A bare repository `<name>.git` with one commit per branch (files given per branch). Returns the
    head commit of each branch."""
    bare = server.root / f"{name}.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("-C", str(bare), "config", "http.receivepack", "true")
    git("-C", str(bare), "config", "uploadpack.allowAnySHA1InWant", "true")
    work = server.root / f".work-{name}"
    git("init", "-q", "-b", "main", str(work))
    heads = {}
    for branch, files in branches.items():
        if heads:  # the first branch is main, on the unborn HEAD; the others start from main
            git("-C", str(work), "checkout", "-q", "-B", branch, "main")
        for path, content in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(content)
        git("-C", str(work), "add", "-A")
        git("-C", str(work), "commit", "-q", "-m", f"{branch} commit")
        heads[branch] = git("-C", str(work), "rev-parse", "HEAD")
    git("-C", str(work), "push", "-q", str(bare), *[f"{b}:{b}" for b in branches])
    return heads


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                _, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return password == server.token

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            body = self._body() if self.command == "POST" else b""
            ok = self._authorized()
            server.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "authorized": str(ok),
                    "auth": self.headers.get("Authorization", ""),
                }
            )
            if not ok:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            env = {
                "PATH": "/usr/bin:/bin",
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": "agent",
                "REMOTE_ADDR": "127.0.0.1",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
            head, _, payload = done.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve  # noqa: N815
        do_POST = _serve  # noqa: N815

    return Handler


@contextmanager
def git_server(root: Path, token: str, *, tls: tuple[Path, Path] | None = None) -> Iterator[GitServer]:
    root.mkdir(parents=True, exist_ok=True)
    state = GitServer(root=root, port=0, token=token, scheme="https" if tls else "http")
    httpd = ThreadingHTTPServer((HOST, 0), _handler(state))
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()

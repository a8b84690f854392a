"""Vault environment_variable credentials: the sandbox holds a placeholder; the egress proxy substitutes the
real value only on requests to the credential's hosts, over plain HTTP and over HTTPS (terminated by the
proxy)."""

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db(transaction=True)]

SECRET = "real-secret-123"


class Handler(BaseHTTPRequestHandler):
    def _answer(self, body: bytes) -> None:
        auth = self.headers.get("Authorization", "")
        other = self.headers.get("X-Other", "")
        parts = [
            "auth-ok" if auth == f"Bearer {SECRET}" else "auth-missing",
            "body-ok" if SECRET.encode() in body else "body-missing",
            "other-placeholder" if other.startswith("galley_placeholder_") else "other-changed",
        ]
        reply = " ".join(parts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def log_message(self, *args: object) -> None:
        pass


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "up.crt", directory / "up.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def upstreams(sandbox_root: Path, settings) -> Iterator[dict[str, int]]:  # type: ignore[no-untyped-def]
    from vaults import crypto

    settings.GALLEY_VAULT_KEYS = [Fernet.generate_key().decode()]
    settings.DATA_DIR = sandbox_root / "data"
    crypto.reset_cache()
    cert, key = _self_signed(sandbox_root)
    settings.GALLEY_EGRESS_UPSTREAM_CA_FILE = str(cert)
    plain = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    for server in (plain, tls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"http": plain.server_address[1], "https": tls.server_address[1]}
    for server in (plain, tls):
        server.shutdown()
        server.server_close()
    crypto.reset_cache()


def _session_with_credentials(make_sandbox_session):  # type: ignore[no-untyped-def]
    from vaults import services as vaults

    session = make_sandbox_session(networking={"type": "limited", "allowed_hosts": ["127.0.0.1"]})
    vault = vaults.vault_create(workspace=session.workspace, body={"display_name": "v"})
    vaults.credential_create(
        vault=vault,
        body={
            "auth": {
                "type": "environment_variable",
                "secret_name": "API_TOKEN",
                "secret_value": SECRET,
                "networking": {"type": "limited", "allowed_hosts": ["127.0.0.1"]},
                "injection_location": {"header": True, "body": True},
            }
        },
    )
    vaults.credential_create(
        vault=vault,
        body={
            "auth": {
                "type": "environment_variable",
                "secret_name": "OTHER_TOKEN",
                "secret_value": "other-secret-456",
                "networking": {"type": "limited", "allowed_hosts": ["api.other.example"]},
            }
        },
    )
    session.vault_ids = [vault.id]
    session.save(update_fields=["vault_ids"])
    return session


def test_the_sandbox_only_ever_sees_placeholders(make_sandbox_session, upstreams):  # type: ignore[no-untyped-def]
    session = _session_with_credentials(make_sandbox_session)
    out = text(
        run(session, "bash", command='echo "$API_TOKEN"; echo "$OTHER_TOKEN"; env; cat /proc/*/environ')
    )
    assert SECRET not in out and "other-secret-456" not in out
    token, other = out.split("\n")[:2]
    assert token.startswith("galley_placeholder_") and other.startswith("galley_placeholder_")


def test_the_proxy_injects_into_headers_and_body_for_the_credentials_hosts(  # type: ignore[no-untyped-def]
    make_sandbox_session, upstreams
):
    session = _session_with_credentials(make_sandbox_session)
    proxy = "--noproxy '' -x $HTTP_PROXY -s -m 10"
    headers = '-H "Authorization: Bearer $API_TOKEN" -H "X-Other: $OTHER_TOKEN"'
    out = run(
        session,
        "bash",
        command=(
            f'curl {proxy} {headers} -d "token=$API_TOKEN" http://127.0.0.1:{upstreams["http"]}/; echo; '
            f'curl {proxy} {headers} -d "token=$API_TOKEN" https://127.0.0.1:{upstreams["https"]}/; echo; '
            f'curl {proxy} https://127.0.0.1:{upstreams["https"]}/ -H "Authorization: Bearer nope"'
        ),
    )
    lines = text(out).split("\n")
    assert lines[0] == "auth-ok body-ok other-placeholder", text(out)
    assert lines[1] == "auth-ok body-ok other-placeholder", text(out)
    assert lines[2] == "auth-missing body-missing other-changed"
    assert SECRET not in text(out)


class EchoHandler(BaseHTTPRequestHandler):
    """An allowed host that echoes the request back (like httpbin): headers and body, in several framings."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        import gzip
        import json
        import time

        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        mode = self.path.strip("/")
        if mode == "json":
            echo = json.dumps({"headers": dict(self.headers), "data": body.decode()}).encode()
        else:
            echo = (str(self.headers) + body.decode()).encode()
        self.send_response(200)
        self.send_header("X-Echo-Authorization", self.headers.get("Authorization", ""))
        if mode == "chunked":
            # The secret split across two chunks, sent apart: the proxy sees it over two reads.
            cut = echo.find(SECRET.encode()) + 5
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (echo[:cut], echo[cut:]):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode == "gzip":
            echo = gzip.compress(echo)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(echo)))
        self.end_headers()
        self.wfile.write(echo)

    def log_message(self, *args: object) -> None:
        pass


def test_an_echoing_host_never_puts_the_secret_into_the_sandbox(  # type: ignore[no-untyped-def]
    make_sandbox_session, upstreams, sandbox_root
):
    cert, key = sandbox_root / "up.crt", sandbox_root / "up.key"
    plain = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    tls = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    for server in (plain, tls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = _session_with_credentials(make_sandbox_session)
        curl = 'curl --noproxy "" -x $HTTP_PROXY -s -i -m 20 -H "Authorization: Bearer $API_TOKEN"'
        commands = []
        for scheme, port in (("http", plain.server_address[1]), ("https", tls.server_address[1])):
            for mode in ("plain", "chunked", "gzip", "json"):
                commands.append(
                    f'echo "== {scheme} {mode}"; {curl} -d "t=$API_TOKEN" {scheme}://127.0.0.1:{port}/{mode}'
                )
        out = run(session, "bash", command="; echo; ".join(commands))
        result = text(out)
        placeholder = text(run(session, "bash", command='echo "$API_TOKEN"'))
        assert SECRET not in result
        for scheme in ("http", "https"):
            for mode in ("plain", "chunked", "gzip", "json"):
                section = result.split(f"== {scheme} {mode}", 1)[1].split("==", 1)[0]
                assert "200" in section.split("\n", 2)[1], section
                # The echo came back, re-masked: the placeholder stands where the value was.
                assert f"Bearer {placeholder}" in section, (scheme, mode, section)
                assert f"t={placeholder}" in section, (scheme, mode, section)
                assert f"X-Echo-Authorization: Bearer {placeholder}" in section
    finally:
        for server in (plain, tls):
            server.shutdown()
            server.server_close()


def test_the_masker_catches_a_value_split_anywhere() -> None:
    from sandboxes.credentials import SecretMasker

    data = (b"x" * 50 + SECRET.encode() + b"y" * 10 + b'"real-secret-123"' + b"%2F") * 3
    for size in range(1, 40):
        masker = SecretMasker({"PH": SECRET})
        out = b"".join(masker.feed(data[i : i + size]) for i in range(0, len(data), size)) + masker.flush()
        assert out == data.replace(SECRET.encode(), b"PH"), size
    masker = SecretMasker({"PH": "a/b c"})
    assert masker.mask(b"a/b c|a%2Fb%20c|a%2Fb+c|a\\/b c") == b"PH|PH|PH|a\\/b c"

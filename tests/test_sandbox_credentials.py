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

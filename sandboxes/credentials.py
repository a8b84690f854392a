"""Vault `environment_variable` credentials for sandboxes: placeholders inside, real values only in the proxy.

The sandbox's environment holds a placeholder under the credential's `secret_name`. The egress proxy of a
`limited` sandbox replaces the placeholder with the decrypted value in requests to the credential's allowed
hosts, in the enabled injection locations (headers, body). HTTPS requests to such hosts are terminated by the
proxy with a certificate from a per-server certificate authority that sandboxes trust (it is added to their CA
bundle); the proxy then opens its own verified TLS connection upstream. The plaintext never enters the
sandbox, the log or a response. Under `unrestricted` networking there is no proxy: the sandbox sees the
placeholder only.
"""

import datetime
import hashlib
import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class SecretSlot:
    credential_id: str
    secret_name: str
    placeholder: str
    hosts: tuple[str, ...] | None  # None: any host the environment allows
    header: bool
    body: bool

    def applies_to(self, host: str) -> bool:
        from sandboxes.egress import host_matches

        return self.hosts is None or any(host_matches(host, pattern) for pattern in self.hosts)


def secret_slots(*, workspace_id: int | str, vault_ids: list[str]) -> list[SecretSlot]:
    if not vault_ids:
        return []
    from vaults.models import Credential

    slots = []
    credentials = Credential.objects.filter(
        vault_id__in=vault_ids,
        vault__workspace_id=workspace_id,
        auth_type="environment_variable",
        archived_at__isnull=True,
        vault__archived_at__isnull=True,
    ).order_by("created_at", "id")
    for credential in credentials:
        public = credential.auth_public or {}
        networking = public.get("networking") or {"type": "unrestricted"}
        location = public.get("injection_location") or {"header": True, "body": False}
        digest = hashlib.sha256(f"{credential.id}:{settings.SECRET_KEY}".encode()).hexdigest()[:32]
        slots.append(
            SecretSlot(
                credential_id=credential.id,
                secret_name=str(public.get("secret_name")),
                placeholder=f"galley_placeholder_{digest}",
                hosts=None
                if networking.get("type") != "limited"
                else tuple(networking.get("allowed_hosts") or []),
                header=bool(location.get("header")),
                body=bool(location.get("body")),
            )
        )
    return slots


def secret_value(credential_id: str) -> str | None:
    """Decrypt at the moment of use; None when the credential is gone or archived."""
    from django.db import connection

    from vaults.models import Credential

    try:
        credential = Credential.objects.filter(pk=credential_id, archived_at__isnull=True).first()
        if credential is None:
            return None
        return str(credential.secret().get("secret_value") or "")
    finally:
        connection.close()  # the proxy's threads are not request threads: do not leak connections


# --- the per-server certificate authority -------------------------------------------------------------------

_ca_lock = threading.Lock()
_leaf_cache: dict[str, ssl.SSLContext] = {}


def _ca_dir() -> Path:
    return Path(settings.DATA_DIR) / "sandbox-ca"


def _ca() -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = _ca_dir()
    key_path, cert_path = directory / "ca.key", directory / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Galley sandbox egress CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def ca_bundle_path() -> Path:
    """The system CA bundle plus the egress CA, for sandboxes whose HTTPS the proxy may terminate."""
    from cryptography.hazmat.primitives import serialization

    with _ca_lock:
        _key, cert = _ca()
        bundle = _ca_dir() / "bundle.crt"
        if not bundle.exists():
            system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
            bundle.write_bytes(system + b"\n" + cert.public_bytes(serialization.Encoding.PEM))
            os.chmod(bundle, 0o644)
            os.chmod(_ca_dir(), 0o711)
        return bundle


def leaf_context(host: str) -> ssl.SSLContext:
    """A server-side TLS context presenting a certificate for `host`, signed by the egress CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cache_key = f"{_ca_dir()}|{host}"  # a leaf belongs to the CA of the data directory it was made for
    with _ca_lock:
        cached = _leaf_cache.get(cache_key)
        if cached is not None:
            return cached
        ca_key, ca_cert = _ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            context.load_cert_chain(cert_file, key_file)
        _leaf_cache[cache_key] = context
        return context


def upstream_context() -> ssl.SSLContext:
    cafile = settings.GALLEY_EGRESS_UPSTREAM_CA_FILE
    return ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()


# --- re-masking responses -----------------------------------------------------------------------------------


class SecretMasker:
    """Replaces each real value (and its JSON- and URL-escaped forms) with its placeholder in a byte stream,
    including a value split across chunks: up to the longest form's length minus one byte is held back
    until the next chunk or `flush`."""

    def __init__(self, values: dict[str, str]) -> None:
        import json
        import re
        from urllib.parse import quote, quote_plus

        self._replacement: dict[bytes, bytes] = {}
        for placeholder, value in values.items():
            if not value or value == placeholder:
                continue
            forms = {
                value,
                json.dumps(value)[1:-1],
                json.dumps(value, ensure_ascii=False)[1:-1],
                quote(value, safe=""),
                quote_plus(value, safe=""),
            }
            for form in forms:
                self._replacement[form.encode()] = placeholder.encode()
        ordered = sorted(self._replacement, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(form) for form in ordered)) if ordered else None
        self._hold = max((len(form) for form in ordered), default=1) - 1
        self._carry = b""

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def mask(self, data: bytes) -> bytes:
        """All of `data` at once (a response head)."""
        if self._pattern is None:
            return data
        return self._pattern.sub(lambda m: self._replacement[m.group()], data)

    def feed(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        buf = self._carry + data
        split = max(0, len(buf) - self._hold)
        out: list[bytes] = []
        pos = 0
        for match in self._pattern.finditer(buf):
            if match.start() >= split:
                break
            # A match starting before `split` is at most _hold + 1 bytes long, so it lies wholly in buf.
            out.append(buf[pos : match.start()])
            out.append(self._replacement[match.group()])
            pos = match.end()
        cut = max(split, pos)
        out.append(buf[pos:cut])
        self._carry = buf[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        carry, self._carry = self._carry, b""
        return self.mask(carry)

"""The one guard for outbound requests to user-chosen URLs: resolve the host, refuse loopback,
private, link-local and other non-public addresses (unless explicitly allowed), and connect to
exactly the address that was checked, so a DNS answer cannot change between check and connect.
Redirects are never followed."""

import ipaddress
import socket
from typing import Any

import httpx2


class AddressRefused(Exception):
    """The host resolves to an address outbound requests may not reach (or does not resolve)."""


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve_checked(host: str, port: int, *, allow_private: bool = False) -> str:
    """The address to connect to for `host`: the first one it resolves to, after checking that every
    address it resolves to is public (a name with one private answer is refused as a whole)."""
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"{host!r} does not resolve: {exc}") from None
    addresses = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        addresses.append(ipaddress.ip_address(text))
    if not addresses:
        raise AddressRefused(f"{host!r} does not resolve.")
    if not allow_private:
        for address in addresses:
            if not _is_public(address):
                raise AddressRefused(f"{host!r} resolves to {address}, which is not a public address.")
    return str(addresses[0])


class _CheckedTransport(httpx2.HTTPTransport):
    def __init__(self, *, allow_private: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._allow_private = allow_private

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        address = resolve_checked(host, port, allow_private=self._allow_private)
        # The Host header keeps the name; TLS verifies the certificate against it (SNI).
        request.url = request.url.copy_with(host=address)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return super().handle_request(request)


def http_client(*, allow_private: bool = False, timeout: float = 10.0, **kwargs: Any) -> httpx2.Client:
    """An httpx2 client whose every connection goes to a checked address, without redirects."""
    kwargs.pop("follow_redirects", None)
    transport = _CheckedTransport(allow_private=allow_private)
    return httpx2.Client(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False, **kwargs
    )

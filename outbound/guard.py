"""The one outbound-address guard: every connection Galley opens to a URL a user chose goes through here.

A name is resolved once; if any of its addresses is loopback, private, link-local (cloud metadata lives at
169.254.169.254), shared (CGNAT), multicast, unspecified, reserved or IPv4-mapped, the connection is refused;
otherwise the caller connects to exactly the address that was checked. Resolving again at connect time would
let a name answer a public address to the check and 127.0.0.1 to the connection (DNS rebinding).

`http_client()` builds an httpx2 client whose transport does this for every new connection while TLS SNI,
certificate checks and the Host header keep the name. It never follows redirects: a caller that wants them
handles each hop, and each hop is checked again when it connects.
"""

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2
from httpcore2._backends.sync import SyncBackend

# Addresses that are global by Python's tables but must never be reached from here.
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class AddressRefused(Exception):
    """A host that resolves to an address outbound connections may not reach (or does not resolve)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host}: {reason}")
        self.host = host
        self.reason = reason


def address_refusal(address: str) -> str | None:
    """What kind of address `address` is when it may not be connected to, or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "an IPv4-mapped address"
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved address"
    return None


def resolve_checked(host: str, port: int, *, allow_private: bool = False) -> str:
    """Resolve `host` once and return the one address to connect to; AddressRefused when it may not be."""
    bare = host.strip("[]")
    if not bare:
        raise AddressRefused(host, "no host")
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressRefused(host, f"it does not resolve ({getattr(exc, 'strerror', None) or exc})") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise AddressRefused(host, "it does not resolve")
    if not allow_private:
        # Every answer is checked: a name with one public and one private address is refused, since which
        # one a later lookup favours is the name owner's choice.
        for address in addresses:
            kind = address_refusal(address)
            if kind is not None:
                raise AddressRefused(host, f"it resolves to {address}, {kind}")
    return addresses[0]


class _CheckedBackend(SyncBackend):
    """httpcore's socket backend, connecting to the checked address of the name it is given."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        address = resolve_checked(host, port, allow_private=self.allow_private)
        return super().connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )


class _CheckedTransport(httpx2.HTTPTransport):
    def __init__(self, *, allow_private: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The pool connects through the backend; the origin (and so SNI and Host) stays the URL's name.
        self._pool._network_backend = _CheckedBackend(allow_private=allow_private)  # type: ignore[union-attr]


def http_client(*, allow_private: bool = False, timeout: float = 10.0, **kwargs: Any) -> httpx2.Client:
    """An httpx2 client that connects only to checked addresses and never follows redirects.

    A refused address raises AddressRefused from the request call (not an httpx2 error). Extra keyword
    arguments go to httpx2.Client (headers, auth, ...); `verify`, `cert`, `limits` and `http2` go to the
    transport.
    Environment proxies are ignored: the connection must go to the address that was checked.
    """
    transport_kwargs = {
        key: kwargs.pop(key) for key in ("verify", "cert", "limits", "http2") if key in kwargs
    }
    kwargs.pop("follow_redirects", None)
    kwargs.pop("transport", None)
    return httpx2.Client(
        transport=_CheckedTransport(allow_private=allow_private, trust_env=False, **transport_kwargs),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        **kwargs,
    )

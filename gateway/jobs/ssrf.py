"""Where a job may be delivered: never into the gateway's own network.

Loopback, private (RFC 1918, CGNAT), link-local (cloud metadata, 169.254.169.254),
unique-local, multicast, reserved and unspecified addresses are refused (also wrapped in
IPv6: IPv4-mapped, 6to4, Teredo and NAT64 addresses are judged by the IPv4 they carry) — when the
endpoint is set AND at every delivery, because a name can be re-pointed after it was
checked (DNS rebinding). A delivery resolves the name ONCE, checks every address, and
connects to the checked address itself (the ``Host`` header and TLS SNI keep the name),
so there is no second lookup an attacker could answer differently.
``GATEWAY_JOBS_ALLOW_PRIVATE_TARGETS=true`` admits loopback and private ranges (tests,
on-premise receivers); link-local and unspecified addresses stay refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
URL_MAX = 2048

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefused(Exception):
    """The endpoint is not allowed; the message says why (no internals)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written (the Host header and TLS SNI)
    port: int
    path: str  # path and query

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def url_for(self, address: IPAddress) -> str:
        text = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{text}:{self.port}{self.path}"


def parse_url(url: str) -> Target:
    if not isinstance(url, str) or len(url) > URL_MAX:
        raise TargetRefused("the endpoint must be an http(s) URL")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise TargetRefused("the endpoint is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("the endpoint must be an http or https URL")
    if not parts.hostname:
        raise TargetRefused("the endpoint has no host")
    if parts.username or parts.password:
        raise TargetRefused("the endpoint must not carry credentials")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        path=path,
    )


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries to: IPv4-mapped (``::ffff:a.b.c.d``),
    6to4 (``2002:AABB:CCDD::/16``), Teredo (``2001::/32``: its server and its client) and
    NAT64 (``64:ff9b::/96``, RFC 6052). Each of them ends up at that IPv4 host, so each is
    judged by it: ``[2002:7f00:1::1]`` is 127.0.0.1."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why ``address`` may not be reached, or None when it may. An IPv6 address that
    wraps IPv4 ones is judged by them alone, like an IPv4-mapped one: refused when any of
    them is (a NAT64 prefix is no reason by itself: behind DNS64 every name has one)."""
    inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
    if inner:
        return next((why for a in inner if (why := refusal(a, allow_private))), None)
    if address.is_link_local:
        return "link-local addresses (cloud metadata) are never reachable"
    if address.is_unspecified or address.is_multicast:
        return "unspecified and multicast addresses are never reachable"
    if address.is_loopback or address.is_private or address in _CGNAT:
        if allow_private:
            return None
        return "loopback, private and unique-local addresses are not reachable"
    if address.is_reserved or not address.is_global:
        return "reserved addresses are not reachable"
    return None


Lookup = Callable[..., Awaitable[list[Any]]]


async def resolve(
    target: Target, allow_private: bool, *, lookup: Lookup | None = None
) -> IPAddress:
    """Resolve once and check EVERY address (one bad answer refuses the name).
    ``lookup`` replaces the event loop's ``getaddrinfo`` (tests: a name that resolves to
    a private address, which no resolver on a test machine offers)."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        getaddrinfo = lookup or asyncio.get_running_loop().getaddrinfo
        try:
            infos = await getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetRefused(f"the endpoint's host does not resolve ({exc})") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise TargetRefused("the endpoint's host does not resolve")
    for address in addresses:
        why = refusal(address, allow_private)
        if why is not None:
            raise TargetRefused(f"{target.host} resolves to {address}: {why}")
    return addresses[0]


async def check_url(url: str, allow_private: bool) -> tuple[Target, IPAddress]:
    target = parse_url(url)
    return target, await resolve(target, allow_private)

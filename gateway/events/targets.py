"""Where a webhook may be sent (SPEC §14): https:// and public addresses only.

A URL is checked when its endpoint is created or changed, and again at every
delivery after DNS resolution: :class:`PublicResolver` is the resolver of the
delivery client, so the addresses it checked are the ones the client
connects to (a name that resolved to a public address at creation and to
``127.0.0.1`` now is refused, not followed). ``webhooks.allow_private_targets``
turns every check off, for local development and tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class TargetRefused(ValueError):
    """The URL may not receive webhooks; the message names why."""


# IPv6 ranges that carry an IPv4 address a gateway or relay sends on to (RFC 6052, 8215)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, if any: mapped, 6to4, Teredo or NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address behind the relay
    if any(address in net for net in NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is ("a loopback address"), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        address = embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_unspecified or not address.is_global:
        return "not a public address"
    return None


def _resolved_refusal(host: str, address_text: str) -> str | None:
    address = ipaddress.ip_address(address_text.split("%")[0])
    kind = address_refusal(address)
    return f"url host {host!r} resolves to {address}, {kind}" if kind else None


def parse_target(url: str, *, allow_private: bool) -> URL:
    """The URL, if its form is acceptable; raises TargetRefused naming the reason."""
    if not isinstance(url, str) or not url:
        raise TargetRefused("url must be a non-empty string")
    if len(url) > 2048:
        raise TargetRefused("url is longer than 2048 characters")
    try:
        parsed = URL(url)
    except ValueError:
        raise TargetRefused(f"{url!r} is not a URL") from None
    schemes = {"https", "http"} if allow_private else {"https"}
    if parsed.scheme not in schemes:
        raise TargetRefused(
            "url must be an https:// URL" if not allow_private else "url must be http(s)://"
        )
    if not parsed.host:
        raise TargetRefused("url has no host")
    if parsed.user or parsed.password:
        raise TargetRefused("url must not carry credentials")
    if parsed.fragment:
        raise TargetRefused("url must not carry a fragment")
    if not allow_private:
        literal = _literal(parsed.host)
        if literal is not None:
            kind = address_refusal(literal)
            if kind:
                raise TargetRefused(f"url host {literal} is {kind}")
    return parsed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def check_target(url: str, *, allow_private: bool) -> URL:
    """:func:`parse_target`, then every address the host resolves to must be public."""
    parsed = parse_target(url, allow_private=allow_private)
    if allow_private or _literal(parsed.host or "") is not None:
        return parsed
    host = parsed.host or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parsed.port or 443, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise TargetRefused(f"url host {host!r} does not resolve ({exc.strerror or exc})") from None
    for info in infos:
        reason = _resolved_refusal(host, str(info[4][0]))
        if reason:
            raise TargetRefused(reason)
    return parsed


class PublicResolver(AbstractResolver):
    """Resolves like aiohttp's threaded resolver, then refuses any non-public address."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = _resolved_refusal(host, result["host"])
            if reason:
                raise OSError(reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


def literal_refusal(url: URL) -> str | None:
    """At delivery: an IP-literal host is never resolved, so it is checked here."""
    literal = _literal(url.host or "")
    kind = address_refusal(literal) if literal is not None else None
    return f"url host {literal} is {kind}" if kind else None

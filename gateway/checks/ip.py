"""Client IP (SPEC §3): the TCP peer, or behind trusted proxies the right-most
``X-Forwarded-For`` entry that is not itself a trusted proxy."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> IPAddress | None:
    """The client address, never taken from a header an untrusted peer sent."""
    address = parse_ip(peer)
    if address is None or not trusted or not in_networks(address, trusted):
        return address
    entries = [e.strip() for line in forwarded_for for e in line.split(",") if e.strip()]
    for entry in reversed(entries):
        hop = parse_ip(entry)
        if hop is None:
            return None  # an unreadable hop: the client is unknown
        if not in_networks(hop, trusted):
            return hop
    if entries:
        return parse_ip(entries[0])
    return address


def compile_allowed_ips(values: Iterable[str]) -> tuple[Network, ...]:
    """Parse ``allowed_ips``; raises ValueError naming the first bad entry."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR") from None
    return tuple(out)


def ip_allowed(address: IPAddress | None, allowed: tuple[Network, ...]) -> bool:
    if not allowed:
        return True
    return address is not None and in_networks(address, allowed)

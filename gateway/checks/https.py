"""``server.require_https`` (SPEC §4, §5): TLS at the gateway, or a trusted proxy's word."""

from __future__ import annotations


def forwarded_https(forwarded_proto: list[str]) -> bool:
    """What a trusted proxy's ``X-Forwarded-Proto`` says: the nearest hop's value."""
    if not forwarded_proto:
        return False
    last = forwarded_proto[-1].split(",")[-1].strip().lower()
    return last == "https"


def is_https(tls: bool, peer_trusted: bool, forwarded_proto: list[str]) -> bool:
    return tls or (peer_trusted and forwarded_https(forwarded_proto))

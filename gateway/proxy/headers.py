"""What crosses the gateway in headers (SPEC §5)."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1, plus the non-standard Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway itself on the way upstream.
_REPLACED = frozenset(
    {"host", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def is_gateway_header(lower_name: str) -> bool:
    return lower_name.startswith(("x-gateway-", "x_gateway_"))


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    forward_authorization: bool,
    identity: Iterable[tuple[str, str]],
    request_id: str,
    peer: str | None,
    proto: str,
    host: str | None,
) -> CIMultiDict[str]:
    """The headers the upstream receives: the client's, cleaned, then the gateway's own."""
    dropped = connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    forwarded_for: list[str] = []
    for name, value in incoming.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in dropped or is_gateway_header(lower):
            continue
        if lower == "authorization" and not forward_authorization:
            continue
        if lower in _REPLACED:
            if lower == "x-forwarded-for":
                forwarded_for.append(value)
            continue
        out.add(name, value)
    # Added after the Connection header was applied: a client cannot make these go.
    for name, value in identity:
        out[name] = value
    out["X-Request-Id"] = request_id
    if peer:
        forwarded_for.append(peer)
    if forwarded_for:
        out["X-Forwarded-For"] = ", ".join(forwarded_for)
    out["X-Forwarded-Proto"] = proto
    if host:
        out["X-Forwarded-Host"] = host
    return out


def downstream_response_headers(
    upstream: CIMultiDictProxy[str], *, keep_length: bool
) -> CIMultiDict[str]:
    """The upstream's response headers less hop-by-hop ones; every Set-Cookie line kept."""
    dropped = connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in dropped:
            continue
        if lower == "content-length" and not keep_length:
            continue
        out.add(name, value)
    return out

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


# Request headers never passed on as the client sent them (the gateway sets _REPLACED itself).
_DROP_REQUEST = HOP_BY_HOP | _REPLACED
_DROP_REQUEST_AND_AUTHORIZATION = _DROP_REQUEST | {"authorization"}
_DROP_RESPONSE_AND_LENGTH = HOP_BY_HOP | {"content-length"}
_GATEWAY_PREFIXES = ("x-gateway-", "x_gateway_")
_NONE: frozenset[str] = frozenset()


_TOKENS: dict[str, frozenset[str]] = {}  # "keep-alive", "close", ...: parsed once


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return _NONE
    if len(values) == 1:
        found = _TOKENS.get(values[0])
        if found is not None:
            return found
    tokens = frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())
    if len(values) == 1:
        if len(_TOKENS) >= 64:  # bounded: clients choose these values
            _TOKENS.clear()
        _TOKENS[values[0]] = tokens
    return tokens


def is_gateway_header(lower_name: str) -> bool:
    return lower_name.startswith(_GATEWAY_PREFIXES)


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
    drop = _DROP_REQUEST if forward_authorization else _DROP_REQUEST_AND_AUTHORIZATION
    kept: list[tuple[str, str]] = []
    forwarded_for: list[str] = []
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or lower.startswith(_GATEWAY_PREFIXES) or lower in dropped:
            if lower == "x-forwarded-for" and lower not in dropped:
                forwarded_for.append(value)
            continue
        kept.append((name, value))
    out: CIMultiDict[str] = CIMultiDict(kept)
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
    drop = HOP_BY_HOP if keep_length else _DROP_RESPONSE_AND_LENGTH
    return CIMultiDict(
        [
            (name, value)
            for name, value in upstream.items()
            if (lower := name.lower()) not in drop and lower not in dropped
        ]
    )

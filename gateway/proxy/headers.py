"""What crosses the gateway in headers (SPEC §5), on the raw bytes of the head.

Names are judged as an upstream might read them: case-insensitively and with
``_`` read as ``-`` (many servers, CGI and WSGI among them, make
``Transfer_Encoding`` and ``Transfer-Encoding`` the same variable). A client
header that reads as hop-by-hop, as framing, as one the gateway sets itself or
as an ``X-Gateway-*`` identity header never goes upstream; the framing of what
goes upstream is the gateway's own, from the body it actually sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# RFC 9110 §7.6.1, the non-standard Proxy-Connection, and the framing headers.
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
        "content-length",
    }
)
# Set by the gateway itself on the way upstream.
GATEWAY_SET = frozenset(
    {
        "host",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "traceparent",  # the gateway's span as parent (SPEC §17)
        "tracestate",  # as sent, with a valid traceparent only
    }
)
# Answered by the gateway itself: it sent its own ``100 Continue`` after the checks.
ANSWERED = frozenset({"expect"})
GATEWAY_PREFIX = "x-gateway-"

KEEP, DROP, AUTHORIZATION, FORWARDED_FOR, SUBPROTOCOLS = 0, 1, 2, 3, 4
KEY_SUBPROTOCOL = b"bearer."  # a key offered as a WebSocket subprotocol (SPEC §13)
_MAX_CACHED = 512  # header names a client chooses: the verdict cache stays bounded


def canonical_name(name: str) -> str:
    """``name`` as an upstream may read it: lower case, ``_`` as ``-``."""
    return name.lower().replace("_", "-")


def _verdict_of(name: bytes) -> int:
    canonical = canonical_name(name.decode("latin-1"))
    if canonical == "authorization":
        return AUTHORIZATION if name.lower() == b"authorization" else DROP
    if canonical == "sec-websocket-protocol":  # may carry a key, also on a plain request
        return SUBPROTOCOLS
    if canonical == "x-forwarded-for":
        return FORWARDED_FOR if name.lower() == b"x-forwarded-for" else DROP
    if (
        canonical in HOP_BY_HOP
        or canonical in GATEWAY_SET
        or canonical in ANSWERED
        or canonical.startswith(GATEWAY_PREFIX)
    ):
        return DROP
    return KEEP


_verdicts: dict[bytes, int] = {}


def verdict(name: bytes) -> int:
    found = _verdicts.get(name)
    if found is None:
        found = _verdict_of(name)
        if len(_verdicts) >= _MAX_CACHED:
            _verdicts.clear()
        _verdicts[name] = found
    return found


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names a ``Connection`` header lists (lower case, ``_`` as ``-``)."""
    return frozenset(
        token.strip().lower().replace(b"_", b"-")
        for value in values
        for token in value.split(b",")
        if token.strip()
    )


def upstream_head(
    request_line: bytes,
    raw_headers: Iterable[tuple[bytes, bytes]],
    *,
    host: bytes,
    forward_authorization: bool,
    identity: bytes,
    request_id: str,
    peer: str | None,
    proto: bytes,
    forwarded_host: bytes | None,
    framing: bytes,
    trace: bytes = b"",
) -> bytes:
    """The request head the upstream receives: the client's headers, cleaned, then the gateway's.

    ``identity`` is the gateway's header lines for the caller (``X-Gateway-*``);
    ``framing`` is the gateway's own ``Content-Length``/``Transfer-Encoding``
    line (or ``b""``); ``trace`` its ``traceparent`` (and ``tracestate``) lines. Headers named in ``Connection`` are dropped, but only
    from the client's: the gateway's own are added after, so a client can
    make none of them go.
    """
    out = [request_line, b"Host: ", host, b"\r\n"]
    forwarded_for: list[bytes] = []
    listed: frozenset[bytes] | None = None
    for name, value in raw_headers:
        kind = _verdicts.get(name)
        if kind is None:
            kind = verdict(name)
        if kind == KEEP:
            if listed is None:
                listed = _listed(raw_headers)
            if listed and name.lower().replace(b"_", b"-") in listed:
                continue
            out += (name, b": ", value, b"\r\n")
        elif kind == AUTHORIZATION:
            if forward_authorization:
                out += (b"Authorization: ", value, b"\r\n")
        elif kind == FORWARDED_FOR:
            forwarded_for.append(value)
        elif kind == SUBPROTOCOLS:  # kept as any header, less a key offered in it
            if listed is None:
                listed = _listed(raw_headers)
            offered = [p for p in value.split(b",") if not p.strip().startswith(KEY_SUBPROTOCOL)]
            if any(p.strip() for p in offered) and b"sec-websocket-protocol" not in listed:
                out += (name, b": ", b",".join(offered).strip(), b"\r\n")
    out.append(identity)
    out += (b"X-Request-Id: ", request_id.encode(), b"\r\n")
    if peer:
        forwarded_for.append(peer.encode())
    if forwarded_for:
        out += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\n")
    out += (b"X-Forwarded-Proto: ", proto, b"\r\n")
    if forwarded_host:
        out += (b"X-Forwarded-Host: ", forwarded_host, b"\r\n")
    out.append(trace)
    out.append(framing)
    out.append(b"\r\n")
    return b"".join(out)


def _listed(raw_headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    values = [value for name, value in raw_headers if name.lower() == b"connection"]
    return connection_tokens(values) if values else frozenset()


RESPONSE_KEEP, RESPONSE_DROP, RESPONSE_LOCATION, RESPONSE_CONNECTION = 0, 1, 2, 3
_response_verdicts: dict[bytes, tuple[int, str, str]] = {}
_connection_values: dict[bytes, frozenset[bytes]] = {}


def _response_verdict(name: bytes) -> tuple[int, str, str]:
    """(kind, the name as text, its lower case) for a response header name, cached."""
    found = _response_verdicts.get(name)
    if found is None:
        text = name.decode("latin-1")
        lower = text.lower()
        if lower == "connection":
            kind = RESPONSE_CONNECTION
        elif lower in HOP_BY_HOP:
            kind = RESPONSE_DROP
        elif lower == "location":
            kind = RESPONSE_LOCATION
        else:
            kind = RESPONSE_KEEP
        found = (kind, text, lower)
        if len(_response_verdicts) >= _MAX_CACHED:
            _response_verdicts.clear()
        _response_verdicts[name] = found
    return found


def _listed_by(value: bytes) -> frozenset[bytes]:
    """Header names a response's ``Connection`` value lists, beyond keep-alive and close."""
    found = _connection_values.get(value)
    if found is None:
        found = connection_tokens((value,)) - {b"keep-alive", b"close"}
        if len(_connection_values) >= 64:
            _connection_values.clear()
        _connection_values[value] = found
    return found


def response_headers(
    raw: list[tuple[bytes, bytes]],
    *,
    replaced: frozenset[str] = frozenset(),
    strip_cors: bool = False,
    relocate: Callable[[bytes], bytes] | None = None,
) -> list[tuple[str, str]]:
    """The upstream's response headers to pass back: hop-by-hop and framing removed,
    every ``Set-Cookie`` line kept, ``Location`` rewritten by ``relocate``, and the
    names in ``replaced`` (lower case: the gateway sets its own) left out, with every
    ``Access-Control-*`` when ``strip_cors`` (the gateway answers CORS itself)."""
    out: list[tuple[str, str]] = []
    listed: frozenset[bytes] = frozenset()
    for name, value in raw:
        kind, text, lower = _response_verdict(name)
        if kind == RESPONSE_KEEP:
            if lower in replaced or (strip_cors and lower.startswith("access-control-")):
                continue
        elif kind == RESPONSE_LOCATION:
            if relocate is not None:
                value = relocate(value)
        else:
            if kind == RESPONSE_CONNECTION:
                listed = listed | _listed_by(value)
            continue
        out.append((text, value.decode("utf-8", "replace")))
    if listed:
        out = [(n, v) for n, v in out if n.lower().encode("latin-1") not in listed]
    return out


def varies_on(headers: Iterable[tuple[str, str]], name: str) -> bool:
    """Whether the ``Vary`` lines among ``headers`` already name ``name`` (or ``*``)."""
    wanted = name.lower()
    for header, value in headers:
        if header.lower() == "vary":
            for token in value.split(","):
                token = token.strip().lower()
                if token == wanted or token == "*":
                    return True
    return False


_HANDSHAKE_OWN = frozenset({b"host", b"upgrade", b"connection", b"content-length"})


def handshake_headers(head: bytes) -> list[tuple[str, str]]:
    """The headers of an upstream request head (:func:`upstream_head`) for a WebSocket
    handshake made by aiohttp's client, which writes ``Host``, ``Upgrade``,
    ``Connection`` and every ``Sec-WebSocket-*`` itself."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b": ")
        lower = name.lower()
        if not sep or lower in _HANDSHAKE_OWN or lower.startswith(b"sec-websocket-"):
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out

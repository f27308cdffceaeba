"""Request line and header sizes (SPEC §4): 414 and 431 before anything else is read."""

from __future__ import annotations

from typing import Protocol

from ..denials import Denial

URI_TOO_LONG = Denial("uri_too_long")
HEADERS_TOO_LARGE = Denial("request_header_fields_too_large")


class HeadLimits(Protocol):
    """The ``server`` settings this check reads."""

    max_url_bytes: int
    max_header_count: int
    max_header_bytes: int


def head_denial(
    raw_target: str, raw_headers: tuple[tuple[bytes, bytes], ...], server: HeadLimits
) -> Denial | None:
    if len(raw_target) > server.max_url_bytes:
        return URI_TOO_LONG
    if len(raw_headers) > server.max_header_count:
        return HEADERS_TOO_LARGE
    limit = server.max_header_bytes
    for name, value in raw_headers:
        if len(name) + len(value) > limit:
            return HEADERS_TOO_LARGE
    return None

"""Route, method and declared body size (SPEC §4): 404, 405 and 413."""

from __future__ import annotations

from ..denials import Denial
from ..routing import Route

ROUTE_NOT_FOUND = Denial("route_not_found")


def method_denial(route: Route, method: str) -> Denial | None:
    if route.allows(method):
        return None
    return Denial(
        "method_not_allowed",
        {"allowed": sorted(route.methods or ())},
        {"Allow": route.allow_header},
    )


def size_denial(content_length: int | None, max_body_bytes: int) -> Denial | None:
    if content_length is not None and content_length > max_body_bytes:
        return too_large(max_body_bytes)
    return None


def too_large(max_body_bytes: int) -> Denial:
    return Denial("payload_too_large", {"max_body_bytes": max_body_bytes})

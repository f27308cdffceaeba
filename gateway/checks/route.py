"""Route, method and declared body size (SPEC §4): 404, 405 and 413."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from ..denials import Denial

ROUTE_NOT_FOUND = Denial("route_not_found")


class Route(Protocol):
    """What this check reads of a route (:class:`gateway.routing.Route`)."""

    methods: Collection[str] | None
    allow_header: str

    def allows(self, method: str) -> bool: ...


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

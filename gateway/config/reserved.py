"""Paths the gateway answers itself, before any route (SPEC §7, §11), as the config sees them.

``check-config``, ``serve`` and a reload refuse a route that can never be
reached: one whose ``match`` another route already has, or one whose whole
``match`` is answered by the management API, forward auth or the dashboard.
A route *above* such a path (``/v1`` beside the management API under ``/v1``,
or ``/``) is fine: it still gets every other path below it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schema import Config

# Below management.path_prefix: (path, whether the paths below it are answered too).
# tests/test_config.py holds this table to the paths the running gateway answers itself.
MANAGEMENT_PATHS: tuple[tuple[str, bool], ...] = (
    ("/auth/check", True),
    ("/auth/verify", False),
    ("/account", False),
    ("/openapi.json", False),
    ("/api-keys", True),
    ("/audit", False),
    ("/events", False),
    ("/webhook-endpoints", True),
    ("/secret-scanning/github", False),
)


def reserved_paths(config: Config) -> list[tuple[str, bool, str]]:
    """(path, answered below too, the setting that reserves it) for ``config``."""
    if not config.management.enabled:
        return []
    prefix = config.management.path_prefix
    paths = [
        (prefix + path, below, f"management.path_prefix {prefix}")
        for path, below in MANAGEMENT_PATHS
    ]
    if config.dashboard.enabled:
        paths.append((config.dashboard.path, True, f"dashboard.path {config.dashboard.path}"))
    return paths


def route_conflicts(config: Config) -> list[str]:
    """Every route that can never be reached, with the reason."""
    errors: list[str] = []
    first: dict[str, int] = {}
    reserved = reserved_paths(config)
    for index, route in enumerate(config.routes):
        match = route.match
        if match in first:
            errors.append(
                f"routes[{index}].match: {match!r} is already the match of "
                f"routes[{first[match]}] ({config.routes[first[match]].name!r}); "
                "this route would never be reached"
            )
        else:
            first[match] = index
        for path, below, owner in reserved:
            if match == path or (below and match.startswith(path + "/")):
                errors.append(
                    f"routes[{index}].match: {match!r} is answered by the gateway itself "
                    f"({path}{'/…' if below else ''}, from {owner}) before any route; "
                    "this route would never be reached: move it or change that setting"
                )
                break
    return errors

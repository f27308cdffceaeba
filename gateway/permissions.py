"""The permission algebra of SPEC §2."""

from __future__ import annotations

import re
from functools import lru_cache

NAMED_LEVELS = ("read", "write", "admin", "webhook")
PERMISSION = r"[a-z][a-z0-9_.-]{0,63}(?::(?:[a-z][a-z0-9_.-]{0,63}|\*))?"
_PERMISSION = re.compile(PERMISSION)


def validate_permission(permission: object) -> str:
    if not isinstance(permission, str) or not _PERMISSION.fullmatch(permission):
        raise ValueError(
            f"{permission!r} is not a permission (use read, write, admin, webhook, "
            "or resource:action such as users:read or users:*)"
        )
    return permission


@lru_cache(maxsize=4096)
def satisfies(held: str, required: str) -> bool:
    """Whether a key holding ``held`` may do what ``required`` names."""
    if held == required or held == "admin":
        return True
    resource, sep, action = required.partition(":")
    if held == "write":
        return required == "read" or (sep != "" and action in ("read", "write"))
    if held == "read":
        return sep != "" and action == "read"
    if not sep:
        return False  # res:* and res:read never satisfy a bare level
    held_resource, held_sep, held_action = held.partition(":")
    if not held_sep or held_resource != resource:
        return False
    return held_action == "*" or (held_action == "write" and action == "read")


@lru_cache(maxsize=4096)
def any_satisfies(held: tuple[str, ...], required: str) -> bool:
    return any(satisfies(p, required) for p in held)

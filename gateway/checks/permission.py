"""Route permissions (SPEC §2): one required permission per method."""

from __future__ import annotations

from ..denials import Denial
from ..permissions import any_satisfies


def permission_denial(held: tuple[str, ...], required: str | None) -> Denial | None:
    if required is None or any_satisfies(held, required):
        return None
    return Denial("insufficient_permissions", {"required_permission": required})

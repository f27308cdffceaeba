"""Revocation and expiry (SPEC §4): statuses of the key, not exceptions."""

from __future__ import annotations

from ..denials import Denial
from ..keys.model import CompiledKey

REVOKED = Denial("revoked_api_key")
EXPIRED = Denial("expired_api_key")


def key_status_denial(key: CompiledKey, now: float) -> Denial | None:
    if key.revoked:
        return REVOKED
    if key.expires_at is not None and key.expires_at <= now:
        return EXPIRED
    return None

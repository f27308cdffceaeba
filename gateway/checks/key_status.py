"""Revocation and expiry (SPEC §4): statuses of the key, not exceptions."""

from __future__ import annotations

from ..denials import Denial

REVOKED = Denial("revoked_api_key")
EXPIRED = Denial("expired_api_key")


def key_status_denial(revoked: bool, expires_at: float | None, now: float) -> Denial | None:
    if revoked:
        return REVOKED
    if expires_at is not None and expires_at <= now:
        return EXPIRED
    return None

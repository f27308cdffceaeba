"""Reading ``Authorization: Bearer <key>`` (SPEC §4, RFC 6750 §2.1)."""

from __future__ import annotations

from ..denials import Denial

MISSING = Denial("missing_api_key")
MALFORMED = Denial("invalid_authorization_header")


def bearer_token(values: list[str]) -> str | Denial:
    """The token of the one ``Authorization`` header, or why there is none."""
    if not values:
        return MISSING
    if len(values) != 1:
        return MALFORMED
    scheme, sep, token = values[0].strip().partition(" ")
    if not sep or scheme.lower() != "bearer":
        return MALFORMED
    token = token.strip()
    if not token or " " in token or "\t" in token:
        return MALFORMED
    return token

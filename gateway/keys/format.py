"""The key format of SPEC §1: ``{prefix}_{mode}_{32 random base62}{6 base62 CRC32}``.

A token that fails this check is refused without any store lookup, so random
garbage never costs a Redis round trip.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_SET = frozenset(BASE62)
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
BODY_LENGTH = RANDOM_LENGTH + CHECKSUM_LENGTH
MODES = ("live", "test")


def base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(text: str) -> str:
    """Six base62 digits of the CRC32 (zlib/IEEE) of ``text``."""
    return base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def generate_secret(prefix: str, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be live or test, not {mode!r}")
    head = f"{prefix}_{mode}_" + "".join(secrets.choice(BASE62) for _ in range(RANDOM_LENGTH))
    return head + checksum(head)


def parse_mode(token: str, prefix: str) -> str | None:
    """The mode of a well-formed token with a valid checksum, else None."""
    expected = len(prefix) + 6 + BODY_LENGTH  # "{prefix}_live_" is len(prefix) + 6
    if len(token) != expected or not token.startswith(prefix) or token[len(prefix)] != "_":
        return None
    mode = token[len(prefix) + 1 : len(prefix) + 5]
    if mode not in MODES or token[len(prefix) + 5] != "_":
        return None
    body = token[len(prefix) + 6 :]
    if not _BASE62_SET.issuperset(body):
        return None
    if checksum(token[:-CHECKSUM_LENGTH]) != body[RANDOM_LENGTH:]:
        return None
    return mode


def hash_secret(secret: str) -> str:
    """What the store keeps instead of the secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_id(kind: str) -> str:
    """An opaque, URL-safe id (``key_…``, ``acct_…``), never derived from a secret."""
    return f"{kind}_" + "".join(secrets.choice(BASE62) for _ in range(20))


def key_pattern(prefix: str) -> str:
    """The regular expression that finds this gateway's keys in text (for secret scanners)."""
    return rf"\b{prefix}_(?:live|test)_[0-9A-Za-z]{{{BODY_LENGTH}}}\b"

"""The shapes of the values a key's fields take through the API and the CLI, as regular
expressions that read the same in Python and in the OpenAPI document (ECMA-262): explicit
character classes, no ``\\s`` or ``\\d`` (whose meanings differ), no nested quantifiers.

:mod:`gateway.keys.service` refuses what does not match them in full, and the document
publishes them as ``pattern`` (anchored), so a value is valid to one exactly when it is
valid to the other. Each matches only values the gateway's own parsers accept.
"""

from __future__ import annotations

import re

# Durations: at most six digits (none reaches past what a date can hold), no sign, no
# spaces; a rotation's grace period may be 0s, an expiry is at least 1 of its unit.
GRACE_PERIOD = r"(?:0|[1-9][0-9]{0,5})(?:\.[0-9]+)?(?:ms|s|m|h|d)"
EXPIRES_IN = r"[1-9][0-9]{0,5}(?:\.[0-9]+)?(?:ms|s|m|h|d)"
KEY_ID = r"key_[A-Za-z0-9_-]+"
RATE = r"[1-9][0-9]{0,8}/(?:second|minute|hour|day)"  # no spaces, at least 1

# Whitespace to either engine (Python also counts \x1c-\x1f and \x85; ECMA also \ufeff).
WS = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_H = r"[0-9a-fA-F]{1,4}"
_V6 = "|".join(
    [
        rf"(?:{_H}:){{7}}{_H}",
        rf"(?:{_H}:){{1,7}}:",
        rf"(?:{_H}:){{1,6}}:{_H}",
        rf"(?:{_H}:){{1,5}}(?::{_H}){{1,2}}",
        rf"(?:{_H}:){{1,4}}(?::{_H}){{1,3}}",
        rf"(?:{_H}:){{1,3}}(?::{_H}){{1,4}}",
        rf"(?:{_H}:){{1,2}}(?::{_H}){{1,5}}",
        rf"{_H}:(?::{_H}){{1,6}}",
        rf":(?:(?::{_H}){{1,7}}|:)",
    ]
)
# An IPv4 or IPv6 address, optionally /prefix: dotted quads without leading zeros; no zone.
ALLOWED_IP = (
    rf"{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?"
    rf"|(?:{_V6})(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?"
)
# "/path/glob" or "METHOD /path/glob": * within a segment, ** a whole segment.
_SEG = rf"(?:\*\*|\*(?:[^/*{WS}]+\*)*[^/*{WS}]*|[^/*{WS}]+(?:\*[^/*{WS}]+)*\*?)"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_METHOD = "|".join("".join(f"[{c}{c.lower()}]" for c in m) for m in _METHODS)  # any case
ALLOWED_ENDPOINT = rf"(?:(?:{_METHOD}) )?/(?:{_SEG}(?:/{_SEG})*/?)?"
_LABEL = r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}"
# An http(s) URL pattern (* any rest; no line break, no space at either end), or a host
# or *.host, with an optional port.
ALLOWED_REFERRER = (
    rf"[hH][tT][tT][pP][sS]?://(?:[^{WS}](?:[^\n\r\u2028\u2029]*[^{WS}])?)?"
    rf"|(?:\*\.)?{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?"
)


def anchored(pattern: str) -> str:
    """``pattern`` as the OpenAPI document gives it: matching the whole value."""
    return f"^(?:{pattern})$"


def full(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, for ``fullmatch``."""
    return re.compile(pattern)

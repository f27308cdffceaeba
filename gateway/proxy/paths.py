"""Path normalisation (SPEC §6): decode once, resolve dot-segments, collapse slashes.

The result is the one canonical, re-encoded form of the path: routes and
``allowed_endpoints`` are matched against it and the upstream receives it, so
the gateway and the upstream can never disagree about which resource is asked
for.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

# Characters a path segment may hold unencoded (RFC 3986 pchar, less '%').
_SAFE = "!$&'()*+,;=:@-._~"
_CANONICAL = re.compile(r"^(?:/[A-Za-z0-9!$&'()*+,;=:@\-_~][A-Za-z0-9!$&'()*+,;=:@\-._~]*)*/?$")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class PathError(ValueError):
    """The path cannot be normalised safely."""


def normalise_path(raw: str) -> str:
    """The canonical form of ``raw`` (the path part of the request target, no query)."""
    if _CANONICAL.match(raw) and "//" not in raw:
        # Already canonical: no escapes, no dot segments, no empty segments.
        return raw
    if not raw.startswith("/"):
        raise PathError("the path must start with /")
    if "\\" in raw:
        raise PathError("the path holds a backslash")
    if _PERCENT.search(raw):
        raise PathError("the path holds a malformed percent-escape")
    out: list[bytes] = []
    trailing = False
    for segment in raw.split("/")[1:]:
        trailing = True  # an empty, '.' or '..' last segment leaves a directory path
        if not segment:
            continue
        decoded = unquote_to_bytes(segment)
        if b"/" in decoded:
            raise PathError("the path holds an encoded slash")
        if b"\\" in decoded:
            raise PathError("the path holds a backslash")
        if b"\x00" in decoded:
            raise PathError("the path holds a NUL byte")
        if decoded == b".":
            continue
        if decoded == b"..":
            if not out:
                raise PathError("the path escapes the root")
            out.pop()
            continue
        if decoded.split(b";", 1)[0] in (b".", b".."):
            raise PathError("the path holds a dot-segment with parameters")
        out.append(decoded)
        trailing = False
    if not out:
        return "/"
    path = "/" + "/".join(quote(seg, safe=_SAFE) for seg in out)
    return path + "/" if trailing else path


def split_target(target: str) -> tuple[str, str]:
    """Split a raw request target into (path, query) with the query's '?' dropped."""
    path, _, query = target.partition("?")
    return path, query


def match_prefix(path: str, prefix: str) -> bool:
    """Whether ``prefix`` matches ``path`` on a segment boundary."""
    if prefix == "/":
        return True
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")

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
_ENCODED_SEMICOLON = re.compile(r"%3[Bb]")


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
        # An encoded ';' stays encoded: backends that cut ';...' parameters off a
        # segment do so before decoding, and so must the gateway's reading of it.
        pieces = [unquote_to_bytes(p) for p in _ENCODED_SEMICOLON.split(segment)]
        decoded = b";".join(pieces)
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
        if pieces[0].split(b";", 1)[0] in (b".", b".."):
            raise PathError("the path holds a dot-segment with parameters")
        out.append("%3B".join(quote(p, safe=_SAFE) for p in pieces))
        trailing = False
    if not out:
        return "/"
    path = "/" + "/".join(out)
    return path + "/" if trailing else path


def match_form(path: str) -> str:
    """``path`` with each segment's ``;...`` parameters cut off, as Tomcat, Jetty and
    Spring read it: what routes and restrictions are matched on (SPEC §6).

    A segment that is nothing but parameters (``/;x/admin``) leaves no empty
    segment behind: Spring reads that path as ``/admin``, so the gateway must
    judge it as ``/admin`` too, not as ``//admin``, which no route's prefix
    matches and a catch-all route would take.
    """
    if ";" not in path:
        return path
    segments = [segment.split(";", 1)[0] for segment in path.split("/")[1:]]
    kept = [segment for segment in segments if segment]
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if not segments[-1] else "")


def without_segments(path: str, count: int) -> str:
    """``path`` less its first ``count`` segments as :func:`match_form` counts them
    (a parameter-only segment before them is not counted, and goes with them)."""
    segments = path.split("/")[1:]
    taken = 0
    while taken < count and segments:
        if segments.pop(0).split(";", 1)[0]:
            taken += 1
    return "/" + "/".join(segments)


def split_target(target: str) -> tuple[str, str]:
    """Split a raw request target into (path, query) with the query's '?' dropped."""
    path, _, query = target.partition("?")
    return path, query


def match_prefix(path: str, prefix: str) -> bool:
    """Whether ``prefix`` matches ``path`` on a segment boundary."""
    if prefix == "/":
        return True
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")

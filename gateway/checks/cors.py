"""Browsers (SPEC §12): CORS preflights answered by the gateway, CORS headers on every answer.

A :class:`CorsPolicy` is compiled once from a route's (or the management
API's) ``cors`` block: origin sets and patterns, the header values it sends.
Per request the gateway asks three things: is this a preflight
(:func:`is_preflight`), may this origin call (:meth:`CorsPolicy.allows_origin`),
and what to add (:meth:`CorsPolicy.preflight` / :meth:`CorsPolicy.headers_for`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..denials import Denial
from ..proxy.headers import varies_on

# Always exposed to a page's script: the gateway's own headers.
GATEWAY_EXPOSED = (
    "X-Request-Id",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Credits-Remaining",
)
DEFAULT_ALLOW_HEADERS = ("Authorization", "Content-Type")
DEFAULT_MAX_AGE = 600.0
CORS_NOT_ALLOWED = Denial("cors_not_allowed")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin_pattern(pattern: str) -> str:
    """Validate one ``allow_origins`` entry: ``*``, ``null``, ``scheme://host[:port]`` or
    ``scheme://*.domain[:port]``; the canonical form, or ValueError naming what is wrong."""
    if pattern in ("*", "null"):
        return pattern
    parts = urlsplit(pattern)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{pattern!r} is not an origin (scheme://host[:port]), '*' or 'null'")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{pattern!r}: an origin has no path, query, fragment or user")
    host = parts.netloc.lower()
    if "*" in host and not host.startswith("*.") or host.count("*") > 1:
        raise ValueError(f"{pattern!r}: '*' may only stand for subdomains, as https://*.domain")
    return _canonical(parts.scheme.lower(), host)


def _canonical(scheme: str, netloc: str) -> str:
    """``scheme://host[:port]`` with the scheme's default port left out."""
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit() and int(port) == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{netloc}"


def is_preflight(method: str, headers) -> bool:
    return (
        method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers
    )


# Allow-Methods of a route that takes any method (a preflight's other method is added)
_LISTED_FOR_ANY = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # an RFC 9110 method token


class CorsPolicy:
    """One compiled ``cors`` block, for a route whose methods are ``methods`` (None: any)."""

    __slots__ = (
        "any_origin",
        "credentials",
        "_exact",
        "_suffixes",
        "_allow_headers",
        "_allow_headers_text",
        "_expose_text",
        "_max_age",
        "_methods",
        "_methods_text",
    )

    def __init__(
        self,
        *,
        allow_origins: Iterable[str],
        allow_headers: Iterable[str] = DEFAULT_ALLOW_HEADERS,
        expose_headers: Iterable[str] = (),
        max_age: float = DEFAULT_MAX_AGE,
        allow_credentials: bool = False,
        methods: Iterable[str] | None = None,
    ):
        origins = [parse_origin_pattern(o) for o in allow_origins]
        self.any_origin = "*" in origins
        self.credentials = allow_credentials
        self._exact = frozenset(o for o in origins if "*" not in o)
        # https://*.example.com: (scheme, ".example.com", port part)
        self._suffixes = tuple(
            (o.split("://", 1)[0], o.split("://", 1)[1][1:]) for o in origins if "://*." in o
        )
        allow = list(dict.fromkeys(allow_headers))
        self._allow_headers = frozenset(h.lower() for h in allow)
        self._allow_headers_text = ", ".join(allow)
        exposed = list(dict.fromkeys([*GATEWAY_EXPOSED, *expose_headers]))
        self._expose_text = ", ".join(exposed)
        self._max_age = str(int(max_age))
        self._methods = frozenset(methods) if methods is not None else None
        listed = sorted(self._methods) if self._methods is not None else list(_LISTED_FOR_ANY)
        self._methods_text = ", ".join(listed)

    def allows_origin(self, origin: str) -> bool:
        """Scheme, host and port exactly; ``*.domain`` any subdomain depth, never the apex."""
        if self.any_origin and origin != "null":
            return True
        if origin in self._exact:
            return True
        if origin == "null" or not self._suffixes:
            return False
        scheme, sep, rest = origin.partition("://")
        if not sep:
            return False
        canonical = _canonical(scheme.lower(), rest.lower())
        scheme, _, rest = canonical.partition("://")
        if canonical in self._exact:
            return True
        for pattern_scheme, suffix in self._suffixes:
            if scheme == pattern_scheme and rest.endswith(suffix) and len(rest) > len(suffix):
                return True
        return False

    def _origin_value(self, origin: str) -> str:
        return "*" if self.any_origin and not self.credentials else origin

    def preflight(self, origin: str, method: str, requested: str) -> dict[str, str] | Denial:
        """The 204's headers for an allowed preflight, else the denial (no CORS headers)."""
        if not self.allows_origin(origin):
            return CORS_NOT_ALLOWED
        method = method.strip().upper()
        if self._methods is not None and method not in self._methods:
            return CORS_NOT_ALLOWED
        names = [n.strip().lower() for n in requested.split(",") if n.strip()]
        if any(name not in self._allow_headers for name in names):
            return CORS_NOT_ALLOWED
        methods = self._methods_text
        if self._methods is None and method not in _LISTED_FOR_ANY and _TOKEN.fullmatch(method):
            methods += ", " + method  # a route taking any method takes this one: say so
        headers = {
            "Access-Control-Allow-Origin": self._origin_value(origin),
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": self._allow_headers_text,
            "Access-Control-Max-Age": self._max_age,
            "Vary": "Origin",
        }
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def headers_for(self, origin: str | None) -> dict[str, str] | None:
        """What every answer to ``origin`` carries, or None for an origin not listed."""
        if not origin or not self.allows_origin(origin):
            return None
        headers = {
            "Access-Control-Allow-Origin": self._origin_value(origin),
            "Access-Control-Expose-Headers": self._expose_text,
            "Vary": "Origin",
        }
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers


def apply_cors_headers(headers, cors: dict[str, str]) -> None:
    """Put ``cors`` (from :meth:`CorsPolicy.headers_for`) on an answer's ``headers``: the
    ``Access-Control-*`` set, ``Origin`` added to a ``Vary`` the answer may already have
    (the upstream's ``Vary: Accept-Encoding`` must stay, or a cache mixes encodings)."""
    for name, value in cors.items():
        if name != "Vary":
            headers[name] = value
            continue
        if not varies_on(headers.items(), value):
            headers.add("Vary", value)

"""``allowed_referrers`` (SPEC §3): URL patterns with a scheme, or host patterns."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*(:\d{1,5})?$")


@dataclass(frozen=True, slots=True)
class ReferrerRule:
    url: re.Pattern[str] | None = None  # whole-URL pattern (scheme given)
    host: str | None = None  # exact host
    suffix: str | None = None  # '*.example.com' -> '.example.com'


def compile_referrer(pattern: str) -> ReferrerRule:
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError("a referrer pattern cannot be empty")
    pattern = pattern.strip()
    if "://" in pattern:
        scheme = pattern.split("://", 1)[0]
        if scheme.lower() not in ("http", "https"):
            raise ValueError(f"{pattern!r}: only http:// and https:// referrers can be matched")
        parts = [re.escape(p) for p in pattern.split("*")]
        return ReferrerRule(url=re.compile(".*".join(parts), re.ASCII))
    host = pattern.lower()
    if not _HOST.match(host):
        raise ValueError(
            f"{pattern!r} is not a referrer pattern (use https://host/path*, host or *.host)"
        )
    if host.startswith("*."):
        return ReferrerRule(suffix=host[1:])
    return ReferrerRule(host=host)


def compile_allowed_referrers(values: Iterable[str]) -> tuple[ReferrerRule, ...]:
    return tuple(compile_referrer(v) for v in values)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_of(url: str) -> tuple[str, str] | None:
    """The URL's host, and its ``host:port`` (the scheme's default port when none is written)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not host:
        return None
    return host, f"{host}:{port}" if port else host


def referrer_allowed(referer: str | None, rules: tuple[ReferrerRule, ...]) -> bool:
    """Whether ``referer`` matches a rule. A host pattern with a port
    (``example.com:8443``) matches that port only; one without, any port."""
    if not rules:
        return True
    if not referer:
        return False
    found: tuple[str, str] | None = None
    host_read = False
    for rule in rules:
        if rule.url is not None:
            if rule.url.fullmatch(referer):
                return True
            continue
        if not host_read:
            found, host_read = _host_of(referer), True
        if found is None:
            continue
        target = rule.host if rule.host is not None else rule.suffix
        assert target is not None
        host = found[1] if ":" in target else found[0]
        if rule.host is not None and host == rule.host:
            return True
        if rule.suffix is not None and host.endswith(rule.suffix) and len(host) > len(rule.suffix):
            return True
    return False


def referrer_warnings(patterns: Iterable[str]) -> list[str]:
    """What a key's ``allowed_referrers`` will not do for browsers: a pattern with a path.

    Browsers send only the page's origin as ``Referer`` on a cross-origin request
    (the default ``strict-origin-when-cross-origin`` policy), so such a pattern
    matches same-origin pages only.
    """
    warnings = []
    for index, pattern in enumerate(patterns):
        if "://" not in pattern:
            continue
        try:
            path = urlsplit(pattern.replace("*", "x")).path
        except ValueError:  # not a URL urllib can split ("https://[x"): it matches nothing
            continue
        if path not in ("", "/", "/x"):
            warnings.append(
                f"allowed_referrers[{index}]: {pattern!r} has a path; browsers send only the "
                "origin as Referer on cross-origin requests, so it matches same-origin pages "
                "only (use a host pattern such as 'app.example.com')"
            )
    return warnings

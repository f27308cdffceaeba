"""``allowed_endpoints`` (SPEC §3): ``/path/glob`` or ``METHOD /path/glob``.

``*`` matches one path segment (or, inside a segment, any run of characters
within it); ``**`` matches one or more segments. Matched case-sensitively
against the normalised path, never across a segment boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..methods import HTTP_METHODS


@dataclass(frozen=True, slots=True)
class EndpointRule:
    method: str | None
    pattern: re.Pattern[str]
    source: str


def compile_endpoint(spec: str) -> EndpointRule:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("an endpoint pattern cannot be empty")
    text = spec.strip()
    method = None
    if " " in text:
        method, text = text.split(None, 1)
        method = method.upper()
        if method not in HTTP_METHODS:
            raise ValueError(f"{spec!r}: {method} is not an HTTP method")
        text = text.strip()
    if not text.startswith("/"):
        raise ValueError(f"{spec!r}: the path must start with /")
    if len(text) > 1:
        text = text.rstrip("/")
    parts = []
    for segment in text.split("/")[1:]:
        if segment == "**":
            parts.append("/[^/]+(?:/[^/]+)*")
        elif segment == "*":
            parts.append("/[^/]+")
        elif segment == "":
            if text != "/":
                raise ValueError(f"{spec!r}: empty path segment")
            parts.append("/")
        else:
            if "**" in segment:
                raise ValueError(f"{spec!r}: ** must be a whole segment")
            parts.append("/" + "[^/]*".join(re.escape(p) for p in segment.split("*")))
    regex = "".join(parts)
    return EndpointRule(method=method, pattern=re.compile(regex), source=spec)


def compile_allowed_endpoints(values: Iterable[str]) -> tuple[EndpointRule, ...]:
    return tuple(compile_endpoint(v) for v in values)


def endpoint_allowed(method: str, path: str, rules: tuple[EndpointRule, ...]) -> bool:
    if not rules:
        return True
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    for rule in rules:
        if rule.method is not None and rule.method != method:
            continue
        if rule.pattern.fullmatch(path):
            return True
    return False

"""Durations (``500ms``, ``30s``, ``5m``, ``24h``, ``90d``), rates (``100/minute``), rate
limits (one rate or a list of windows: ``[10/second, 1000/hour]``) and quotas
(``100000/month``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


def parse_duration(value: object) -> float:
    """Seconds in a duration string; raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 5m, 24h or 90d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 500ms, 30s, 5m, 24h or 90d")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (use 500ms, 30s, 5m, 24h or 90d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(round(seconds * 1000))}ms"


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` requests per ``window`` seconds."""

    limit: int
    window: int
    unit: str

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


def parse_rate(value: object) -> Rate:
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a rate such as 100/minute")
    match = _RATE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a rate (use N/second, N/minute, N/hour or N/day)")
    limit = int(match.group(1))
    if limit <= 0:
        raise ValueError("a rate limit must allow at least 1 request")
    unit = match.group(2)
    return Rate(limit=limit, window=WINDOWS[unit], unit=unit)


MAX_WINDOWS = 5  # a rate limit has at most this many windows

RateLimit = tuple[Rate, ...]  # every window applies; shortest window first


def parse_rate_limit(value: object) -> RateLimit:
    """One rate or a list of 1 to 5 with distinct windows, as a tuple shortest window first.

    Raises ValueError saying what is accepted; callers add the field's name.
    """
    if isinstance(value, str | Rate):
        return (parse_rate(value),)
    if not isinstance(value, list | tuple):
        raise ValueError(
            "expected a rate such as 100/minute or a list such as [10/second, 1000/hour]"
        )
    if not 1 <= len(value) <= MAX_WINDOWS:
        raise ValueError(f"a list of rates has 1 to {MAX_WINDOWS} windows, not {len(value)}")
    rates = [parse_rate(item) for item in value]
    seen: set[int] = set()
    for rate in rates:
        if rate.window in seen:
            raise ValueError(f"two rates per {rate.unit}: give each window once")
        seen.add(rate.window)
    return tuple(sorted(rates, key=lambda rate: rate.window))


def rate_limit_value(rates: RateLimit) -> str | list[str]:
    """How a rate limit is written back: a string for one window, a list for several."""
    if len(rates) == 1:
        return str(rates[0])
    return [str(rate) for rate in rates]


INTERVALS = ("day", "month")  # calendar periods in UTC, for quotas and refills


@dataclass(frozen=True, slots=True)
class Quota:
    """A plan's quota: ``limit`` calls per calendar ``unit`` (UTC), per account and mode."""

    limit: int
    unit: str  # "day" or "month"

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


def parse_per_period(value: object, what: str) -> tuple[int, str]:
    """``"1000/month"`` as ``(1000, "month")``; ValueError naming ``what`` otherwise."""
    if isinstance(value, str):
        amount, _, unit = value.strip().partition("/")
        amount, unit = amount.strip(), unit.strip()
        if amount.isdigit() and unit in INTERVALS:
            return int(amount), unit
    raise ValueError(f"{what} must be N/day or N/month (e.g. 1000/month), not {value!r}")


def parse_quota(value: object) -> Quota:
    limit, unit = parse_per_period(value, "quota")
    if limit < 1:
        raise ValueError("a quota must allow at least 1 call")
    return Quota(limit, unit)

"""Daily request counts for ``GET {prefix}/api-keys/{id}/usage`` (SPEC §7).

The endpoint reads counts through :func:`usage_days` only. Whatever counts
requests plugs in by putting an object in ``runtime.extras["usage"]`` that has
this method::

    async def days(self, key_record: KeyRecord, days: int = 30) -> list[dict]:
        '''The key's counts for the last ``days`` UTC days, newest first:
        [{"date": "2026-11-22", "allowed": 12, "denied": 1, "rate_limited": 0}, ...]

        ``denied`` counts requests refused after the key was identified (403s),
        ``rate_limited`` counts 429s (and not also as denied). Counts may lag
        by up to 10 seconds. Live and test keys are separate keys, so their
        counts never mix.'''

(a plain method returning the list works too). Days it leaves out are
answered with zeros, so the answer always holds exactly ``days`` entries, one
per UTC date, today first. With no such object every count is zero.
"""

from __future__ import annotations

import inspect
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from ..keys.model import KeyRecord, utcnow

if TYPE_CHECKING:
    from ..runtime import Runtime

USAGE_DAYS = 30
OUTCOMES = ("allowed", "denied", "rate_limited")


def last_days(days: int, today: date | None = None) -> list[str]:
    """The ISO dates of the last ``days`` UTC days, today first."""
    today = today or utcnow().date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days)]


async def usage_days(
    runtime: Runtime, record: KeyRecord, days: int = USAGE_DAYS
) -> list[dict[str, Any]]:
    """``days`` entries ``{"date", "allowed", "denied", "rate_limited"}``, newest first."""
    counted: dict[str, dict[str, Any]] = {}
    source = runtime.extras.get("usage")
    reader = getattr(source, "days", None)
    if reader is not None:
        result = reader(record, days=days)
        if inspect.isawaitable(result):
            result = await result
        for entry in result or ():
            counted[str(entry.get("date"))] = entry
    out = []
    for day in last_days(days):
        entry = counted.get(day, {})
        out.append({"date": day, **{k: int(entry.get(k) or 0) for k in OUTCOMES}})
    return out

"""Daily request counts for ``GET {prefix}/api-keys/{id}/usage`` (SPEC §7).

The counts come from the runtime's :class:`~gateway.usage.UsageRecorder`
(``days(record, days=30)``: the key's counts for the last ``days`` UTC days,
newest first; ``denied`` counts requests refused after the key was
identified (403s), ``rate_limited`` counts 429s and not also as denied; they
may lag by up to 10 seconds). Days it leaves out are answered with zeros, so
the answer always holds exactly ``days`` entries, one per UTC date, today
first.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from ..keys.model import KeyRecord
from ..timefmt import utcnow

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
    for entry in await runtime.usage.days(record, days=days):
        counted[str(entry.get("date"))] = entry
    out = []
    for day in last_days(days):
        entry = counted.get(day, {})
        out.append({"date": day, **{k: int(entry.get(k) or 0) for k in OUTCOMES}})
    return out

"""Reading a key's usage: daily counts by outcome, newest day first (SPEC §7).

Layout, under ``redis.key_prefix`` (``P``):

- ``P usage:{key id}:{YYYY-MM-DD}``  hash per key and UTC day: ``allowed``,
  ``denied``, ``rate_limited``, and ``denied:<code>`` per refusal code; it
  expires 90 days after its day ends
- ``P last_used``                     key id -> last use (ISO 8601), shared with the key store
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from ..store.connection import STORE_ERRORS, StoreUnavailable

OUTCOMES = ("allowed", "denied", "rate_limited")
RETENTION_DAYS = 90


def day_of(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def usage_key(prefix: str, key_id: str, day: str) -> str:
    return f"{prefix}usage:{{{key_id}}}:{day}"


class UsageReader:
    def __init__(
        self, client: aioredis.Redis, prefix: str, *, clock: Callable[[], float] = time.time
    ):
        self.client = client
        self.prefix = prefix
        self.clock = clock

    async def days(
        self, record: Any, days: int = 30, *, by_code: bool = False
    ) -> list[dict[str, Any]]:
        """The last ``days`` UTC days for the key ``record`` (or key id), newest first.

        Each day is ``{"date", "allowed", "denied", "rate_limited"}``, zeros for
        days without requests; ``by_code`` adds ``denied_by_code``.
        """
        key_id = record if isinstance(record, str) else record.id
        days = max(1, min(int(days), RETENTION_DAYS))
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        dates = [(today - timedelta(days=n)).isoformat() for n in range(days)]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for date in dates:
                    pipe.hgetall(usage_key(self.prefix, key_id, date))
                rows = await pipe.execute()
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        out = []
        for date, row in zip(dates, rows, strict=True):
            day: dict[str, Any] = {"date": date}
            for outcome in OUTCOMES:
                day[outcome] = int(row.get(outcome, 0))
            if by_code:
                day["denied_by_code"] = {
                    name.partition(":")[2]: int(value)
                    for name, value in sorted(row.items())
                    if name.startswith("denied:")
                }
            out.append(day)
        return out

    async def last_used(self, key_id: str) -> str | None:
        try:
            return await self.client.hget(self.prefix + "last_used", key_id)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

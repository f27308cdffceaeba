"""Counting every identified key's requests without a store call on the request path.

:meth:`UsageRecorder.record` only adds to in-process counters; a background
task writes them every ``interval`` (1 s) in one pipelined round trip: the
daily counters by outcome (``HINCRBY``, kept 90 days after their day) and
each key's last use (only ever moved forward, so replicas flushing out of
order never move it back). A failed write keeps the counts for the next try;
:meth:`stop` (the app's cleanup) writes what is left, so a clean stop loses
nothing.

Outcomes (SPEC §7): ``allowed``; ``denied`` for the 403 refusals made after
the key was identified (also counted per code, as ``denied:<code>``);
``rate_limited`` for 429s (the rate limit, and a plan's quota or a key's
credits spent). Revoked and expired keys (401) are not counted
and do not move ``last_used_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from ..denials import FAULTS
from ..store.connection import STORE_ERRORS
from ..timefmt import isoformat
from .reader import RETENTION_DAYS, UsageReader, usage_key

log = logging.getLogger("gateway.usage")

LAST_USED_SCRIPT = """
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (not current) or current < ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return #ARGV / 2
"""

DAY = 86400
ALLOWED = ("allowed",)
RATE_LIMITED = ("rate_limited",)


def _fields_for(code: str | None) -> tuple[str, ...] | None:
    if code is None:
        return ALLOWED
    fault = FAULTS.get(code)
    if fault is not None and fault.status == 429:  # rate limit, quota or credits (SPEC §16)
        return RATE_LIMITED
    if fault is not None and fault.status == 403:
        return ("denied", "denied:" + code)
    return None


class UsageRecorder:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self.reader = UsageReader(client, prefix, clock=clock)
        self._counts: dict[tuple[str, str, str], int] = {}  # (day, key id, field) -> n
        self._last_used: dict[str, float] = {}
        self._fields: dict[str | None, tuple[str, ...] | None] = {}
        self._day = ""
        self._day_end = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._failing = False
        self.flushes = 0

    # -- the request path -------------------------------------------------------

    def record(self, key: Any, route: str, code: str | None) -> None:
        """Count one request of an identified key (``code`` None when allowed)."""
        try:
            fields = self._fields[code]
        except KeyError:
            fields = self._fields[code] = _fields_for(code)
        if fields is None:
            return
        now = self.clock()
        if now >= self._day_end:
            start = now - now % DAY
            self._day = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
            self._day_end = start + DAY
        key_id = key.record.id
        counts = self._counts
        for field in fields:
            slot = (self._day, key_id, field)
            counts[slot] = counts.get(slot, 0) + 1
        self._last_used[key_id] = now

    @property
    def pending(self) -> int:
        """Requests counted here and not yet written."""
        return sum(n for (_, _, field), n in self._counts.items() if ":" not in field)

    # -- writing ----------------------------------------------------------------

    async def flush(self) -> bool:
        """Write what was counted since the last flush; False (and keep it) if the store fails."""
        counts, self._counts = self._counts, {}
        used, self._last_used = self._last_used, {}
        if not counts and not used:
            return True
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                expiries: dict[str, str] = {}
                for (day, key_id, field), n in counts.items():
                    name = usage_key(self.prefix, key_id, day)
                    pipe.hincrby(name, field, n)
                    expiries[name] = day
                for name, day in expiries.items():
                    ends = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() + DAY
                    pipe.expireat(name, int(ends) + RETENTION_DAYS * DAY)
                if used:
                    args: list[str] = []
                    for key_id, moment in used.items():
                        args.append(key_id)
                        args.append(isoformat(datetime.fromtimestamp(moment, UTC)) or "")
                    pipe.eval(LAST_USED_SCRIPT, 1, self.prefix + "last_used", *args)
                await pipe.execute()
        except (*STORE_ERRORS, asyncio.CancelledError) as exc:
            self._merge(counts, used)
            if isinstance(exc, asyncio.CancelledError):
                raise
            if not self._failing:
                log.warning("usage counts not written (%s); kept for the next try", exc)
                self._failing = True
            return False
        if self._failing:
            log.warning("usage counts written again")
            self._failing = False
        self.flushes += 1
        return True

    def _merge(self, counts: dict[tuple[str, str, str], int], used: dict[str, float]) -> None:
        for slot, n in counts.items():
            self._counts[slot] = self._counts.get(slot, 0) + n
        for key_id, moment in used.items():
            if moment > self._last_used.get(key_id, 0.0):
                self._last_used[key_id] = moment

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flush")

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            await self.flush()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the background writes and write what is left."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout)
            self._task = None
        if not await self.flush():
            log.error("usage counts lost at shutdown: %d request(s) not written", self.pending)

    # -- reading ----------------------------------------------------------------

    async def days(self, record: Any, days: int = 30, **options: Any) -> list[dict[str, Any]]:
        return await self.reader.days(record, days, **options)

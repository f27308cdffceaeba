"""Where budgets live: the interface every limit store implements, and its in-memory form.

The algorithm is a sliding log of grants. A store hands out *grants*: up to
``want`` units of one counter's budget at once. Each grant is logged with a
stamp (the time it was made plus ``hold_ms``, the longest the caller may
keep spending it) and leaves the window ``window_ms`` after its stamp. A
grant is made only when the units logged in the window plus the grant stay
within ``limit``, so however many processes draw from one store, the units
spent in any window of ``window_ms`` never exceed ``limit``: there is no
fixed-window edge where twice the limit could pass. Several counters (the
windows of one request's limits) are taken together, all or none, and every
one of them is granted the same number of units: the fewest any of them
wants or has left.

:class:`MemoryLimitStore` is the in-process implementation (one worker's
own budget: tests, and the ``local`` fallback while Redis is down);
:class:`gateway.ratelimit.redis_store.RedisLimitStore` runs the same
algorithm in one Lua script, shared by every replica.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Take:
    """Ask for up to ``want`` units of counter ``key`` (``limit`` per ``window_ms``).

    ``refund`` units of the earlier grant ``grant_id`` went unspent: they are
    given back first (a grant that already left the window is left alone). A
    ``want`` of 0 only gives units back.
    """

    key: str
    limit: int
    window_ms: int
    want: int
    hold_ms: int = 0
    grant_id: str = ""
    refund: int = 0


@dataclass(frozen=True, slots=True)
class Grant:
    """The store's answer for one counter.

    ``granted`` units (0 when refused); ``remaining``: units left in the
    window after this grant; ``reset_ms``: until the oldest logged unit
    leaves the window; ``retry_ms``: when refused because of this counter,
    until one unit is free again (else 0); ``grant_id``: names the grant for
    a later refund.
    """

    granted: int
    remaining: int
    reset_ms: int
    retry_ms: int = 0
    grant_id: str = ""


class LimitStore(Protocol):
    async def take(self, takes: Sequence[Take], now_ms: int | None = None) -> list[Grant]:
        """Grant all of ``takes`` or none; ``now_ms`` None means the store's own clock."""
        ...


class _Log:
    __slots__ = ("stamps", "counts", "ids", "total", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.stamps: list[int] = []
        self.counts: list[int] = []
        self.ids: list[str] = []
        self.total = 0
        self.window_ms = window_ms

    def evict(self, cutoff: int) -> None:
        """Drop grants stamped at or before ``cutoff``."""
        n = bisect.bisect_right(self.stamps, cutoff)
        if n:
            self.total -= sum(self.counts[:n])
            del self.stamps[:n]
            del self.counts[:n]
            del self.ids[:n]

    def add(self, stamp: int, count: int, grant_id: str) -> None:
        at = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(at, stamp)
        self.counts.insert(at, count)
        self.ids.insert(at, grant_id)
        self.total += count

    def refund(self, grant_id: str, units: int) -> None:
        try:
            at = self.ids.index(grant_id)
        except ValueError:
            return  # already out of the window
        units = min(units, self.counts[at])
        self.counts[at] -= units
        self.total -= units
        self.ids[at] = ""  # a grant is given back once

    def retry_ms(self, limit: int, window_ms: int, now: int) -> int:
        need = self.total + 1 - limit
        if need <= 0:
            return 0
        acc = 0
        for stamp, count in zip(self.stamps, self.counts, strict=True):
            acc += count
            if acc >= need:
                return max(stamp + window_ms - now, 1)
        return window_ms

    def reset_ms(self, window_ms: int, now: int) -> int:
        return max(self.stamps[0] + window_ms - now, 0) if self.stamps else 0


class MemoryLimitStore:
    """The sliding log of grants in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._logs)

    async def take(self, takes: Sequence[Take], now_ms: int | None = None) -> list[Grant]:
        return self.take_now(takes, now_ms)

    def take_now(self, takes: Sequence[Take], now_ms: int | None = None) -> list[Grant]:
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        logs = []
        allowed = True
        for take in takes:
            log = self._logs.get(take.key)
            if log is None:
                log = self._logs[take.key] = _Log(take.window_ms)
            log.window_ms = take.window_ms
            log.evict(now - take.window_ms)
            if take.refund > 0 and take.grant_id:
                log.refund(take.grant_id, take.refund)
            logs.append(log)
            if take.limit - log.total < 1:
                allowed = False
        granted = 0
        if allowed:
            granted = min(
                min(t.want, t.limit - log.total) for t, log in zip(takes, logs, strict=True)
            )
        grants = []
        for take, log in zip(takes, logs, strict=True):
            if allowed:
                grant_id = ""
                if granted > 0:  # (a take of 0 only gives units back: nothing to log)
                    grant_id = str(next(self._ids))
                    log.add(now + take.hold_ms, granted, grant_id)
                reset = log.reset_ms(take.window_ms, now)
                grants.append(Grant(granted, take.limit - log.total, reset, 0, grant_id))
            else:
                grants.append(
                    Grant(
                        0,
                        max(take.limit - log.total, 0),
                        log.reset_ms(take.window_ms, now),
                        log.retry_ms(take.limit, take.window_ms, now),
                    )
                )
            if not log.stamps:
                del self._logs[take.key]
        return grants

    def prune(self, now_ms: int | None = None) -> None:
        """Forget counters whose every grant has left its window."""
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        idle = [k for k, log in self._logs.items() if log.stamps[-1] <= now - log.window_ms]
        for key in idle:
            del self._logs[key]

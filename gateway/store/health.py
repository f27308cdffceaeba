"""The key store's state, watched all the time (SPEC §8, §17).

A task pings the store every second (through the request client, so a store
already known to be down costs nothing while it fails fast), and a request
whose store call failed marks it down at once (``known_up``: the client's
:class:`~gateway.store.connection.StoreHealth`). ``/readyz`` and
``gateway_store_up`` read the result; neither waits for a probe of its own.

Readiness during an outage: every replica shares the store, so pulling them
all out of the Service for a Redis blip would turn a partial outage (cached
keys keep working for ``keys.stale_if_error``) into a total one. A replica
stays ready while its outage is younger than ``stale_if_error``, counted
from the last time the store answered; a replica that never reached the
store has nothing cached and is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.health")

INTERVAL = 1.0  # seconds between pings
PING_TIMEOUT = 1.0


class StoreMonitor:
    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        interval: float = INTERVAL,
        timeout: float = PING_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        known_up: Callable[[], bool] | None = None,
    ):
        self._ping = ping
        self._known_up = known_up
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._answered = False  # the last ping's outcome
        self.last_up: float | None = None  # when the store last answered
        self.down_since: float | None = None  # the first failed ping of this outage
        self._task: asyncio.Task[None] | None = None
        # told when the store stops answering (a hung master, a failover): what rides on a
        # long-lived connection to it (the invalidation subscription) is to be renewed
        self.on_down: Callable[[], None] | None = None

    async def check(self) -> bool:
        """Ping the store once and record the outcome."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._ping()
        except Exception as exc:  # the store's errors, a timeout: it does not answer
            was_up = self._answered
            if self._answered or self.down_since is None:
                self.down_since = self._clock()
                if self.last_up is not None:
                    log.warning("the key store does not answer: %s", exc or "timeout")
            self._answered = False
            if was_up and self.on_down is not None:
                self.on_down()
            return False
        if not self._answered and self.last_up is not None:
            log.info("the key store answers again")
        self._answered = True
        self.last_up = self._clock()
        self.down_since = None
        return True

    @property
    def up(self) -> bool:
        """The store answered the last ping and no request's call has failed since."""
        return self._answered and (self._known_up is None or self._known_up())

    def outage_seconds(self) -> float | None:
        """Seconds since the store last answered, while it does not; None while it does."""
        if self.up:
            return None
        since = self.last_up if self.last_up is not None else self.down_since
        return None if since is None else self._clock() - since

    def serving(self, stale_if_error: float) -> bool:
        """Whether this replica can serve: the store answers, or cached keys still may."""
        if self.up:
            return True
        if self.last_up is None:
            return False  # never reached the store: nothing is cached
        return self._clock() - self.last_up < stale_if_error

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            started = self._clock()
            await self.check()
            await asyncio.sleep(max(0.0, self.interval - (self._clock() - started)))

"""Cache invalidation across replicas: every record change is published on one channel.

Each worker listens and drops the changed key from its cache at once. While
the channel is down, messages are lost: every cached entry is marked stale
(not dropped: it still serves under ``stale_if_error``) and keys are read
from the store at most every :data:`UNHEARD_FRESHNESS` seconds; once
subscribed again, every entry is marked stale once more and the open streams'
keys are read again (``on_resync``), so a change made in the gap reaches them.

A subscription that dies silently (a partition with no reset, a store that
restarted behind a proxy) is found by pinging on the subscription itself:
when no reply of any kind arrives for ``3 * ping_interval`` the listener
reconnects. Reconnection backs off from 0.1 s to at most 2 s, so a store that
comes back is listened to again within about two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from ..store.connection import STORE_ERRORS
from .cache import KeyCache

log = logging.getLogger("gateway.invalidation")

MAX_BACKOFF = 2.0
# While the channel is down a key is read from the store at most this often: a change made
# meanwhile (a revocation on another replica) is seen within it, not after the cache TTL.
UNHEARD_FRESHNESS = 0.5


class SubscriptionLost(ConnectionError):
    """The subscription stopped answering pings."""


class InvalidationListener:
    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        cache: KeyCache,
        *,
        ping_interval: float = 5.0,
        on_change: Callable[[str], None] | None = None,
        on_resync: Callable[[], None] | None = None,
    ):
        self.client = client
        self.channel = channel
        self.cache = cache
        self.on_change = on_change  # told of every changed key's hash (open streams)
        self.on_resync = on_resync  # told when subscribed again: changes may have been missed
        self.ping_interval = ping_interval
        self.connected = asyncio.Event()
        self.subscriptions = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._renew = False  # subscribe anew: the store stopped answering meanwhile

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="invalidation-listener"
        )

    def renew(self) -> None:
        """The store stopped answering (hung, or failing over): the subscription may sit on
        a server that no longer gets the changes; subscribe anew, within a second."""
        self._renew = True

    async def stop(self) -> None:
        """Cancel the listener and wait for it. redis-py's timed read can swallow a
        cancellation (it ends the read as a timeout), so the loop also checks a flag and
        the cancellation is repeated until the task has ended."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._confirmed(pubsub)
                self.cache.trust()
                self.cache.expire_all()
                if self.subscriptions:
                    log.info("invalidation channel subscribed again")
                    if self.on_resync is not None:
                        self.on_resync()
                self.subscriptions += 1
                self.connected.set()
                delay = 0.1
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (*STORE_ERRORS, SubscriptionLost) as exc:
                if self.connected.is_set():
                    log.warning("lost the invalidation channel (%s); reconnecting", exc)
                self.connected.clear()
                self.cache.distrust(UNHEARD_FRESHNESS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _confirmed(self, pubsub: aioredis.client.PubSub) -> None:
        """Wait until Redis has the subscription: only then may the cache be marked stale,
        or a change published in between would be missed until the cache TTL."""
        deadline = time.monotonic() + 5.0
        while True:
            response = await pubsub.parse_response(block=False, timeout=1.0)
            if isinstance(response, list) and response and response[0] == "subscribe":
                return
            if time.monotonic() > deadline:
                raise SubscriptionLost("Redis did not confirm the subscription")

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        last_heard = last_ping = time.monotonic()
        while not self._stopping:
            if self._renew:
                self._renew = False
                raise SubscriptionLost("the store stopped answering; subscribing anew")
            # parse_response, not get_message: a PONG must count as heard, and
            # redis-py's message parsing mangles PONG replies on decoded clients.
            response = await pubsub.parse_response(block=False, timeout=1.0)
            now = time.monotonic()
            if response is not None:
                last_heard = now
                if isinstance(response, list) and len(response) == 3 and response[0] == "message":
                    self.cache.invalidate(response[2])
                    if self.on_change is not None:
                        self.on_change(response[2])
                continue
            if now - last_heard > 3 * self.ping_interval:
                raise SubscriptionLost(f"no answer on the subscription for {now - last_heard:.0f}s")
            if now - last_ping >= self.ping_interval:
                last_ping = now
                await pubsub.ping()

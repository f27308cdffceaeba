"""Cache invalidation across replicas: every record change is published on one channel.

Each worker listens and drops the changed key from its cache at once. After
a reconnection every cached entry is marked stale (not dropped: it still
serves under ``stale_if_error``), because messages sent while disconnected
are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from ..store.connection import STORE_ERRORS
from .cache import KeyCache

log = logging.getLogger("gateway.invalidation")


class InvalidationListener:
    def __init__(self, client: aioredis.Redis, channel: str, cache: KeyCache):
        self.client = client
        self.channel = channel
        self.cache = cache
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="invalidation-listener"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.cache.expire_all()
                self.connected.set()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.cache.invalidate(message["data"])
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:
                if self.connected.is_set():
                    log.warning("lost the invalidation channel (%s); reconnecting", exc)
                self.connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

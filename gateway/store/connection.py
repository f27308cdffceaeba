"""Open the redis-py client the configuration names, mapping its faults to one type."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config.schema import RedisConfig
from .embedded import EmbeddedRedis


class StoreUnavailable(Exception):
    """The key store did not answer."""


STORE_ERRORS = (RedisError, OSError, RedisConnectionError, RedisTimeoutError)


class StoreHandle:
    """A Redis client plus, on the embedded store, the server this process may own."""

    def __init__(self, client: aioredis.Redis, embedded: EmbeddedRedis | None, url: str):
        self.client = client
        self.embedded = embedded
        self.url = url

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded.stop()


def open_store(config: RedisConfig) -> StoreHandle:
    embedded = None
    url = config.url
    if not url:
        embedded = EmbeddedRedis(config.data_dir).start()
        url = embedded.url
    client = aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=1),
        health_check_interval=30,
    )
    return StoreHandle(client, embedded, url)

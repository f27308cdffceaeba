"""Open the redis-py clients the configuration names, mapping their faults to one type.

While the store is unreachable, calls must fail fast rather than each waiting
out ``redis.socket_timeout``: a refused connection fails at once anyway, but a
hung server or a network partition would make every call wait. The request
client therefore shares one :class:`StoreHealth` across its connections:
after a connection error or timeout every command fails at once for a short
hold-down, then a single probe command goes through and its outcome decides.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config.schema import RedisConfig
from .embedded import EmbeddedRedis

log = logging.getLogger("gateway.store")


class StoreUnavailable(Exception):
    """The key store did not answer."""


STORE_ERRORS = (RedisError, OSError, RedisConnectionError, RedisTimeoutError)
_TRANSPORT_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class StoreHealth:
    """Whether the store answered lately; lets callers fail fast while it does not."""

    def __init__(self, *, hold: float = 0.5, probe_timeout: float = 3.0):
        self.hold = hold
        self.probe_timeout = probe_timeout
        self._down_until = 0.0  # 0.0 while the store is up
        self._probe_until = 0.0
        self._prober: object | None = None
        self.failures = 0

    @property
    def up(self) -> bool:
        return self._down_until == 0.0

    def admit(self, connection: object) -> None:
        """Let a command through, or raise at once while the store is marked down."""
        if self._down_until == 0.0:
            return
        now = time.monotonic()
        if self._prober is connection and now < self._probe_until:
            return
        if now < self._down_until or now < self._probe_until:
            raise RedisConnectionError("the key store is unavailable (failing fast)")
        self._prober = connection  # this command is the probe
        self._probe_until = now + self.probe_timeout

    def succeeded(self) -> None:
        if self._down_until != 0.0:
            log.info("the key store answers again")
            self._down_until = 0.0
            self._probe_until = 0.0
            self._prober = None

    def failed(self, exc: BaseException) -> None:
        if self._down_until == 0.0:
            log.warning("the key store does not answer (%s); failing fast until it does", exc)
        self.failures += 1
        self._down_until = time.monotonic() + self.hold
        self._probe_until = 0.0
        self._prober = None


class _FailFast:
    """Mixed into redis-py's connection classes: consult and update a :class:`StoreHealth`."""

    health: StoreHealth

    async def connect(self) -> None:
        self.health.admit(self)
        try:
            await super().connect()  # type: ignore[misc]
        except _TRANSPORT_ERRORS as exc:
            self.health.failed(exc)
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.health.admit(self)
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except _TRANSPORT_ERRORS as exc:
            self.health.failed(exc)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except _TRANSPORT_ERRORS as exc:
            self.health.failed(exc)
            raise
        self.health.succeeded()
        return response


def fail_fast_client(url: str, health: StoreHealth, **kwargs: Any) -> aioredis.Redis:
    """A client on ``url`` whose connections fail fast while ``health`` says the store is down."""
    pool = ConnectionPool.from_url(url, **kwargs)
    base = pool.connection_class
    pool.connection_class = type("FailFast" + base.__name__, (_FailFast, base), {"health": health})
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class StoreHandle:
    """A Redis client plus, on the embedded store, the server this process may own."""

    def __init__(
        self,
        client: aioredis.Redis,
        embedded: EmbeddedRedis | None,
        url: str,
        health: StoreHealth | None = None,
    ):
        self.client = client
        self.embedded = embedded
        self.url = url
        self.health = health

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            self.embedded.stop()


def _keepalive(url: str) -> dict[str, Any]:
    """TCP keep-alive, for TCP URLs only: a unix socket connection refuses the option."""
    return {} if url.startswith("unix:") else {"socket_keepalive": True}


def open_store(config: RedisConfig) -> StoreHandle:
    embedded = None
    url = config.url
    if not url:
        embedded = EmbeddedRedis(config.data_dir).start()
        url = embedded.url
    health = StoreHealth(
        hold=0.5, probe_timeout=config.connect_timeout + config.socket_timeout + 1.0
    )
    client = fail_fast_client(
        url,
        health,
        decode_responses=True,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        **_keepalive(url),
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=1),
        health_check_interval=30,
    )
    return StoreHandle(client, embedded, url, health)


def pubsub_client(url: str, config: RedisConfig) -> aioredis.Redis:
    """A client for the invalidation channel: bounded connects, TCP keep-alive, no retries.

    Reads on a subscription block by design (``get_message`` has its own
    timeout); the listener reconnects itself, so redis-py need not retry.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=config.connect_timeout,
        socket_timeout=max(config.socket_timeout, 5.0),
        **_keepalive(url),
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=0),
    )

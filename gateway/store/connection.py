"""Open the redis-py clients the configuration names, mapping their faults to one type.

While the store is unreachable, calls must fail fast rather than each waiting
out ``redis.socket_timeout``: a refused connection fails at once anyway, but a
hung server or a network partition would make every call wait. The request
client therefore shares one :class:`StoreHealth` across its connections:
after a connection error or timeout every command fails at once for a short
hold-down, then a single probe command goes through and its outcome decides.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..compat.redis import fail_fast
from ..config.schema import RedisConfig, RedisTLSConfig
from .embedded import EmbeddedRedis

log = logging.getLogger("gateway.store")


class StoreUnavailable(Exception):
    """The key store did not answer."""


STORE_ERRORS = (RedisError, OSError, RedisConnectionError, RedisTimeoutError)


class StoreHealth:
    """Whether the store answered lately; lets callers fail fast while it does not.

    The :class:`~gateway.compat.redis.Gate` that :func:`fail_fast` puts in
    front of every command of a client's connections.
    """

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


def fail_fast_client(url: str, health: StoreHealth, **kwargs: Any) -> aioredis.Redis:
    """A client on ``url`` whose connections fail fast while ``health`` says the store is down."""
    pool = ConnectionPool.from_url(url, **kwargs)
    fail_fast(pool, health)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class StoreHandle:
    """A Redis client plus, on the embedded store, the server this process may own.

    ``url`` names the store in messages (for Sentinel and Cluster, a description);
    ``pubsub`` makes the invalidation channel's client where the URL cannot.
    """

    def __init__(
        self,
        client: Any,
        embedded: EmbeddedRedis | None,
        url: str,
        health: StoreHealth | None = None,
        *,
        pubsub: Callable[[], Any] | None = None,
        closers: tuple[Callable[[], Awaitable[None]], ...] = (),
    ):
        self.client = client
        self.embedded = embedded
        self.url = url
        self.health = health
        self._pubsub = pubsub
        self._closers = closers

    def open_pubsub(self, config: RedisConfig) -> Any:
        """A client for the invalidation channel: anything with ``pubsub()`` and ``aclose()``."""
        if self._pubsub is not None:
            return self._pubsub()
        return pubsub_client(self.url, config)

    async def close(self) -> None:
        await self.client.aclose()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        if self.embedded is not None:
            self.embedded.stop()


def _keepalive(url: str) -> dict[str, Any]:
    """TCP keep-alive, for TCP URLs only: a unix socket connection refuses the option."""
    return {} if url.startswith("unix:") else {"socket_keepalive": True}


def _tls(tls: RedisTLSConfig | None) -> dict[str, Any]:
    """redis-py's TLS options (``ssl=True`` is added where no URL scheme says it)."""
    if tls is None:
        return {}
    return {
        "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
        "ssl_certfile": str(tls.cert_file) if tls.cert_file else None,
        "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.verify,
    }


def _address(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host, int(port)


def _retry(retries: int) -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)


def open_store(config: RedisConfig) -> StoreHandle:
    if config.sentinel is not None:
        return _open_sentinel(config)
    if config.cluster is not None:
        return _open_cluster(config)
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
        **_tls(config.tls),
        retry=_retry(1),
        health_check_interval=30,
    )
    return StoreHandle(client, embedded, url, health)


def _open_sentinel(config: RedisConfig) -> StoreHandle:
    """The master a Sentinel set names; every new connection asks the sentinels where it is.

    After a failover the connections to the old master fail; the next ones go
    to the master the sentinels name then (the request client fails fast in
    between, as on a single server).
    """
    spec = config.sentinel
    assert spec is not None
    tls = {"ssl": True, **_tls(config.tls)} if config.tls is not None else {}
    timeouts = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
    }
    manager = Sentinel(
        [_address(n) for n in spec.nodes],
        sentinel_kwargs={**timeouts, "password": spec.sentinel_password, **tls},
        username=spec.username,
        password=spec.password,
        db=spec.db,
        decode_responses=True,
        socket_keepalive=True,
        **tls,
    )
    health = StoreHealth(
        hold=0.5, probe_timeout=config.connect_timeout + config.socket_timeout + 1.0
    )
    client = manager.master_for(
        spec.master_name, **timeouts, retry=_retry(1), health_check_interval=30
    )
    fail_fast(client.connection_pool, health)

    def pubsub() -> aioredis.Redis:
        return manager.master_for(
            spec.master_name,
            socket_connect_timeout=config.connect_timeout,
            socket_timeout=max(config.socket_timeout, 5.0),
            retry=_retry(0),
        )

    where = f"sentinel {spec.master_name} via {','.join(spec.nodes)}"
    return StoreHandle(client, None, where, health, pubsub=pubsub, closers=(manager.aclose,))


def _open_cluster(config: RedisConfig) -> StoreHandle:
    """Redis Cluster through redis-py's cluster client, which routes each key to its node."""
    spec = config.cluster
    assert spec is not None
    tls = {"ssl": True, **_tls(config.tls)} if config.tls is not None else {}
    client = RedisCluster(
        startup_nodes=[ClusterNode(*_address(n)) for n in spec.nodes],
        username=spec.username,
        password=spec.password,
        decode_responses=True,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        retry=_retry(1),
        **tls,
    )
    options = {
        "username": spec.username,
        "password": spec.password,
        "decode_responses": True,
        "socket_connect_timeout": config.connect_timeout,
        "socket_timeout": max(config.socket_timeout, 5.0),
        "socket_keepalive": True,
        "retry": _retry(0),
        **tls,
    }
    where = f"cluster {','.join(spec.nodes)}"
    return StoreHandle(client, None, where, pubsub=lambda: NodePubSub(client, spec.nodes, options))


class NodePubSub:
    """The invalidation channel on a cluster: a plain connection to one node at a time.

    A ``PUBLISH`` on Redis Cluster reaches every node, so any node hears the
    channel. Each new subscription (the listener makes one after every lost
    connection) goes to the next node the cluster client knows of, so a node
    that died is left behind.
    """

    def __init__(self, cluster: RedisCluster, seeds: tuple[str, ...], options: dict[str, Any]):
        self._cluster = cluster
        self._seeds = [_address(n) for n in seeds]
        self._options = options
        self._clients: dict[tuple[str, int], aioredis.Redis] = {}
        self._turn = 0

    def pubsub(self, **kwargs: Any) -> aioredis.client.PubSub:
        known = [(n.host, n.port) for n in self._cluster.get_nodes()] or self._seeds
        address = known[self._turn % len(known)]
        self._turn += 1
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = aioredis.Redis(
                host=address[0], port=address[1], **self._options
            )
        return client.pubsub(**kwargs)

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._clients.clear()


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
        **(_tls(config.tls) if url.startswith("rediss:") else {}),
        retry=_retry(0),
    )

"""What ``gateway/compat/redis.py`` relies on in redis-py, and that it still works.

The contract tests fail by name when a redis-py upgrade moves a seam the
adapter uses; the behaviour tests run a real redis-server of their own and
stop, pause and restart it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from realparts import RedisServer
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.compat.redis import TRANSPORT_ERRORS, fail_fast
from gateway.store.connection import StoreHealth

ADAPTER = "gateway/compat/redis.py"
CONNECTION_CLASSES = [
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
]


def changed(what: str) -> str:
    return f"redis-py changed {what}: update {ADAPTER}"


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# -- the contract -----------------------------------------------------------


@pytest.mark.parametrize("cls", CONNECTION_CLASSES, ids=lambda c: c.__name__)
def test_connection_connect_takes_no_arguments(cls: type[AbstractConnection]) -> None:
    what = f"{cls.__name__}.connect()"
    connect = getattr(cls, "connect", None)
    assert connect is not None, changed(what)
    assert inspect.iscoroutinefunction(connect), changed(what)
    required = [
        p.name
        for p in inspect.signature(connect).parameters.values()
        if p.name != "self"
        and p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert required == [], changed(what)


@pytest.mark.parametrize("cls", CONNECTION_CLASSES, ids=lambda c: c.__name__)
def test_connection_send_packed_command_takes_command_and_check_health(
    cls: type[AbstractConnection],
) -> None:
    what = f"{cls.__name__}.send_packed_command(command, check_health)"
    send = getattr(cls, "send_packed_command", None)
    assert send is not None, changed(what)
    assert inspect.iscoroutinefunction(send), changed(what)
    assert parameters(send) == ["self", "command", "check_health"], changed(what)
    assert inspect.signature(send).parameters["check_health"].default is True, changed(what)


@pytest.mark.parametrize("cls", CONNECTION_CLASSES, ids=lambda c: c.__name__)
def test_connection_read_response_is_a_coroutine(cls: type[AbstractConnection]) -> None:
    what = f"{cls.__name__}.read_response(...)"
    read = getattr(cls, "read_response", None)
    assert read is not None, changed(what)
    assert inspect.iscoroutinefunction(read), changed(what)


def test_connection_send_command_goes_through_send_packed_command() -> None:
    source = inspect.getsource(AbstractConnection.send_command)
    assert "self.send_packed_command(" in source, changed(
        "AbstractConnection.send_command (no longer through send_packed_command)"
    )


def test_pool_takes_a_connection_class() -> None:
    what = "ConnectionPool(connection_class=...)"
    assert "connection_class" in parameters(ConnectionPool.__init__), changed(what)
    assert ConnectionPool().connection_class is Connection, changed(what)


def test_pool_makes_connections_of_its_connection_class() -> None:
    """``make_connection`` reads ``connection_class`` each time, so replacing it takes effect."""
    health = StoreHealth()
    for url, base in [
        ("redis://127.0.0.1:1/0", Connection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
        ("unix:///tmp/none.sock", UnixDomainSocketConnection),
    ]:
        pool = ConnectionPool.from_url(url)
        assert pool.connection_class is base, changed(
            f"ConnectionPool.from_url({url!r}).connection_class"
        )
        fail_fast(pool, health)
        connection = pool.make_connection()
        assert isinstance(connection, base), changed("ConnectionPool.make_connection()")
        assert type(connection) is pool.connection_class, changed(
            "ConnectionPool.make_connection() (no longer an instance of connection_class)"
        )
        assert connection.gate is health


@pytest.mark.parametrize("ssl", [False, True], ids=["plain", "tls"])
def test_sentinel_master_pool_takes_the_same_seam(ssl: bool) -> None:
    manager = Sentinel([("127.0.0.1", 1)])
    client = manager.master_for("primary", **({"ssl": True} if ssl else {}))
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool), changed(
        "Sentinel.master_for(...).connection_pool"
    )
    base = SentinelManagedSSLConnection if ssl else SentinelManagedConnection
    assert pool.connection_class is base, changed("SentinelConnectionPool.connection_class")
    fail_fast(pool, StoreHealth())
    assert isinstance(pool.make_connection(), base), changed(
        "SentinelConnectionPool.make_connection()"
    )


# -- the behaviour, on a real redis-server --------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.plain(tmp_path / "redis", persist=True).start()
    try:
        yield server
    finally:
        server.stop()  # resumes a paused server first


def client_for(url: str, health: StoreHealth, socket_timeout: float = 1.0) -> aioredis.Redis:
    pool = ConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), retries=0),
    )
    fail_fast(pool, health)
    return aioredis.Redis.from_pool(pool)


async def failing_fast(client: aioredis.Redis) -> bool:
    """Whether a command fails at once with the hold-down's own error."""
    started = time.monotonic()
    try:
        await client.ping()
    except RedisConnectionError as exc:
        return "failing fast" in str(exc) and time.monotonic() - started < 0.05
    return False


async def wait_until_up(client: aioredis.Redis, health: StoreHealth, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if await client.ping():
                assert health.up
                return
        except RedisConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"the store did not answer again within {within}s")


@pytest.mark.integration
async def test_refused_connection_fails_fast_during_the_hold_then_recovers(
    store: RedisServer,
) -> None:
    health = StoreHealth(hold=0.5, probe_timeout=2.0)
    client = client_for(store.url, health)
    try:
        assert await client.set("gwtest:compat", "1")
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("gwtest:compat")
            pipe.delete("gwtest:compat")
            assert await pipe.execute() == ["1", 1]
        assert health.up and health.failures == 0

        store.stop()
        with pytest.raises(RedisConnectionError) as refused:
            await client.ping()
        assert "failing fast" not in str(refused.value)  # this one reached the socket
        assert not health.up and health.failures == 1

        # During the hold every command, pipelines included, fails at once and
        # no connection is attempted.
        for _ in range(20):
            assert await failing_fast(client)
        with pytest.raises(RedisConnectionError, match="failing fast"):
            async with client.pipeline(transaction=False) as pipe:
                pipe.get("gwtest:compat")
                await pipe.execute()
        assert health.failures == 1

        # After the hold one probe goes through; refused again, it starts a new hold.
        await asyncio.sleep(health.hold + 0.05)
        with pytest.raises(RedisConnectionError) as probe:
            await client.ping()
        assert "failing fast" not in str(probe.value)
        assert health.failures == 2
        assert await failing_fast(client)

        store.start()
        await wait_until_up(client, health, within=health.hold + 2.0)
        assert await client.set("gwtest:compat", "2") and await client.get("gwtest:compat") == "2"
        await client.delete("gwtest:compat")
    finally:
        await client.aclose()


@pytest.mark.integration
async def test_hung_store_costs_one_timeout_then_fails_fast(store: RedisServer) -> None:
    health = StoreHealth(hold=0.5, probe_timeout=2.0)
    client = client_for(store.url, health, socket_timeout=0.3)
    try:
        assert await client.ping()
        store.pause()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError) as timed_out:
            await client.ping()
        assert time.monotonic() - started < 1.0
        assert isinstance(timed_out.value, TRANSPORT_ERRORS)
        assert not health.up
        for _ in range(20):
            assert await failing_fast(client)

        store.resume()
        await wait_until_up(client, health, within=health.hold + 2.0)
    finally:
        await client.aclose()

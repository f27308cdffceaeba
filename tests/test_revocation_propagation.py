"""Changes made through one gateway reach every other gateway on the store (SPEC §7).

Two real ``gateway serve`` processes share one Redis. A key is used on B (so B
holds it in its cache, whose TTL is set far longer than the test), changed
through A's management API, and B must follow within a second (a revocation
or rotation) or two (any other change), including after B's subscription to
the invalidation channel was cut and re-established.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from conftest import bearer, new_account, new_key, run_cli, service_for, upstream_url

from gateway.config import parse_config
from gateway.config.schema import RedisConfig
from gateway.keys.cache import KeyCache
from gateway.keys.invalidation import InvalidationListener
from gateway.keys.service import CLI
from gateway.proxy.streams import REVOKED, OpenStreams
from gateway.store.connection import StoreUnavailable, pubsub_client
from gateway.timefmt import isoformat, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
async def pair(base_config, gateway_process, redis_client, upstream):
    """(A, B, service on the same store, account id, admin headers for A's API)."""
    data = base_config(
        keys={"cache_ttl": "5m"},  # only invalidation can explain B following within seconds
        routes=[
            {
                "name": "users",
                "match": "/v1/users",
                "upstream": upstream_url(upstream),
                "permissions": {"GET": "read", "*": "write"},
            }
        ],
    )
    a = gateway_process(data, name="a")
    b = gateway_process(data, name="b")
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    _, admin = await new_key(service, account, permissions=["admin"])
    yield a, b, service, account, bearer(admin)


async def _status(http, gateway, secret: str) -> tuple[int, str | None]:
    async with http.get(gateway.url + "/v1/users/1", headers=bearer(secret)) as resp:
        body = await resp.json()
        return resp.status, (body.get("error") or {}).get("code")


async def _cached_on(http, gateway, secret: str) -> None:
    """Use the key on ``gateway`` until it answers from its cache."""
    for _ in range(3):
        assert await _status(http, gateway, secret) == (200, None)
    async with http.get(gateway.admin_url + "/metrics") as resp:
        metrics = await resp.text()
    hits = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("gateway_key_cache_hits_total")
    ]
    assert hits and hits[0] >= 2, "the key was not served from B's cache"


async def _until_refused(http, gateway, secret: str, limit: float) -> tuple[float, tuple]:
    started = time.monotonic()
    while True:
        status = await _status(http, gateway, secret)
        elapsed = time.monotonic() - started
        if status != (200, None):
            return elapsed, status
        assert elapsed < limit + 1, f"still accepted after {elapsed:.2f}s"
        await asyncio.sleep(0.01)


async def test_revocation_patch_and_rotation_through_a_reach_b_in_time(pair, http):
    """One pair of processes for the three changes (starting processes is the slow part)."""
    a, b, service, account, admin = pair

    # A revocation: within one second.
    key_id, secret = await new_key(service, account, permissions=["read"])
    await _cached_on(http, b, secret)
    async with http.delete(a.url + f"/v1/api-keys/{key_id}", headers=admin) as resp:
        assert resp.status == 200
    elapsed, status = await _until_refused(http, b, secret, 1.0)
    assert status == (401, "revoked_api_key")
    assert elapsed < 1.0, f"revocation took {elapsed:.2f}s"
    print(f"revocation honoured by the other process after {elapsed * 1000:.0f} ms")

    # A patch removing the permission the route needs: within two seconds.
    key_id, secret = await new_key(service, account, permissions=["read", "write"])
    await _cached_on(http, b, secret)
    async with http.patch(
        a.url + f"/v1/api-keys/{key_id}", json={"permissions": ["users:write"]}, headers=admin
    ) as resp:
        assert resp.status == 200
    elapsed, status = await _until_refused(http, b, secret, 2.0)
    assert status == (403, "insufficient_permissions")
    assert elapsed < 2.0, f"patch took {elapsed:.2f}s"

    # A rotation with no grace period retires the old key: within one second.
    key_id, secret = await new_key(service, account, permissions=["read"])
    await _cached_on(http, b, secret)
    async with http.post(
        a.url + f"/v1/api-keys/{key_id}/rotate", json={"grace_period": "0s"}, headers=admin
    ) as resp:
        assert resp.status == 201
        new_secret = (await resp.json())["data"]["key"]
    elapsed, status = await _until_refused(http, b, secret, 1.0)
    assert status == (401, "expired_api_key")
    assert elapsed < 1.0, f"rotation took {elapsed:.2f}s"
    assert await _status(http, b, new_secret) == (200, None)

    # A revocation from the CLI reaches both gateways.
    key_id, secret = await new_key(service, account, permissions=["read"])
    await _cached_on(http, a, secret)
    await _cached_on(http, b, secret)
    result = await asyncio.to_thread(run_cli, a.config_path, "keys", "revoke", key_id)
    assert result.returncode == 0, result.stderr
    for gateway in (a, b):
        elapsed, status = await _until_refused(http, gateway, secret, 1.0)
        assert status == (401, "revoked_api_key")
        assert elapsed < 1.0


def _tcp_ports_of(pid: int) -> set[int]:
    """The local TCP ports of ``pid``'s sockets (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def _subscriptions_of(client: aioredis.Redis, pid: int, unix: bool) -> list[str]:
    """CLIENT KILL filters for ``pid``'s subscribed connections."""
    if unix:
        # The embedded store is this test session's own: every subscriber is a gateway under
        # test. A is cut too, which changes nothing for what is checked on B.
        return ["TYPE", "pubsub"]
    ports = _tcp_ports_of(pid)
    for entry in await client.client_list(_type="pubsub"):
        if int(entry["addr"].rsplit(":", 1)[1]) in ports:
            return ["ID", entry["id"]]
    raise AssertionError(f"no subscribed connection of process {pid}")


async def test_b_follows_a_revocation_made_while_its_subscription_was_down(
    pair, http, redis_client, redis_url, key_prefix
):
    a, b, service, account, admin = pair
    key_id, secret = await new_key(service, account, permissions=["read"])
    await _cached_on(http, b, secret)
    channel = key_prefix + "invalidate"
    assert (await redis_client.pubsub_numsub(channel))[0][1] == 2

    # Cut B's subscription and revoke in one transaction, so the revocation is surely
    # published while B is not listening: B never receives that message.
    assert b.proc is not None
    target = await _subscriptions_of(redis_client, b.proc.pid, redis_url.startswith("unix:"))
    record = await service.store.get_key(key_id)
    assert record is not None
    revoked = record.evolve(revoked_at=isoformat(utcnow()))
    async with redis_client.pipeline(transaction=True) as tx:
        tx.execute_command("CLIENT", "KILL", *target)
        tx.set(f"{key_prefix}key:{key_id}", revoked.to_json())
        tx.publish(channel, revoked.hash)
        killed, _, delivered = await tx.execute()
    assert killed >= 1 and delivered <= 1

    elapsed, status = await _until_refused(http, b, secret, 1.0)
    assert status == (401, "revoked_api_key")
    assert elapsed < 1.0
    # And B listens again: the next change arrives by the channel as before.
    deadline = time.monotonic() + 5
    while (await redis_client.pubsub_numsub(channel))[0][1] < 2:
        assert time.monotonic() < deadline, "B did not subscribe again"
        await asyncio.sleep(0.05)
    other_id, other = await new_key(service, account, permissions=["read"])
    await _cached_on(http, b, other)
    async with http.delete(a.url + f"/v1/api-keys/{other_id}", headers=admin) as resp:
        assert resp.status == 200
    elapsed, status = await _until_refused(http, b, other, 1.0)
    assert status == (401, "revoked_api_key")
    assert elapsed < 1.0


class RecordingCache(KeyCache):
    """A key cache that notes each time it was told changes go unheard."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distrusted: list[float] = []

    def distrust(self, fresh_for: float) -> None:
        self.distrusted.append(fresh_for)
        super().distrust(fresh_for)


async def _never_loads(key_hash: str) -> None:
    raise AssertionError("nothing is looked up here")


async def test_a_listener_stopped_while_it_subscribes_always_stops(redis_url, key_prefix):
    """Stopping a gateway must not hang: redis-py's timed read on the subscription can end
    a cancellation as a timeout, which once left the listener reconnecting for ever and
    close() waiting on it (about one stop in forty made while it subscribes)."""
    hung = 0
    for step in range(200):
        client = pubsub_client(redis_url, RedisConfig())
        cache = KeyCache(_never_loads, ttl=60, negative_ttl=5, max_size=10, stale_if_error=60)
        listener = InvalidationListener(client, key_prefix + "inv", cache)
        listener.start()
        await asyncio.sleep((step % 40) * 0.0005)  # stopped at every stage of subscribing
        try:
            await asyncio.wait_for(asyncio.shield(listener.stop()), 3)
        except TimeoutError:
            hung += 1
        await client.aclose()
    assert hung == 0


async def test_a_lost_channel_makes_the_cache_read_the_store_until_it_is_back(
    redis_client, redis_url, key_prefix
):
    """While the listener is not subscribed, revocations are unheard: cached keys are read
    from the store at most every half second, and once subscribed again the whole TTL holds,
    and the open streams' keys are read again."""
    from gateway.keys.invalidation import UNHEARD_FRESHNESS

    loads: list[str] = []

    async def load(key_hash: str) -> object:
        loads.append(key_hash)
        return object()

    cache = RecordingCache(load, ttl=60, negative_ttl=5, max_size=10, stale_if_error=60)
    distrusted = cache.distrusted
    await cache.get("h")
    resyncs: list[float] = []
    client = pubsub_client(redis_url, RedisConfig())
    listener = InvalidationListener(
        client, key_prefix + "inv", cache, ping_interval=0.1,
        on_resync=lambda: resyncs.append(time.monotonic()),
    )  # fmt: skip
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert cache.fresh("h") is None  # marked stale when subscribed: loaded again once
        await cache.get("h")
        assert cache.fresh("h") is not None and distrusted == []
        # lose the subscription: the listener distrusts, subscribes again, resyncs
        target = await _subscriptions_of(redis_client, os.getpid(), redis_url.startswith("unix:"))
        assert await redis_client.execute_command("CLIENT", "KILL", *target) >= 1
        deadline = time.monotonic() + 10
        while not resyncs:
            assert time.monotonic() < deadline, "the listener did not subscribe again"
            await asyncio.sleep(0.05)
        assert distrusted == [UNHEARD_FRESHNESS]
        assert cache.fresh("h") is None  # marked stale once more when subscribed again
        await cache.get("h")
        await asyncio.sleep(UNHEARD_FRESHNESS + 0.05)
        assert cache.fresh("h") is not None  # heard again: the whole TTL
        assert loads == ["h", "h", "h"]  # first use, once subscribed, once subscribed again
    finally:
        await listener.stop()
        await client.aclose()


async def _messages(pubsub, count: int, timeout: float = 5.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            got.append(message["data"])
    return got


async def test_a_write_whose_answer_was_lost_is_published_once_the_store_answers(
    redis_client, base_config, monkeypatch
):
    """A save that fails may have landed: its invalidation goes out with the next ping the
    store answers (the health monitor pings each second), so no replica keeps the old record;
    and revoking a key already revoked says so again."""
    service = service_for(redis_client, parse_config(base_config()))
    account = await new_account(service)
    key_id, _ = await new_key(service, account)
    record = await service.store.get_key(key_id)
    assert record is not None
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(service.store.channel)
        real_publish = redis_client.publish

        async def lost(*args, **kwargs):
            raise aioredis.ConnectionError("the answer never came")

        monkeypatch.setattr(redis_client, "publish", lost)
        with pytest.raises(StoreUnavailable):
            await service.store.save_key(record.evolve(name="renamed"))
        monkeypatch.setattr(redis_client, "publish", real_publish)
        assert (await service.store.get_key(key_id)).name == "renamed"  # it did land
        assert service.store.unsettled == {record.hash}
        assert await _messages(pubsub, 1, timeout=0.5) == []
        assert await service.store.ping() is True
        assert await _messages(pubsub, 1) == [record.hash]
        assert service.store.unsettled == set()
        await service.revoke_key(CLI, key_id)
        await service.revoke_key(CLI, key_id)  # a retry after a 503: published again
        assert await _messages(pubsub, 2) == [record.hash, record.hash]


async def test_open_streams_read_their_keys_again_after_a_resync():
    cut: list[tuple[int, str]] = []

    class Stream:
        def cut(self, code: int, reason: str) -> None:
            cut.append((code, reason))

    revoked = {"gone"}

    async def load(key_hash: str):
        return type("Key", (), {"revoked": key_hash in revoked, "expires_at": None})()

    streams = OpenStreams(load)
    streams.add(Stream(), "gone", None)
    streams.add(Stream(), "kept", None)
    streams.resync()  # what the listener asks once subscribed again
    for _ in range(50):
        if cut:
            break
        await asyncio.sleep(0.01)
    assert cut == [(1008, REVOKED)]
    assert len(streams) == 1


async def test_a_store_that_stops_answering_has_its_subscription_renewed(
    redis_url, key_prefix, start_gateway, base_config
):
    """A hung master (or one being failed over) keeps the subscription's socket open but
    sends nothing: when the health pings fail, the listener subscribes anew (to whatever
    answers then) and reads keys from the store meanwhile."""
    from gateway.store.health import StoreMonitor

    cache = RecordingCache(_never_loads, ttl=60, negative_ttl=5, max_size=10, stale_if_error=60)
    distrusted = cache.distrusted
    client = pubsub_client(redis_url, RedisConfig())
    listener = InvalidationListener(client, key_prefix + "inv", cache)
    answering = [True]

    async def ping() -> None:
        if not answering[0]:
            raise ConnectionError("no answer")

    monitor = StoreMonitor(ping)
    monitor.on_down = listener.renew
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert await monitor.check() and listener.subscriptions == 1
        answering[0] = False
        assert not await monitor.check()  # up -> down: the subscription is renewed
        deadline = time.monotonic() + 5
        while listener.subscriptions < 2:
            assert time.monotonic() < deadline, "not subscribed anew"
            await asyncio.sleep(0.05)
        assert distrusted  # keys were read from the store in between
        assert not await monitor.check()  # still down: once per outage, not every ping
        await asyncio.sleep(1.5)
        assert listener.subscriptions == 2
    finally:
        await listener.stop()
        await client.aclose()
    # and the gateway wires it so
    gw = await start_gateway(base_config())
    assert gw.runtime.store_monitor.on_down == gw.runtime.invalidation.renew

"""The gateway on each Redis topology production uses, through redis-py's own clients.

The integration behaviours that depend on the store (a key is authenticated, a
revocation reaches every gateway at once, a rate limit is shared by
gateways, usage is counted, the audit trail and the key listing) run against
one server, a three-master cluster and a Sentinel set (master, replica, three
sentinels); TLS (with a client certificate) and a unix socket against the
single server; and a failover is forced on the Sentinel set while traffic
runs. Each gateway here is the real application opening its store from the
``redis:`` config section (no test client is passed in).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis_topologies
from aiohttp.test_utils import TestServer
from conftest import (
    Gateway,
    bearer,
    gateways,
    new_account,
    new_key,
    run_cli,
    service_for,
    upstream_url,
    write_config,
)
from redis_topologies import Cluster, SentinelSet, redis_section

from gateway.config import parse_config
from gateway.config.loader import ConfigError
from gateway.keys.audit import AuditLog
from gateway.keys.format import generate_secret
from gateway.keys.service import CLI
from gateway.keys.store import KeyStore
from gateway.store.connection import StoreUnavailable, open_store
from gateway.timefmt import isoformat, utcnow
from gateway.usage.reader import UsageReader

pytestmark = pytest.mark.integration

# the session's topologies (started once, whichever module asks first)
redis_single = redis_topologies.redis_single
redis_cluster = redis_topologies.redis_cluster
redis_sentinel = redis_topologies.redis_sentinel

TOPOLOGIES = ("single", "cluster", "sentinel")
PLANS = {"default": {"rate_limit": "100000/minute"}, "tight": {"rate_limit": "5/minute"}}


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"redis_{request.param}")


@pytest.fixture
def prefix() -> str:
    return f"gwtopo:{uuid.uuid4().hex[:10]}:"


def gateway_config(section: dict[str, Any], prefix: str, upstream: TestServer, **extra: Any):
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False},
        "admin": {"host": "127.0.0.1", "port": 0},
        "redis": {**section, "key_prefix": prefix},
        "keys": {"cache_ttl": "5m"},  # only the invalidation channel explains a quick change
        "plans": PLANS,
        "routes": [
            {
                "name": "items",
                "match": "/items",
                "upstream": upstream_url(upstream),
                "permissions": {"GET": "read", "*": "write"},
            }
        ],
    }
    for name, value in extra.items():
        data[name] = {**data.get(name, {}), **value} if isinstance(value, dict) else value
    return data


@pytest.fixture
async def on_store(prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """``on_store(section)``: (handle, service) on that store; its keys deleted afterwards."""
    handles = []

    async def open_(section: dict[str, Any]):
        config = parse_config({"redis": {**section, "key_prefix": prefix}, "plans": PLANS})
        handle = open_store(config.redis)
        handles.append(handle)
        return handle, service_for(handle.client, config)

    yield open_
    for handle in handles:
        keys = [k async for k in handle.client.scan_iter(match=prefix + "*", count=1000)]
        for key in keys:
            await handle.client.delete(key)
        await handle.close()


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Any]]:
    """``start(config_data)``: the real gateway app in this loop, its store opened from config."""
    async with gateways(store_factory=None) as start_:
        yield start_


async def call(http, gateway: Gateway, secret: str, path: str = "/items/1"):
    async with http.get(gateway.url + path, headers=bearer(secret)) as resp:
        body = await resp.json()
        return resp.status, body


async def code(http, gateway: Gateway, secret: str) -> tuple[int, str | None]:
    status, body = await call(http, gateway, secret)
    return status, (body.get("error") or {}).get("code")


async def refused_within(http, gateway: Gateway, secret: str, seconds: float) -> float:
    """Seconds until ``gateway`` refuses ``secret`` as revoked (fails after ``seconds``)."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if await code(http, gateway, secret) == (401, "revoked_api_key"):
            return elapsed
        assert elapsed < seconds, f"still accepted after {elapsed:.2f}s"
        await asyncio.sleep(0.02)


def echoed(body: dict, name: str) -> str | None:
    return next((v for k, v in body["headers"] if k.lower() == name.lower()), None)


# -- the integration behaviours on each topology ------------------------------------


async def test_a_key_is_authenticated_and_an_unknown_one_refused(
    topology, prefix, on_store, start, upstream, http
):
    section = redis_section(topology)
    _, service = await on_store(section)
    gw = await start(gateway_config(section, prefix, upstream))
    account = await new_account(service)
    key_id, secret = await new_key(service, account, permissions=["read"])
    status, body = await call(http, gw, secret)
    assert status == 200
    assert body["path"] == "/items/1"
    assert echoed(body, "X-Gateway-Key-Id") == key_id
    assert echoed(body, "X-Gateway-Account-Id") == account
    unknown = generate_secret("sk", "live")  # well formed, valid checksum, not in the store
    assert await code(http, gw, unknown) == (401, "invalid_api_key")


async def test_a_revocation_reaches_every_gateway_at_once(
    topology, prefix, on_store, start, upstream, http
):
    section = redis_section(topology)
    _, service = await on_store(section)
    data = gateway_config(section, prefix, upstream)
    a, b = await start(data), await start(data)
    account = await new_account(service)
    _, admin = await new_key(service, account, permissions=["admin"])
    key_id, secret = await new_key(service, account, permissions=["read"])
    for _ in range(3):  # now in B's cache, for five minutes
        assert await code(http, b, secret) == (200, None)
    async with http.delete(f"{a.url}/v1/api-keys/{key_id}", headers=bearer(admin)) as resp:
        assert resp.status == 200
    assert await refused_within(http, b, secret, 1.0) < 1.0
    # a change other than a revocation follows the same way
    other_id, other = await new_key(service, account, permissions=["read"])
    assert await code(http, b, other) == (200, None)
    async with http.patch(
        f"{a.url}/v1/api-keys/{other_id}", json={"permissions": ["write"]}, headers=bearer(admin)
    ) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 1.0
    while True:
        _, body = await call(http, b, other)
        if echoed(body, "X-Gateway-Permissions") == "write":
            break
        assert time.monotonic() < deadline, echoed(body, "X-Gateway-Permissions")
        await asyncio.sleep(0.02)


async def test_a_rate_limit_is_shared_by_gateways(
    topology, prefix, on_store, start, upstream, http
):
    section = redis_section(topology)
    _, service = await on_store(section)
    data = gateway_config(section, prefix, upstream)
    a, b = await start(data), await start(data)
    account = await new_account(service, plan="tight")  # 5/minute
    _, secret = await new_key(service, account, permissions=["read"])
    statuses = []
    for i in range(10):
        status, body = await call(http, (a, b)[i % 2], secret)
        statuses.append(status)
        if status == 429:
            assert body["error"]["code"] == "rate_limit_exceeded"
    assert statuses.count(200) == 5 and statuses.count(429) == 5, statuses


async def test_usage_is_counted_and_every_counter_expires(
    topology, prefix, on_store, start, upstream, http
):
    section = redis_section(topology)
    handle, service = await on_store(section)
    gw = await start(gateway_config(section, prefix, upstream))
    account = await new_account(service)
    key_id, secret = await new_key(service, account, permissions=["read"])
    for _ in range(7):
        assert (await call(http, gw, secret))[0] == 200
    async with http.post(gw.url + "/items/1", headers=bearer(secret)) as resp:
        assert resp.status == 403  # a read key writing: counted as denied
    reader = UsageReader(handle.client, prefix)
    deadline = time.monotonic() + 5
    while True:
        today = (await reader.days(key_id, 1))[0]
        if today["allowed"] == 7 and today["denied"] == 1:
            break
        assert time.monotonic() < deadline, today
        await asyncio.sleep(0.1)
    assert await reader.last_used(key_id)
    counters = [k async for k in handle.client.scan_iter(match=prefix + "*", count=1000)]
    expiring = [k for k in counters if ":rl:" in k or ":usage:" in k]
    assert any(":rl:" in k for k in expiring) and any(":usage:" in k for k in expiring)
    for name in expiring:
        assert await handle.client.ttl(name) > 0, name


async def test_the_audit_trail_has_one_id_per_event_in_both_views(topology, prefix, on_store):
    handle, service = await on_store(redis_section(topology))
    account = await new_account(service)
    key_id, _ = await new_key(service, account)
    audit = AuditLog(handle.client, prefix)
    mine = [e for e in await audit.read(account_id=account) if e["action"] == "key.create"]
    everyone = [e for e in await audit.read() if e["key_id"] == key_id]
    assert [e["id"] for e in mine] == [e["id"] for e in everyone] and len(mine) == 1


async def test_keys_page_through_the_account_index(
    topology, prefix, on_store, start, upstream, http, tmp_path
):
    section = redis_section(topology)
    _, service = await on_store(section)
    gw = await start(gateway_config(section, prefix, upstream))
    account = await new_account(service)
    _, admin = await new_key(service, account, permissions=["admin"], name="admin")
    made = [(await new_key(service, account, name=f"k{i}"))[0] for i in range(5)]
    seen, after = [], None
    while True:
        query = "?limit=2" + (f"&starting_after={after}" if after else "")
        async with http.get(f"{gw.url}/v1/api-keys{query}", headers=bearer(admin)) as resp:
            assert resp.status == 200
            page = await resp.json()
        seen += [k["id"] for k in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen[:5] == made[::-1]  # newest first, then the admin key
    assert len(seen) == 6
    # the CLI opens the same topology from the same config section
    path = write_config(tmp_path / "gateway.yaml", gateway_config(section, prefix, upstream))
    result = await asyncio.to_thread(run_cli, path, "keys", "list", "--account", account, "--json")
    assert result.returncode == 0, result.stderr
    assert [k["id"] for k in json.loads(result.stdout)["data"]] == seen


async def test_on_a_cluster_an_invalidation_published_on_any_node_is_heard(
    redis_cluster: Cluster, prefix, on_store, start, upstream, http
):
    """PUBLISH on Redis Cluster reaches every node: whichever node a gateway listens on."""
    section = redis_section(redis_cluster)
    handle, service = await on_store(section)
    gw = await start(gateway_config(section, prefix, upstream))
    account = await new_account(service)
    listener = gw.runtime.invalidation
    for node in redis_cluster.processes:
        for _attempt in range(3):
            subscriptions = listener.subscriptions
            key_id, secret = await new_key(service, account, permissions=["read"])
            assert await code(http, gw, secret) == (200, None)
            record = await service.store.get_key(key_id)
            revoked = record.evolve(revoked_at=isoformat(utcnow()))
            await handle.client.set(f"{prefix}key:{key_id}", revoked.to_json())  # no publish
            cached = await code(http, gw, secret)
            if listener.subscriptions != subscriptions:
                continue  # the listener subscribed again, which rightly marks the cache stale
            assert cached == (200, None)  # cached: nothing told it
            with node.client() as plain:
                plain.publish(f"{prefix}invalidate", revoked.hash)
            assert await refused_within(http, gw, secret, 1.0) < 1.0
            break
        else:
            raise AssertionError("the listener kept resubscribing; the channel never held")


def test_the_config_names_one_topology() -> None:
    sentinel = {"master_name": "m", "nodes": ["127.0.0.1:26379"]}
    cluster = {"nodes": ["127.0.0.1:7000", "[::1]:7001"]}
    assert parse_config({"redis": {"cluster": cluster}}).redis.cluster.nodes[1] == "::1:7001"
    assert parse_config({"redis": {"sentinel": sentinel}}).redis.embedded is False
    assert parse_config({}).redis.embedded is True
    for redis_section_, error in (
        ({"url": "redis://127.0.0.1/0", "cluster": cluster},
         "redis: set one of url, sentinel or cluster, not url and cluster"),
        ({"sentinel": sentinel, "cluster": cluster},
         "redis: set one of url, sentinel or cluster, not sentinel and cluster"),
        ({"url": "redis://127.0.0.1/0", "tls": {}},
         "redis: tls needs a rediss:// url (redis:// and unix:// are plain)"),
        ({"cluster": {"nodes": ["localhost"]}}, "redis.cluster.nodes[0]: 'localhost' is not host:port"),
        ({"sentinel": {"nodes": ["h:1"]}}, "redis.sentinel.master_name: required field is missing"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            parse_config({"redis": redis_section_})
        assert error in caught.value.errors, caught.value.errors


# -- TLS and unix sockets (one server) ------------------------------------------------


async def test_tls_with_a_client_certificate(redis_single, prefix, on_store, start, upstream, http):
    section = redis_section(redis_single, "tls")
    _, service = await on_store(section)
    gw = await start(gateway_config(section, prefix, upstream))
    account = await new_account(service)
    key_id, secret = await new_key(service, account, permissions=["read"])
    assert await code(http, gw, secret) == (200, None)
    # a change made over plain TCP reaches the gateway listening over TLS
    _, plain = await on_store(redis_section(redis_single))
    await plain.revoke_key(CLI, key_id)
    assert await refused_within(http, gw, secret, 1.0) < 1.0


async def test_tls_is_refused_without_the_client_certificate_or_the_right_port(
    redis_single, prefix
):
    for section in (
        {"url": redis_single.tls_url, "tls": redis_single.tls_config(client_cert=False)},
        {"url": redis_single.tls_url.replace(str(redis_single.tls_port), str(redis_single.server.port)),
         "tls": redis_single.tls_config()},
    ):  # fmt: skip
        config = parse_config({"redis": {**section, "connect_timeout": "1s"}})
        handle = open_store(config.redis)
        try:
            with pytest.raises(StoreUnavailable):
                await KeyStore(handle.client, prefix).ping()
        finally:
            await handle.close()


async def test_unix_socket(redis_single, prefix, on_store, start, upstream, http):
    section = redis_section(redis_single, "unix")
    _, service = await on_store(section)
    gw = await start(gateway_config(section, prefix, upstream))
    account = await new_account(service)
    key_id, secret = await new_key(service, account, permissions=["read"])
    assert await code(http, gw, secret) == (200, None)
    await service.revoke_key(CLI, key_id)
    assert await refused_within(http, gw, secret, 1.0) < 1.0


# -- failover -----------------------------------------------------------------------


async def test_sentinel_failover_mid_traffic(
    redis_sentinel: SentinelSet, prefix, on_store, start, upstream, http
):
    """Kill the master while clients call: cached keys never fail, an uncached key works
    again within 10 s, no revocation is lost, nothing answers 500."""
    group = redis_sentinel
    group.wait_healthy()
    section = redis_section(group)
    _, service = await on_store(section)
    data = gateway_config(section, prefix, upstream, keys={"negative_cache_ttl": "1s"})
    gw = await start(data)
    account = await new_account(service)
    _, admin = await new_key(service, account, permissions=["admin"], name="admin")
    cached = [(await new_key(service, account, permissions=["read"]))[1] for _ in range(3)]
    _, uncached = await new_key(service, account, permissions=["read"])
    before_id, before = await new_key(service, account, permissions=["read"])
    during_id, during = await new_key(service, account, permissions=["read"])
    for secret in (*cached, before, during, admin):
        assert (await code(http, gw, secret))[0] in (200, 404)  # in the cache now
    async with http.delete(f"{gw.url}/v1/api-keys/{before_id}", headers=bearer(admin)) as resp:
        assert resp.status == 200  # revoked just before the master dies
    assert await code(http, gw, before) == (401, "revoked_api_key")

    statuses: dict[str, list[int]] = {"cached": [], "uncached": []}
    stop = asyncio.Event()

    async def cached_traffic(secret: str) -> None:
        while not stop.is_set():
            statuses["cached"].append((await call(http, gw, secret))[0])
            await asyncio.sleep(0.005)

    recovered: list[float] = []

    async def uncached_traffic(killed_at: float) -> None:
        while not stop.is_set():
            status = (await call(http, gw, uncached))[0]
            statuses["uncached"].append(status)
            if status == 200 and not recovered:
                recovered.append(time.monotonic() - killed_at)
            await asyncio.sleep(0.1)

    traffic = [asyncio.create_task(cached_traffic(s)) for s in cached * 2]
    await asyncio.sleep(0.3)
    old_master = group.current_master()
    killed_at = time.monotonic()
    old_master.kill()
    traffic.append(asyncio.create_task(uncached_traffic(killed_at)))
    # revoke while the store fails over: retried until the API says it is done
    deadline = killed_at + 15
    while True:
        async with http.delete(f"{gw.url}/v1/api-keys/{during_id}", headers=bearer(admin)) as resp:
            assert resp.status in (200, 503), resp.status
            if resp.status == 200:
                break
        assert time.monotonic() < deadline, "the revocation never went through"
        await asyncio.sleep(0.2)
    while not recovered and time.monotonic() < killed_at + 12:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*traffic)
    print(
        f"failover: uncached key served again {recovered[0] if recovered else -1:.2f}s after"
        f" the kill; cached {len(statuses['cached'])} requests {sorted(set(statuses['cached']))};"
        f" uncached {len(statuses['uncached'])} {sorted(set(statuses['uncached']))}"
    )
    try:
        assert recovered and recovered[0] < 10, f"uncached key not served again ({recovered})"
        assert set(statuses["cached"]) == {200}, sorted(set(statuses["cached"]))
        assert set(statuses["uncached"]) <= {200, 503}, sorted(set(statuses["uncached"]))
        assert group.current_master() is not old_master
        # no revocation lost: here, and on a gateway that starts with an empty cache
        fresh = await start(data)
        for gateway in (gw, fresh):
            assert await code(http, gateway, before) == (401, "revoked_api_key")
            assert await refused_within(http, gateway, during, 2.0) < 2.0
            assert await code(http, gateway, cached[0]) == (200, None)
    finally:
        group.restart(old_master)  # back as a replica of the new master


def test_sentinel_set_is_whole_again(redis_sentinel: SentinelSet) -> None:
    """After the failover test the old master serves as the new master's replica."""
    redis_sentinel.wait_healthy()
    master = redis_sentinel.current_master()
    with master.client() as c:
        assert c.info("replication")["role"] == "master"
    replica = next(p for p in (redis_sentinel.master, redis_sentinel.replica) if p is not master)
    with replica.client() as c:
        assert c.info("replication")["role"] == "slave"

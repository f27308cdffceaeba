"""Key store outages, caused for real: a redis-server of the test's own, stopped, paused and restarted.

A real ``gateway serve`` process runs against it. While the store is gone,
keys the gateway has seen keep working for ``keys.stale_if_error``, unknown
keys get 503 ``auth_backend_unavailable`` with ``Retry-After`` (never a
pass-through, never a 500), ``/readyz`` is 503 and nothing hangs; within 5 s
of the store's return everything is normal again, the invalidation channel
included, and the usage counted meanwhile is written.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from conftest import bearer, new_account, new_key, service_for, upstream_url
from realparts import RedisServer
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from gateway.config import parse_config
from gateway.keys.service import CLI
from gateway.usage import UsageReader

pytestmark = pytest.mark.integration

MALFORMED = "sk_live_" + "A" * 38  # fails the checksum: refused without the store


@pytest.fixture
async def store(tmp_path):
    server = RedisServer.plain(tmp_path / "redis", persist=True).start()
    yield server
    server.stop()


class Setup:
    def __init__(self, gw: Any, service: Any, client: aioredis.Redis, prefix: str):
        self.gw = gw
        self.service = service
        self.client = client
        self.prefix = prefix


@pytest.fixture
async def outage_gateway(store, gateway_process, base_config, upstream, key_prefix):
    clients: list[aioredis.Redis] = []

    async def start(**keys: Any) -> Setup:
        data = base_config(
            redis={"url": store.url},
            keys=keys,
            routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
        )
        gw = gateway_process(data)
        await asyncio.to_thread(gw.start)
        # Retries, so that the test's own connection outlives the store's restarts.
        client = aioredis.Redis.from_url(
            store.url, decode_responses=True, retry=Retry(ExponentialBackoff(), 3)
        )
        clients.append(client)
        return Setup(gw, service_for(client, parse_config(data)), client, key_prefix)

    yield start
    for client in clients:
        await client.aclose()


async def call(http: aiohttp.ClientSession, url: str, secret: str | None = None):
    """(status, body, headers, seconds) of one GET on a fresh connection."""
    started = time.monotonic()
    headers = {**bearer(secret), "Connection": "close"} if secret else {"Connection": "close"}
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body, resp.headers, time.monotonic() - started


async def ready(http: aiohttp.ClientSession, gw: Any) -> tuple[int, dict]:
    async with http.get(gw.admin_url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, await resp.json()


async def allowed_count(client: aioredis.Redis, prefix: str, key_id: str) -> int:
    days = await UsageReader(client, prefix).days(key_id, 2)
    return sum(day["allowed"] for day in days)


async def poll(check, timeout: float, interval: float = 0.05) -> float:
    """Await ``check()`` until it is true; the seconds it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not recovered within {timeout}s")
        await asyncio.sleep(interval)


async def test_store_down_cached_keys_work_unknown_keys_503_then_all_normal_within_5s(
    outage_gateway, store, http
):
    s = await outage_gateway(cache_ttl="1s", stale_if_error="1m")
    api = s.gw.url + "/api/things"
    account = await new_account(s.service)
    seen_id, seen = await new_key(s.service, account)
    _, unseen = await new_key(s.service, account)
    assert (await call(http, api, seen))[0] == 200

    store.stop()
    await asyncio.sleep(1.3)  # past cache_ttl: the cached entry is stale, not fresh

    during = 0
    for _ in range(10):
        status, _, _, took = await call(http, api, seen)
        assert status == 200
        assert took < 1.0
        during += 1
    status, body, headers, took = await call(http, api, unseen)
    assert status == 503
    assert body["error"]["code"] == "auth_backend_unavailable"
    assert body["error"]["type"] == "api_error"
    assert int(headers["Retry-After"]) > 0
    assert took < 1.5
    status, body, _, _ = await call(http, api, MALFORMED)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    status, body, _, _ = await call(http, api)
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    assert (await ready(http, s.gw))[0] == 503

    store.start()
    returned = time.monotonic()

    async def unseen_key_passes() -> bool:
        return (await call(http, api, unseen))[0] == 200

    async def ready_and_subscribed() -> bool:
        status, body = await ready(http, s.gw)
        return status == 200 and body.get("invalidation") == "subscribed"

    await poll(unseen_key_passes, 5)
    await poll(ready_and_subscribed, 5)
    assert time.monotonic() - returned < 5

    # The requests served from the cache during the outage are counted once the store is back.
    async def usage_written() -> bool:
        return await allowed_count(s.client, s.prefix, seen_id) == 1 + during

    await poll(usage_written, 5, interval=0.2)


async def test_revocation_after_the_store_returns_reaches_the_gateway(outage_gateway, store, http):
    s = await outage_gateway(cache_ttl="5m")  # only the invalidation channel can refresh the cache
    api = s.gw.url + "/api/things"
    account = await new_account(s.service)
    key_id, secret = await new_key(s.service, account)
    assert (await call(http, api, secret))[0] == 200

    store.stop()
    await asyncio.sleep(1.0)
    assert (await call(http, api, secret))[0] == 200  # fresh in the cache
    store.start()

    async def ready_and_subscribed() -> bool:
        status, body = await ready(http, s.gw)
        return status == 200 and body.get("invalidation") == "subscribed"

    assert await poll(ready_and_subscribed, 5) < 5
    assert (await call(http, api, secret))[0] == 200

    await s.service.revoke_key(CLI, key_id)
    revoked_at = time.monotonic()

    async def refused() -> bool:
        status, body, _, _ = await call(http, api, secret)
        return status == 401 and body["error"]["code"] == "revoked_api_key"

    await poll(refused, 2)
    assert time.monotonic() - revoked_at < 1.0


async def test_stale_if_error_window_ends(outage_gateway, store, http):
    s = await outage_gateway(cache_ttl="1s", stale_if_error="2s")
    api = s.gw.url + "/api/things"
    account = await new_account(s.service)
    _, secret = await new_key(s.service, account)
    assert (await call(http, api, secret))[0] == 200
    loaded = time.monotonic()

    store.stop()
    await asyncio.sleep(max(0.0, loaded + 1.5 - time.monotonic()))
    assert (await call(http, api, secret))[0] == 200  # stale, within the window
    await asyncio.sleep(max(0.0, loaded + 3.5 - time.monotonic()))  # ttl 1s + stale 2s passed
    status, body, _, _ = await call(http, api, secret)
    assert (status, body["error"]["code"]) == (503, "auth_backend_unavailable")


async def test_hung_store_fails_fast_and_no_request_hangs(outage_gateway, store, http):
    """SIGSTOP: the kernel still accepts connections but nothing answers (a partition)."""
    s = await outage_gateway(cache_ttl="5m")
    api = s.gw.url + "/api/things"
    account = await new_account(s.service)
    _, cached = await new_key(s.service, account)
    _, unknown = await new_key(s.service, account)
    assert (await call(http, api, cached))[0] == 200

    store.pause()
    try:
        status, body, _, took = await call(http, api, unknown)
        assert (status, body["error"]["code"]) == (503, "auth_backend_unavailable")
        assert took < 2.5  # one socket_timeout (1s), not one per retry
        # While it is marked down, lookups fail at once instead of each waiting a timeout.
        results = await asyncio.gather(*(call(http, api, unknown) for _ in range(20)))
        assert all(r[0] == 503 for r in results)
        assert max(r[3] for r in results) < 2.5
        assert sorted(r[3] for r in results)[10] < 1.0
        status, _, _, took = await call(http, api, cached)
        assert status == 200 and took < 0.5
        started = time.monotonic()
        assert (await ready(http, s.gw))[0] == 503
        assert time.monotonic() - started < 2.0
    finally:
        store.resume()

    async def unknown_passes() -> bool:
        return (await call(http, api, unknown))[0] == 200

    assert await poll(unknown_passes, 5) < 5

"""The limit store goes away: ``rate_limits.on_store_error`` decides, cached keys never get 503.

Each test runs a redis-server of its own on a free loopback port and kills
it (SIGKILL: no goodbye) while the gateway serves, then starts it again.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis
from conftest import bearer, new_account, new_key, service_for, upstream_url
from realparts import RedisServer

from gateway.config import parse_config

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, killed and restarted; every write is on disk
    before it is acknowledged, so keys survive the kill."""
    server = RedisServer.plain(tmp_path / "redis", persist=True).start()
    yield server
    server.kill()


def routes(upstream):
    return [{"name": "items", "match": "/items", "upstream": upstream_url(upstream)}]


async def statuses(http, url: str, secret: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        async with http.get(url + "/items", headers=bearer(secret)) as resp:
            await resp.read()
            out.append(resp.status)
    return out


async def started(start_gateway, base_config, upstream, own_redis, mode: str):
    gw = await start_gateway(
        base_config(
            redis={"url": own_redis.url},
            rate_limits={"on_store_error": mode},
            routes=routes(upstream),
        )
    )
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, rate_limit="3/minute")
    return gw, secret


async def test_local_mode_keeps_enforcing_in_each_worker(
    start_gateway, base_config, upstream, own_redis, http
):
    gw, secret = await started(start_gateway, base_config, upstream, own_redis, "local")
    assert await statuses(http, gw.url, secret, 1) == [200]
    own_redis.kill()
    got = await statuses(http, gw.url, secret, 6)
    assert got == [200, 200, 200, 429, 429, 429]  # this worker's own count of 3/minute
    async with http.get(gw.url + "/items", headers=bearer(secret)) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["details"]["limit"] == "3/minute"
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert gw.runtime.limiter.degraded


async def test_allow_mode_lets_cached_keys_through(
    start_gateway, base_config, upstream, own_redis, http
):
    gw, secret = await started(start_gateway, base_config, upstream, own_redis, "allow")
    assert await statuses(http, gw.url, secret, 1) == [200]
    own_redis.kill()
    assert await statuses(http, gw.url, secret, 8) == [200] * 8


async def test_deny_mode_answers_429_not_503_and_recovers(
    start_gateway, base_config, upstream, own_redis, http
):
    gw, secret = await started(start_gateway, base_config, upstream, own_redis, "deny")
    assert await statuses(http, gw.url, secret, 1) == [200]
    own_redis.kill()
    async with http.get(gw.url + "/items", headers=bearer(secret)) as resp:
        assert resp.status == 429
        body = await resp.json()
        assert body["error"]["details"]["reason"] == "store_unavailable"
        assert resp.headers["Retry-After"] == "1"
    own_redis.start()  # the same port, the same data
    deadline = time.monotonic() + 10
    while True:
        got = await statuses(http, gw.url, secret, 1)
        if got == [200] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert got == [200]
    assert not gw.runtime.limiter.degraded


async def test_a_real_gateway_keeps_serving_while_redis_is_killed_mid_traffic(
    gateway_process, base_config, upstream, own_redis, redis_client
):
    data = base_config(redis={"url": own_redis.url}, routes=routes(upstream))
    service = service_for(
        redis.asyncio.Redis.from_url(own_redis.url, decode_responses=True), parse_config(data)
    )
    account = await new_account(service)
    busy_id, busy = await new_key(service, account)  # the plan's 100000/minute: never reached
    _, small = await new_key(service, account, rate_limit="5/minute")
    await service.store.client.aclose()
    gw = gateway_process(data)
    await asyncio.to_thread(gw.start)
    seen: list[int] = []
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        assert await statuses(http, gw.url, small, 2) == [200, 200]

        async def traffic() -> None:
            while not stop.is_set():
                async with http.get(gw.url + "/items", headers=bearer(busy)) as resp:
                    await resp.read()
                    seen.append(resp.status)

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        await asyncio.sleep(0.5)
        before = len(seen)
        own_redis.kill()
        await asyncio.sleep(1.5)
        # the small key: 5/minute now counted by this worker alone, from zero
        during = await statuses(http, gw.url, small, 7)
        restarted_ms = time.time() * 1000
        own_redis.start()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*workers)
    assert before > 10 and len(seen) > before + 50  # traffic went on through the outage
    assert set(seen) == {200}, {s: seen.count(s) for s in set(seen)}
    assert during == [200] * 5 + [429] * 2
    # once Redis is back the shared counters are used again
    client = redis.asyncio.Redis.from_url(own_redis.url, decode_responses=True)
    counted = await client.zrange(f"{data['redis']['key_prefix']}rl:{{{busy_id}}}:k:60", 0, -1)
    await client.aclose()
    assert any(int(member.split(":")[1]) > restarted_ms for member in counted)

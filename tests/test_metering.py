"""Plan quotas and key credits on the request path (SPEC §16), through real gateways.

Real Redis, real gateways on loopback (in this loop, or as processes), the
real demo upstream. What is asserted is what a client sees (status, error
body, ``Retry-After``, ``X-Credits-Remaining``) and what the store holds.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from conftest import bearer, new_account, new_key, service_for, upstream_url
from prometheus_client import generate_latest
from realparts import RedisServer

from gateway.config import ConfigError, parse_config

CHECK = "/v1/auth/check"


def routes(upstream, **extra) -> list[dict]:
    url = upstream_url(upstream)
    return [
        {"name": "api", "match": "/api", "upstream": url, **extra},
        {"name": "heavy", "match": "/heavy", "upstream": url, "cost": 3},
        {"name": "free", "match": "/free", "upstream": url, "cost": 0},
    ]


def config(base_config, upstream, quota: str | None = None, **sections) -> dict:
    plans = {"default": {"rate_limit": "100000/minute"}}
    if quota is not None:
        plans["metered"] = {"rate_limit": "100000/minute", "quota": quota}
    sections.setdefault("routes", routes(upstream))
    return base_config(plans=plans, **sections)


async def call(http, gw, secret: str, path: str = "/api/thing", **headers) -> tuple:
    async with http.get(gw.url + path, headers={**bearer(secret), **headers}) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, resp.headers, body


async def balance(gw, account: str, key_id: str, mode: str = "live") -> int | None:
    found = await gw.service.balances.credits(account, mode, key_id)
    return None if found is None else found.remaining


async def quota_used(redis_client, key_prefix: str, account: str, mode: str = "live") -> int:
    used = await redis_client.hget(f"{key_prefix}mt:{{{account}:{mode}}}:q", "u")
    return int(used or 0)


def seconds_to_next_day() -> float:
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


def seconds_to_next_month() -> float:
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return (datetime(year, month, 1, tzinfo=UTC) - now).total_seconds()


# -- configuration ---------------------------------------------------------------------


def test_route_cost_defaults_to_one_and_takes_zero() -> None:
    r = {"match": "/r", "upstream": "http://127.0.0.1:1"}
    config = parse_config(
        {"routes": [{"name": "a", **r}, {"name": "b", **r, "match": "/b", "cost": 0}]}
    )
    assert [route.cost for route in config.routes] == [1, 0]
    assert config.metering.on_store_error == "deny"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"routes": [{"name": "a", "match": "/a", "upstream": "http://h", "cost": -1}]}, "cost"),
        ({"routes": [{"name": "a", "match": "/a", "upstream": "http://h", "cost": "5"}]}, "cost"),
        ({"routes": [{"name": "a", "match": "/a", "upstream": "http://h", "cost": 1.5}]}, "cost"),
        ({"metering": {"on_store_error": "local"}}, "metering.on_store_error"),
    ],
)
def test_bad_metering_settings_are_refused_naming_the_setting(data, path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(path in error for error in caught.value.errors), caught.value.errors


# -- plan quotas ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "until_reset"), [("5/day", seconds_to_next_day), ("5/month", seconds_to_next_month)]
)
async def test_a_plan_quota_is_shared_by_the_accounts_keys_then_refused_until_the_reset(
    start_gateway, base_config, upstream, http, redis_client, key_prefix, quota, until_reset
):
    gw = await start_gateway(config(base_config, upstream, quota))
    account = await new_account(gw.service, plan="metered")
    _, first = await new_key(gw.service, account, name="one")
    _, second = await new_key(gw.service, account, name="two")
    other = await new_account(gw.service, plan="metered", name="Other")
    _, others = await new_key(gw.service, other)
    got = [(await call(http, gw, secret))[0] for secret in (first, second) * 3]
    assert got == [200] * 5 + [429]
    status, headers, body = await call(http, gw, first)
    expected = until_reset()
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "quota_exceeded"
    assert body["error"]["details"]["quota"] == quota
    assert abs(int(headers["Retry-After"]) - expected) <= 2
    assert "X-Credits-Remaining" not in headers  # no credits on these keys
    assert await quota_used(redis_client, key_prefix, account) == 5
    assert (await call(http, gw, others))[0] == 200  # another account: its own budget
    _, test_key = await new_key(gw.service, account, mode="test")
    assert (await call(http, gw, test_key))[0] == 200  # test mode: a budget of its own
    await gw.runtime.usage.flush()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    keys = [k async for k in redis_client.scan_iter(match=f"{key_prefix}usage:*:{today}")]
    counts = [await redis_client.hgetall(k) for k in keys]
    assert sum(int(c.get("rate_limited", 0)) for c in counts) == 2  # counted as rate_limited
    assert sum(int(c.get("allowed", 0)) for c in counts) == 7


# -- credits ----------------------------------------------------------------------------


async def test_credits_are_spent_by_the_routes_cost_until_exhausted(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(config(base_config, upstream))
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, credits={"remaining": 7})
    status, headers, body = await call(http, gw, secret, "/heavy/x")
    assert (status, headers["X-Credits-Remaining"]) == (200, "4")
    assert body["path"] == "/heavy/x"  # the upstream answered
    status, headers, _ = await call(http, gw, secret)
    assert (status, headers["X-Credits-Remaining"]) == (200, "3")
    for _ in range(5):  # cost 0: free, and not metered
        status, headers, _ = await call(http, gw, secret, "/free/x")
        assert status == 200 and "X-Credits-Remaining" not in headers
    assert await balance(gw, account, key_id) == 3
    status, headers, _ = await call(http, gw, secret, "/heavy/x")
    assert (status, headers["X-Credits-Remaining"]) == (200, "0")
    status, headers, body = await call(http, gw, secret)
    assert status == 429
    assert body["error"]["code"] == "credits_exhausted"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["details"] == {"remaining": 0, "cost": 1}
    assert "Retry-After" not in headers  # no refill: only a top-up helps
    assert headers["X-RateLimit-Limit"] == "100000"  # the rate limit counted it
    assert (await call(http, gw, secret, "/free/x"))[0] == 200
    assert await balance(gw, account, key_id) == 0


async def test_a_cost_above_the_balance_is_refused_without_spending(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(config(base_config, upstream))
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, credits={"remaining": 2})
    status, _, body = await call(http, gw, secret, "/heavy/x")
    assert (status, body["error"]["details"]) == (429, {"remaining": 2, "cost": 3})
    status, headers, _ = await call(http, gw, secret)
    assert (status, headers["X-Credits-Remaining"]) == (200, "1")
    assert await balance(gw, account, key_id) == 1


async def test_exhausted_credits_with_a_refill_say_when_it_comes(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(config(base_config, upstream))
    account = await new_account(gw.service)
    refill = {"amount": 1, "interval": "day"}
    _, secret = await new_key(gw.service, account, credits={"remaining": 1, "refill": refill})
    assert (await call(http, gw, secret))[0] == 200
    status, headers, body = await call(http, gw, secret)
    expected = seconds_to_next_day()
    assert (status, body["error"]["code"]) == (429, "credits_exhausted")
    assert abs(int(headers["Retry-After"]) - expected) <= 2
    assert body["error"]["details"]["retry_after"] == int(headers["Retry-After"])


async def test_the_upstreams_own_credit_header_is_replaced(
    start_gateway, base_config, upstream, http
):
    url = upstream_url(upstream)
    gw = await start_gateway(
        config(base_config, upstream, routes=[{"name": "r", "match": "/respond", "upstream": url}])
    )
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, credits={"remaining": 9})
    async with http.get(
        gw.url + "/respond",
        params={"header": "X-Credits-Remaining: 1000000"},
        headers=bearer(secret),
    ) as resp:
        await resp.read()
        assert resp.headers.getall("X-Credits-Remaining") == ["8"]


# -- what spends nothing -------------------------------------------------------------------


async def test_requests_refused_by_the_rate_limit_spend_no_quota_or_credits(
    start_gateway, base_config, upstream, http, redis_client, key_prefix
):
    gw = await start_gateway(config(base_config, upstream, "100/day"))
    account = await new_account(gw.service, plan="metered")
    key_id, secret = await new_key(
        gw.service, account, rate_limit="2/minute", credits={"remaining": 10}
    )
    got = [(await call(http, gw, secret))[:2] for _ in range(5)]
    assert [s for s, _ in got] == [200, 200, 429, 429, 429]
    assert [h.get("X-Credits-Remaining") for _, h in got] == ["9", "8", None, None, None]
    status, _, body = await call(http, gw, secret)
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert await balance(gw, account, key_id) == 8
    assert await quota_used(redis_client, key_prefix, account) == 2


async def test_management_and_events_endpoints_spend_nothing(
    start_gateway, base_config, upstream, http, redis_client, key_prefix
):
    gw = await start_gateway(config(base_config, upstream, "3/day"))
    account = await new_account(gw.service, plan="metered")
    key_id, secret = await new_key(
        gw.service, account, permissions=["admin"], credits={"remaining": 2}
    )
    for path in ("/v1/api-keys", f"/v1/api-keys/{key_id}", "/v1/events", "/v1/webhook-endpoints"):
        for _ in range(3):
            async with http.get(gw.url + path, headers=bearer(secret)) as resp:
                assert resp.status == 200, (path, await resp.text())
                assert "X-Credits-Remaining" not in resp.headers
    assert await balance(gw, account, key_id) == 2
    assert await quota_used(redis_client, key_prefix, account) == 0
    status, headers, _ = await call(http, gw, secret)
    assert (status, headers["X-Credits-Remaining"]) == (200, "1")


# -- forward auth ------------------------------------------------------------------------------


async def test_forward_auth_spends_like_the_proxy_and_answers_the_balance(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(config(base_config, upstream))
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, credits={"remaining": 4})

    async def check(uri: str) -> tuple:
        headers = {**bearer(secret), "X-Forwarded-Method": "GET", "X-Forwarded-Uri": uri}
        async with http.get(gw.url + CHECK, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers

    status, headers = await check("/heavy/x")
    assert (status, headers["X-Credits-Remaining"]) == (200, "1")
    assert headers["X-Gateway-Key-Id"] == key_id
    status, headers = await check("/free/x")
    assert status == 200 and "X-Credits-Remaining" not in headers
    status, headers = await check("/heavy/x")
    assert status == 429
    assert '"code":"credits_exhausted"' in headers["X-Gateway-Error"]
    status, headers = await check("/api/x")
    assert (status, headers["X-Credits-Remaining"]) == (200, "0")
    assert await balance(gw, account, key_id) == 0


# -- alerts -------------------------------------------------------------------------------------


async def quota_alerts(gw, account: str) -> list[dict]:
    await gw.service.events.drain()
    page = await gw.service.events.list(
        account, test_only=False, limit=100, type_filter="alert.quota_threshold"
    )
    assert page is not None
    return sorted((e.public() for e in page[0]), key=lambda e: e["data"]["threshold"])


async def test_crossing_80_90_100_percent_raises_one_alert_each_per_period(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(config(base_config, upstream, "10/day"))
    account = await new_account(gw.service, plan="metered")
    key_id, secret = await new_key(gw.service, account)
    other_id, other = await new_key(gw.service, account, credits={"remaining": 20})
    got = [(await call(http, gw, secret))[0] for _ in range(7)]
    assert got == [200] * 7
    assert await quota_alerts(gw, account) == []
    got = [(await call(http, gw, s))[0] for s in (secret, other, secret, other, secret)]
    assert got == [200, 200, 200, 429, 429]
    alerts = await quota_alerts(gw, account)
    assert [(a["data"]["threshold"], a["data"]["used"]) for a in alerts] == [
        (80, 8),
        (90, 9),
        (100, 10),
    ]
    assert {a["data"]["scope"] for a in alerts} == {"quota"}
    assert {a["data"]["limit"] for a in alerts} == {10}
    assert [a["data"]["key_id"] for a in alerts] == [key_id, other_id, key_id]
    assert {(a["account_id"], a["mode"]) for a in alerts} == {(account, "live")}
    text = generate_latest(gw.runtime.metrics.registry).decode()
    assert 'gateway_alerts_total{type="quota_threshold"} 3.0' in text


async def test_credit_alerts_measure_against_the_balance_set(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(config(base_config, upstream))
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, credits={"remaining": 10})
    got = [(await call(http, gw, secret, "/heavy/x"))[0] for _ in range(4)]
    assert got == [200, 200, 200, 429]  # 3, 6, 9 spent; 1 left for a cost of 3
    assert (await call(http, gw, secret))[0] == 200
    alerts = await quota_alerts(gw, account)
    assert [
        (a["data"]["scope"], a["data"]["threshold"], a["data"]["used"], a["data"]["limit"])
        for a in alerts
    ] == [("credits", 80, 9, 10), ("credits", 90, 9, 10), ("credits", 100, 10, 10)]
    assert {a["data"]["key_id"] for a in alerts} == {key_id}


# -- the store down ------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer.plain(tmp_path / "redis", persist=True).start()
    yield server
    server.kill()


@pytest.mark.parametrize("on_store_error", ["deny", "allow"])
async def test_a_store_outage_denies_or_allows_metered_requests_as_configured(
    start_gateway, base_config, upstream, http, own_redis, on_store_error
):
    gw = await start_gateway(
        config(
            base_config,
            upstream,
            redis={"url": own_redis.url},
            metering={"on_store_error": on_store_error},
            keys={"cache_ttl": "1h"},
        )
    )
    account = await new_account(gw.service)
    _, metered = await new_key(gw.service, account, credits={"remaining": 50})
    _, plain = await new_key(gw.service, account)
    assert (await call(http, gw, metered))[0] == 200  # both keys now cached
    assert (await call(http, gw, plain))[0] == 200
    own_redis.kill()
    status, headers, body = await call(http, gw, metered)
    if on_store_error == "deny":
        assert status == 429
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["details"]["reason"] == "store_unavailable"
        assert headers["Retry-After"] == "1"
    else:
        assert status == 200
        assert "X-Credits-Remaining" not in headers  # unmetered: nothing could be read
    assert (await call(http, gw, plain))[0] == 200  # an unmetered key never asks the store
    check = {**bearer(metered), "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/x"}
    async with http.get(gw.url + CHECK, headers=check) as resp:
        await resp.read()
        assert resp.status == (429 if on_store_error == "deny" else 200)  # forward auth alike


# -- never overspent ------------------------------------------------------------------------------


async def test_four_gateway_processes_admit_exactly_the_credits_under_concurrency(
    gateway_process, base_config, upstream, redis_client, key_prefix
):
    """SPEC §16's proof: 4 processes x 200 concurrent requests at a key with 300 credits."""
    data = config(base_config, upstream)
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    key_id, secret = await new_key(service, account, credits={"remaining": 300})
    processes = [gateway_process(data, name=f"gw{i}") for i in range(4)]
    for process in processes:
        process.start(wait=False)
    await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in processes))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> tuple[int, str | None]:
            async with session.get(url + "/api/x", headers=bearer(secret)) as resp:
                await resp.read()
                code = None
                if resp.status != 200:
                    code = (await resp.json())["error"]["code"]
                return resp.status, code

        started = time.monotonic()
        results = await asyncio.gather(*(one(p.url) for p in processes for _ in range(200)))
        assert time.monotonic() - started < 60
    allowed = sum(1 for status, _ in results if status == 200)
    assert allowed == 300
    assert {code for status, code in results if status != 200} == {"credits_exhausted"}
    assert await balance_of(redis_client, key_prefix, account, key_id) == 0


async def balance_of(redis_client, key_prefix: str, account: str, key_id: str) -> int:
    return int(await redis_client.hget(f"{key_prefix}mt:{{{account}:live}}:c:{key_id}", "r"))

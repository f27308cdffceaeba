"""Several windows in one rate limit (SPEC §16): every window applies, all or nothing.

The limiter is driven on a real Redis (and on the in-process store of the
``local`` fallback) with an injected clock, so windows pass exactly when the
test says; the rest goes through real gateways to the real echo upstream,
with windows a test cannot outrun (minutes and longer).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import (
    bearer,
    new_account,
    new_key,
    run_cli,
    service_for,
    statuses_across,
    upstream_url,
    write_config,
)

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.units import parse_rate_limit
from gateway.keys.model import CompiledKey, KeyRecord
from gateway.ratelimit import MemoryLimitStore, RateLimiter, RedisLimitStore, Take
from gateway.store.connection import StoreUnavailable

START = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def compiled_key(key_id: str, rate: str | tuple[str, ...] | None, plan: str = "default"):
    record = KeyRecord(
        id=key_id,
        account_id="acct_1",
        name="k",
        mode="live",
        hash="h" + key_id,
        prefix="sk_live_",
        last4="abcd",
        rate_limit=rate,
    )
    return CompiledKey.build(record, plan)


@pytest.fixture(params=["redis", "memory"])
def store(request, redis_client, key_prefix):
    """The shared store, and the in-process one the ``local`` fallback uses."""
    if request.param == "redis":
        return RedisLimitStore(redis_client)
    return MemoryLimitStore()


def limiter_on(store, clock, prefix, plans=None, **options) -> RateLimiter:
    plans = plans or {}
    return RateLimiter(
        store, prefix=prefix, plan_rate=plans.get, clock=clock, store_clock=False, **options
    )


async def spent(redis_client, name: str, clock: Clock | None = None) -> int:
    """Units the shared store logs as spent in one counter's window (at ``clock``'s time)."""
    window_ms = int(name.rsplit(":", 1)[1]) * 1000
    now_ms = int((clock or Clock())() * 1000)
    grants = await redis_client.zrangebyscore(name, f"({now_ms - window_ms}", "+inf")
    return sum(int(grant.split(":")[0]) for grant in grants)


# -- the limiter: all or nothing ---------------------------------------------------------


async def test_a_request_refused_by_one_window_spends_nothing_from_the_others(
    store, redis_client, key_prefix
):
    clock = Clock()
    limiter = limiter_on(store, clock, key_prefix)
    key = compiled_key("key_both", ("3/second", "5/minute"))
    decisions = [await limiter.check(key, "r", None) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].limit.name == "key-second"
    assert decisions[-1].denial().details["limit"] == "3/second"
    if isinstance(store, RedisLimitStore):
        second = f"{key_prefix}rl:{{key_both}}:k:1"
        minute = f"{key_prefix}rl:{{key_both}}:k:60"
        assert (
            await spent(redis_client, second, clock),
            await spent(redis_client, minute, clock),
        ) == (3, 3)
    clock.advance(1.0)  # the second window has moved on; the minute has 2 left
    decisions = [await limiter.check(key, "r", None) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    refused = decisions[-1]
    assert refused.limit.name == "key-minute" and refused.retry_after == 59
    if isinstance(store, RedisLimitStore):
        # the refusal by the minute window took nothing from the second's
        assert (
            await spent(redis_client, second, clock),
            await spent(redis_client, minute, clock),
        ) == (2, 5)
    clock.advance(1.0)
    # the per-second window is empty, but the minute window still refuses: nothing is spent
    for _ in range(3):
        assert not (await limiter.check(key, "r", None)).allowed
    if isinstance(store, RedisLimitStore):
        assert (
            await spent(redis_client, second, clock),
            await spent(redis_client, minute, clock),
        ) == (0, 5)
    clock.advance(59.0)  # the first three units leave the minute window
    decisions = [await limiter.check(key, "r", None) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].limit.name == "key-second"


async def test_the_windows_of_a_route_apply_on_top_of_the_keys(store, key_prefix):
    clock = Clock()
    limiter = limiter_on(store, clock, key_prefix)
    key = compiled_key("key_route", ("4/second", "6/minute"))
    route = parse_rate_limit(["2/second", "3/hour"])
    on_route = [await limiter.check(key, "search", route) for _ in range(3)]
    assert [d.allowed for d in on_route] == [True, True, False]
    assert on_route[-1].limit.name == "route-search-second"
    clock.advance(1.0)
    on_route = [await limiter.check(key, "search", route) for _ in range(2)]
    assert [d.allowed for d in on_route] == [True, False]
    assert on_route[-1].limit.name == "route-search-hour"
    assert on_route[-1].denial().details == {
        "limit": "3/hour",
        "policy": "route-search-hour",
        "scope": "route",
        "route": "search",
        "retry_after": 3599,
    }
    # the key spent 3 on the route (none for the refused ones): 3 left of its minute
    elsewhere = [await limiter.check(key, "other", None) for _ in range(4)]
    assert [d.allowed for d in elsewhere] == [True, True, True, False]
    assert elsewhere[-1].limit.name == "key-minute"


async def test_a_plans_windows_apply_to_each_of_its_keys(store, key_prefix):
    clock = Clock()
    plans = {"tiered": parse_rate_limit(["2/second", "3/minute"])}
    limiter = limiter_on(store, clock, key_prefix, plans)
    first = compiled_key("key_p1", None, plan="tiered")
    second = compiled_key("key_p2", None, plan="tiered")
    assert [(await limiter.check(first, "r", None)).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert (await limiter.check(second, "r", None)).allowed
    clock.advance(1.0)
    decisions = [await limiter.check(first, "r", None) for _ in range(2)]
    assert [d.allowed for d in decisions] == [True, False]
    assert decisions[-1].limit.name == "tiered-minute" and decisions[-1].limit.plan == "tiered"


async def test_headers_list_every_window_and_describe_the_closest_to_running_out(key_prefix):
    clock = Clock()
    limiter = limiter_on(MemoryLimitStore(), clock, key_prefix)
    key = compiled_key("key_h", ("10/second", "12/minute"))
    route = parse_rate_limit("100/hour")
    policy = '"key-second";q=10;w=1, "key-minute";q=12;w=60, "route-r";q=100;w=3600'
    first = (await limiter.check(key, "r", route)).headers()
    assert first == {
        "RateLimit-Policy": policy,
        "RateLimit": '"key-second";r=9;t=1',
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "9",
        "X-RateLimit-Reset": "1",
    }
    for _ in range(8):
        await limiter.check(key, "r", route)
    clock.advance(1.0)
    # 9 spent: the second has 9 left again, the minute 2 (after this one): the minute answers
    headers = (await limiter.check(key, "r", route)).headers()
    assert headers["RateLimit-Policy"] == policy
    assert headers["RateLimit"] == '"key-minute";r=2;t=59'
    assert headers["X-RateLimit-Limit"] == "12"


async def test_a_lease_for_several_windows_grants_each_the_same_units(redis_client, key_prefix):
    """Units leased for waiting requests are leased from every window alike: none of one window
    is held for requests another would refuse."""
    clock = Clock()
    limiter = limiter_on(RedisLimitStore(redis_client), clock, key_prefix)
    key = compiled_key("key_lease", ("5/minute", "1000/hour"))
    decisions = await asyncio.gather(*(limiter.check(key, "r", None) for _ in range(8)))
    assert sum(d.allowed for d in decisions) == 5
    minute = f"{key_prefix}rl:{{key_lease}}:k:60"
    hour = f"{key_prefix}rl:{{key_lease}}:k:3600"
    assert (await spent(redis_client, minute), await spent(redis_client, hour)) == (5, 5)


class DownStore:
    """A shared store that is unreachable."""

    async def take(self, takes, now_ms=None):
        raise StoreUnavailable("connection refused")


async def test_while_the_store_is_down_the_local_limiter_keeps_every_window(key_prefix):
    clock = Clock()
    limiter = limiter_on(DownStore(), clock, key_prefix, on_store_error="local")
    key = compiled_key("key_down", ("2/second", "3/minute"))
    decisions = [await limiter.check(key, "r", None) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[-1].limit.name == "key-second"
    clock.advance(1.0)
    decisions = [await limiter.check(key, "r", None) for _ in range(2)]
    assert [d.allowed for d in decisions] == [True, False]
    assert decisions[-1].limit.name == "key-minute"  # the refused third spent no minute unit


async def test_the_store_grants_every_window_the_same_units_or_none(store, key_prefix):
    minute = Take(key=key_prefix + "w:60", limit=3, window_ms=60_000, want=5)
    hour = Take(key=key_prefix + "w:3600", limit=100, window_ms=3_600_000, want=5)
    first = await store.take([minute, hour], 1_000)
    assert [g.granted for g in first] == [3, 3]  # not 5 of the hour for 3 of the minute
    assert [g.remaining for g in first] == [0, 97]
    refused = await store.take([minute, hour], 2_000)
    assert [g.granted for g in refused] == [0, 0]
    assert refused[0].retry_ms == 59_000 and refused[1].retry_ms == 0  # the minute refused
    assert refused[1].remaining == 97  # and the hour gave nothing for it


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, words",
    [
        ([], "1 to 5"),
        (["10/second", "20/second"], "two rates per second"),
        (["10/second", "lots"], "not a rate"),
        (["1/second", "1/minute", "1/hour", "1/day", "2/day", "3/day"], "1 to 5"),
        ({"second": 10}, "expected a rate"),
    ],
)
def test_config_refuses_bad_lists_naming_the_field(base_config, value, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(base_config(plans={"default": {"rate_limit": value}}))
    [error] = caught.value.errors
    assert error.startswith("plans.default.rate_limit: ") and words in error, error
    with pytest.raises(ConfigError) as caught:
        parse_config(
            base_config(
                routes=[
                    {
                        "name": "r",
                        "match": "/r",
                        "upstream": "http://127.0.0.1:1",
                        "rate_limit": value,
                    }
                ]
            )  # fmt: skip
        )
    [error] = caught.value.errors
    assert error.startswith("routes[0].rate_limit: ") and words in error, error


def test_config_takes_yaml_lists(tmp_path, base_config):
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "redis: {url: 'redis://127.0.0.1:6379/0'}\n"
        "plans:\n"
        "  default: {rate_limit: [10/second, 1000/hour]}\n"
        "  pro: {rate_limit: 100/minute}\n"
        "routes:\n"
        "  - {name: r, match: /r, upstream: 'http://127.0.0.1:1', rate_limit: [1000/day, 5/second]}\n"
    )
    config = load_config(path)
    assert [str(r) for r in config.plans["default"].rate_limit] == ["10/second", "1000/hour"]
    assert [str(r) for r in config.plans["pro"].rate_limit] == ["100/minute"]
    assert [str(r) for r in config.routes[0].rate_limit] == ["5/second", "1000/day"]


# -- through the gateway ---------------------------------------------------------------------


def windows_config(base_config, upstream, **sections):
    return base_config(
        plans={
            "default": {"rate_limit": "100000/minute"},
            "tiered": {"rate_limit": ["4/minute", "6/hour"]},
        },
        routes=[
            {"name": "items", "match": "/items", "upstream": upstream_url(upstream)},
            {
                "name": "search",
                "match": "/search",
                "upstream": upstream_url(upstream),
                "rate_limit": ["2/minute", "50/day"],
            },
        ],  # fmt: skip
        **sections,
    )


@pytest.fixture
async def admin(start_gateway, base_config, upstream):
    """A gateway, an account and a live admin key: (gateway, account id, headers)."""
    gw = await start_gateway(windows_config(base_config, upstream))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, name="admin", permissions=["admin"])
    return gw, account, bearer(secret)


async def test_api_round_trip_and_the_gateway_follows(admin, http, redis_client, key_prefix):
    gw, account, headers = admin
    body = {"name": "two windows", "rate_limit": ["5/hour", "3/minute"]}
    async with http.post(gw.url + "/v1/api-keys", json=body, headers=headers) as resp:
        created = (await resp.json())["data"]
        assert resp.status == 201, created
    assert created["rate_limit"] == ["5/hour", "3/minute"]  # as given
    async with http.get(gw.url + f"/v1/api-keys/{created['id']}", headers=headers) as resp:
        assert (await resp.json())["data"]["rate_limit"] == ["5/hour", "3/minute"]
    statuses = []
    for _ in range(4):
        async with http.get(gw.url + "/items", headers=bearer(created["key"])) as resp:
            statuses.append(resp.status)
            answer = await resp.json()
            seen = dict(resp.headers)
    assert statuses == [200, 200, 200, 429]
    assert answer["error"]["details"]["policy"] == "key-minute"
    assert seen["RateLimit-Policy"] == '"key-minute";q=3;w=60, "key-hour";q=5;w=3600'
    assert seen["RateLimit"].startswith('"key-minute";r=0;t=')
    assert seen["X-RateLimit-Limit"] == "3" and seen["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(seen["Retry-After"]) <= 60
    hour = f"{key_prefix}rl:{{{created['id']}}}:k:3600"
    assert await redis_client.zcard(hour) == 3  # the refusal took nothing from the hour
    patch = {"rate_limit": "100/minute"}
    url = gw.url + f"/v1/api-keys/{created['id']}"
    async with http.patch(url, json=patch, headers=headers) as resp:
        assert resp.status == 200 and (await resp.json())["data"]["rate_limit"] == "100/minute"
    for _ in range(50):  # the cached key follows the change
        async with http.get(gw.url + "/items", headers=bearer(created["key"])) as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.1)
    assert resp.status == 200 and resp.headers["RateLimit-Policy"] == '"key";q=100;w=60'


@pytest.mark.parametrize(
    "value",
    [
        [],
        ["1/minute", "2/minute"],
        ["1/minute", 2],
        ["1 / minute"],
        ["1/second", "1/minute", "1/hour", "1/day", "2/day", "3/day"],
        {"minute": 1},
        5,
    ],
)
async def test_api_refuses_bad_lists_naming_the_field(admin, http, value):
    gw, _, headers = admin
    body = {"name": "bad", "rate_limit": value}
    async with http.post(gw.url + "/v1/api-keys", json=body, headers=headers) as resp:
        error = (await resp.json())["error"]
        assert resp.status == 400, error
    assert error["details"] == {"field": "rate_limit"} and "rate_limit" in error["message"]


async def test_plan_and_route_windows_through_the_gateway(
    start_gateway, base_config, upstream, http, redis_client, key_prefix
):
    gw = await start_gateway(windows_config(base_config, upstream))
    account = await new_account(gw.service, plan="tiered")
    key_id, secret = await new_key(gw.service, account)
    statuses = []
    for _ in range(3):
        async with http.get(gw.url + "/search", headers=bearer(secret)) as resp:
            statuses.append(resp.status)
            answer = await resp.json()
            if len(statuses) == 1:
                first = dict(resp.headers)
    assert statuses == [200, 200, 429]
    assert answer["error"]["details"]["policy"] == "route-search-minute"
    assert first["RateLimit-Policy"] == (
        '"tiered-minute";q=4;w=60, "tiered-hour";q=6;w=3600, '
        '"route-search-minute";q=2;w=60, "route-search-day";q=50;w=86400'
    )
    assert first["RateLimit"].startswith('"route-search-minute";r=1;t=')
    statuses = []
    for _ in range(3):
        async with http.get(gw.url + "/items", headers=bearer(secret)) as resp:
            statuses.append(resp.status)
            answer = await resp.json()
    assert statuses == [200, 200, 429]  # 2 of the plan's 4 a minute were spent on /search
    assert answer["error"]["details"]["policy"] == "tiered-minute"
    prefix = f"{key_prefix}rl:{{{key_id}}}:"
    # 4 admitted in all; the 2 refusals spent nothing from the hour or from the route's day
    assert await redis_client.zcard(prefix + "k:3600") == 4
    assert await redis_client.zcard(prefix + "r:search:86400") == 2


async def test_two_gateway_processes_share_every_window_exactly(
    gateway_process, base_config, upstream, redis_client, key_prefix
):
    data = windows_config(base_config, upstream)
    data["plans"]["default"] = {"rate_limit": ["20/minute", "1000/hour"]}
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    key_id, secret = await new_key(service, account)
    replicas = [gateway_process(data, name=f"gw{n}") for n in range(2)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))

    statuses = await statuses_across([r.url for r in replicas], "/items", secret, 60)
    assert statuses.count(200) == 20 and statuses.count(429) == 40
    hour = f"{key_prefix}rl:{{{key_id}}}:k:3600"
    grants = await redis_client.zrange(hour, 0, -1)
    assert sum(int(g.split(":")[0]) for g in grants) == 20  # refusals spent none of the hour


async def test_cli_round_trip(tmp_path, base_config, upstream, redis_client):
    data = windows_config(base_config, upstream)
    cfg = write_config(tmp_path / "gateway.yaml", data)
    account = await new_account(service_for(redis_client, parse_config(data)))
    made = run_cli(cfg, "keys", "create", "--account", account, "--name", "cli",
                   "--rate-limit", "10/second,1000/hour", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["rate_limit"] == ["10/second", "1000/hour"]
    shown = run_cli(cfg, "keys", "show", created["id"])
    assert shown.returncode == 0, shown.stderr
    assert "10/second, 1000/hour" in shown.stdout
    updated = run_cli(cfg, "keys", "update", created["id"], "--rate-limit", "5/second",
                      "--rate-limit", "50/minute", "--json")  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["rate_limit"] == ["5/second", "50/minute"]
    one = run_cli(cfg, "keys", "update", created["id"], "--rate-limit", "7/minute", "--json")
    assert json.loads(one.stdout)["rate_limit"] == "7/minute"
    bad = run_cli(cfg, "keys", "update", created["id"], "--rate-limit", "5/second,6/second")
    assert bad.returncode == 1 and "rate_limit" in bad.stderr and "per second" in bad.stderr

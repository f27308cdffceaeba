"""The limiter the pipeline calls: grants spent locally, exact budgets, headers, outages.

Time is an injected clock that the tests move; "replicas" are several
limiters on one store, as several gateway processes would be on one Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import redis.asyncio as aioredis

from gateway.config.units import Rate, parse_rate
from gateway.keys.model import CompiledKey, KeyRecord
from gateway.ratelimit import Grant, MemoryLimitStore, RateLimiter, RedisLimitStore, Take
from gateway.store.connection import StoreUnavailable


class Clock:
    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore:
    """A store that counts calls, and fails while ``down``."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.down = False

    async def take(self, takes: Sequence[Take], now_ms: int | None = None) -> list[Grant]:
        self.calls += 1
        await asyncio.sleep(0)  # a round trip: other requests run meanwhile
        if self.down:
            raise StoreUnavailable("connection refused")
        return await self.inner.take(takes, now_ms)


def compiled_key(
    key_id: str = "key_a", *, plan: str = "default", rate: str | None = None, mode: str = "live"
) -> CompiledKey:
    record = KeyRecord(
        id=key_id,
        account_id="acct_1",
        name="k",
        mode=mode,
        hash="h" + key_id,
        prefix=f"sk_{mode}_",
        last4="abcd",
        rate_limit=rate,
    )
    return CompiledKey.build(record, plan)


PLANS = {"default": (parse_rate("5/minute"),), "pro": (parse_rate("1000000/minute"),)}


def limiter_on(store, clock: Clock, prefix: str = "t:", **options) -> RateLimiter:
    return RateLimiter(
        store,
        prefix=prefix,
        plan_rate=PLANS.get,
        clock=clock,
        store_clock=False,
        **options,
    )


async def outcomes(limiter: RateLimiter, key: CompiledKey, n: int, route="r", route_rate=None):
    return [await limiter.check(key, route, route_rate) for _ in range(n)]


# -- limits and windows -------------------------------------------------------------


async def test_no_limit_means_no_decision():
    limiter = limiter_on(MemoryLimitStore(), Clock())
    limiter.plan_rate = {"default": None}.get
    assert await limiter.check(compiled_key(), "r", None) is None


async def test_the_plan_limit_counts_every_request_and_the_window_slides():
    clock = Clock()
    limiter = limiter_on(MemoryLimitStore(), clock)
    key = compiled_key()
    first = await outcomes(limiter, key, 5)
    assert [d.allowed for d in first] == [True] * 5
    assert [d.remaining for d in first] == [4, 3, 2, 1, 0]
    clock.advance(20)
    refused = await limiter.check(key, "r", None)
    assert not refused.allowed and refused.retry_after == 40
    clock.advance(39.5)
    assert (await limiter.check(key, "r", None)).retry_after == 1  # never 0 while refused
    clock.advance(0.5)
    assert (await limiter.check(key, "r", None)).allowed  # 60 s after the first


async def test_a_keys_own_limit_replaces_the_plans():
    limiter = limiter_on(MemoryLimitStore(), Clock())
    key = compiled_key(rate="2/second")
    decisions = await outcomes(limiter, key, 3)
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[0].limit.scope == "key" and decisions[0].limit.rate == parse_rate("2/second")


async def test_route_limit_applies_on_top_and_the_tightest_answers():
    clock = Clock()
    limiter = limiter_on(MemoryLimitStore(), clock)
    key = compiled_key(plan="pro")
    route_rate = (parse_rate("3/second"),)
    decisions = await outcomes(limiter, key, 4, "users", route_rate)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].limit.name == "route-users"
    assert decisions[-1].denial().details == {
        "limit": "3/second",
        "policy": "route-users",
        "scope": "route",
        "route": "users",
        "retry_after": 1,
    }
    # another route is not limited by this one; the plan still counts both
    assert (await limiter.check(key, "other", None)).allowed
    clock.advance(1)
    assert (await limiter.check(key, "users", route_rate)).allowed


async def test_windows_of_second_minute_hour_and_day():
    for unit, seconds in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
        clock = Clock()
        limiter = limiter_on(MemoryLimitStore(), clock)
        key = compiled_key(rate=f"2/{unit}")
        assert [d.allowed for d in await outcomes(limiter, key, 3)] == [True, True, False]
        clock.advance(seconds - 0.01)
        assert not (await limiter.check(key, "r", None)).allowed, unit
        clock.advance(0.01)
        assert (await limiter.check(key, "r", None)).allowed, unit


async def test_live_and_test_keys_never_share_a_counter():
    limiter = limiter_on(MemoryLimitStore(), Clock())
    live = compiled_key("key_live", mode="live")
    test = compiled_key("key_test", mode="test")
    assert all(d.allowed for d in await outcomes(limiter, live, 5))
    assert not (await limiter.check(live, "r", None)).allowed
    assert all(d.allowed for d in await outcomes(limiter, test, 5))


# -- headers ----------------------------------------------------------------------------


async def test_headers_describe_the_limit_closest_to_running_out():
    clock = Clock()
    limiter = limiter_on(MemoryLimitStore(), clock)
    key = compiled_key()  # 5/minute
    route_rate = (parse_rate("3/second"),)
    first = await limiter.check(key, "users", route_rate)
    assert first.headers() == {
        "RateLimit-Policy": '"default";q=5;w=60, "route-users";q=3;w=1',
        "RateLimit": '"route-users";r=2;t=1',
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "1",
    }
    clock.advance(2)
    # the plan has 3 left, the route 2: still the route
    assert (
        (await limiter.check(key, "users", route_rate))
        .headers()["RateLimit"]
        .startswith('"route-users";r=2')
    )
    clock.advance(2)
    await limiter.check(key, "users", route_rate)
    clock.advance(2)
    # now the plan has 1 left (5 - 4) and the route 2: the plan answers
    headers = (await limiter.check(key, "users", route_rate)).headers()
    assert headers["RateLimit-Policy"] == '"default";q=5;w=60, "route-users";q=3;w=1'
    assert headers["RateLimit"] == '"default";r=1;t=54'
    assert headers["X-RateLimit-Remaining"] == "1" and headers["X-RateLimit-Reset"] == "54"


class HeldStore:
    """A store whose oldest grant is held 250 ms past its window, as a prefetched one is."""

    def __init__(self, granted: int):
        self.granted = granted

    async def take(self, takes, now_ms=None):
        if self.granted:
            return [Grant(self.granted, 10, 60_250, 0, "g1") for _ in takes]
        return [Grant(0, 0, 60_250, 60_250) for _ in takes]


async def test_reset_and_retry_never_exceed_the_window():
    allowed = await limiter_on(HeldStore(1), Clock()).check(compiled_key(), "r", None)
    assert allowed.allowed and allowed.reset == 60
    refused = await limiter_on(HeldStore(0), Clock()).check(compiled_key(), "r", None)
    assert not refused.allowed and refused.retry_after == 60 and refused.reset == 60


async def test_a_refusal_carries_retry_after_and_the_headers():
    limiter = limiter_on(MemoryLimitStore(), Clock())
    key = compiled_key(rate="1/hour")
    await limiter.check(key, "r", None)
    denial = (await limiter.check(key, "r", None)).denial()
    assert denial.code == "rate_limit_exceeded" and denial.status == 429
    assert denial.headers["Retry-After"] == "3600"
    assert denial.headers["RateLimit"] == '"key";r=0;t=3600'
    assert denial.headers["RateLimit-Policy"] == '"key";q=1;w=3600'
    assert denial.headers["X-RateLimit-Remaining"] == "0"
    assert denial.details["limit"] == "1/hour" and denial.details["scope"] == "key"
    assert "1/hour" in (denial.message or "")


# -- shared budgets, few store calls ------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def shared_store(request, redis_client: aioredis.Redis):
    return MemoryLimitStore() if request.param == "memory" else RedisLimitStore(redis_client)


async def test_replicas_share_one_exact_budget(shared_store, key_prefix):
    clock = Clock()
    replicas = [limiter_on(shared_store, clock, key_prefix) for _ in range(3)]
    key = compiled_key(rate="20/minute")

    async def burst(limiter: RateLimiter) -> int:
        decisions = await asyncio.gather(*(limiter.check(key, "r", None) for _ in range(15)))
        return sum(d.allowed for d in decisions)

    assert sum(await asyncio.gather(*(burst(r) for r in replicas))) == 20


async def test_busy_keys_spend_prefetched_grants_without_exceeding_the_limit(
    shared_store, key_prefix
):
    """Sustained load from two replicas: few store calls, never over, close to the limit."""
    clock = Clock()
    counting = CountingStore(shared_store)
    replicas = [limiter_on(counting, clock, key_prefix) for _ in range(2)]
    key = compiled_key(rate="10000/second")
    allowed_at: list[float] = []
    for _ in range(3000):  # 3 s at 20 000 requests/s offered, 10 per tick on each replica
        for limiter in replicas:
            for decision in await asyncio.gather(
                *(limiter.check(key, "r", None) for _ in range(10))
            ):
                if decision.allowed:
                    allowed_at.append(clock.now)
        clock.advance(0.001)
    # never over the limit in any one-second window
    allowed_at.sort()
    start = 0
    for end, moment in enumerate(allowed_at):
        while allowed_at[start] <= moment - 1.0:
            start += 1
        assert end - start + 1 <= 10_000
    assert len(allowed_at) >= 0.95 * 30_000
    assert counting.calls < len(allowed_at) / 20


async def test_waiting_requests_share_one_store_call():
    counting = CountingStore(MemoryLimitStore())
    limiter = limiter_on(counting, Clock())
    key = compiled_key(plan="pro")
    decisions = await asyncio.gather(*(limiter.check(key, "r", None) for _ in range(50)))
    assert all(d.allowed for d in decisions)
    assert counting.calls == 1
    assert sorted(d.remaining for d in decisions) == list(range(1_000_000 - 50, 1_000_000))


async def test_a_spent_key_is_refused_without_store_calls_until_a_unit_frees():
    clock = Clock()
    counting = CountingStore(MemoryLimitStore())
    limiter = limiter_on(counting, clock)
    key = compiled_key(rate="2/minute")
    await outcomes(limiter, key, 3)
    calls = counting.calls
    assert not any(d.allowed for d in await outcomes(limiter, key, 100))
    assert counting.calls == calls
    clock.advance(60)
    assert (await limiter.check(key, "r", None)).allowed


# -- the store down -----------------------------------------------------------------


async def test_local_mode_keeps_enforcing_from_memory():
    clock = Clock()
    counting = CountingStore(MemoryLimitStore())
    limiter = limiter_on(counting, clock, on_store_error="local")
    key = compiled_key(rate="3/minute")
    assert (await limiter.check(key, "r", None)).allowed
    counting.down = True
    decisions = await outcomes(limiter, key, 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert limiter.degraded


async def test_allow_mode_lets_requests_through():
    counting = CountingStore(MemoryLimitStore())
    limiter = limiter_on(counting, Clock(), on_store_error="allow")
    counting.down = True
    decisions = await outcomes(limiter, compiled_key(rate="2/minute"), 5)
    assert all(d.allowed for d in decisions)


async def test_deny_mode_refuses_with_429_and_recovers():
    clock = Clock()
    counting = CountingStore(MemoryLimitStore())
    limiter = limiter_on(counting, clock, on_store_error="deny")
    key = compiled_key(rate="100/minute")
    counting.down = True
    refused = await limiter.check(key, "r", None)
    assert not refused.allowed
    denial = refused.denial()
    assert denial.status == 429 and denial.headers["Retry-After"] == "1"
    assert denial.details["reason"] == "store_unavailable"
    counting.down = False
    clock.advance(1)
    limiter._store_down_until = 0.0  # the store is retried a second after the failure
    assert (await limiter.check(key, "r", None)).allowed


async def test_idle_counters_are_forgotten():
    clock = Clock()
    limiter = limiter_on(MemoryLimitStore(), clock)
    for n in range(10):
        await limiter.check(compiled_key(f"key_{n}"), "r", None)
    assert len(limiter) == 10
    clock.advance(61)
    limiter.prune()
    assert len(limiter) == 0 and len(limiter.fallback) == 0


def test_rates_parse_as_the_limiter_expects():
    assert parse_rate("100/second") == Rate(100, 1, "second")


async def test_prefetched_units_a_replica_does_not_spend_go_back_to_the_others(
    shared_store, key_prefix
):
    """A busy replica takes units ahead; when its client moves to another replica, what it
    had not spent goes back once its hold ends, so together they admit the whole limit."""
    a = RateLimiter(shared_store, prefix=key_prefix, plan_rate=PLANS.get)
    b = RateLimiter(shared_store, prefix=key_prefix, plan_rate=PLANS.get)
    key = compiled_key(rate="1000/minute")

    async def burst(limiter: RateLimiter, n: int, size: int) -> int:
        decisions = []
        while len(decisions) < n:  # concurrent bursts: a busy key, worth prefetching for
            wave = min(size, n - len(decisions))
            decisions += await asyncio.gather(*(limiter.check(key, "r", None) for _ in range(wave)))
        return sum(d.allowed for d in decisions)

    allowed = await burst(a, 290, 20)  # the last wave smaller: a is left holding units
    assert allowed == 290
    await asyncio.sleep(0.6)  # a's hold (at most 250 ms) ends and what it holds goes back
    allowed += await burst(b, 800, 20)
    assert allowed == 1000

"""The sliding log of grants: the Redis script and the in-memory store answer alike.

Time is passed in (milliseconds), so window edges are exact.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.ratelimit import Grant, MemoryLimitStore, RedisLimitStore, Take

MINUTE = 60_000


@pytest.fixture(params=["memory", "redis"])
def store(request, redis_client: aioredis.Redis):
    if request.param == "memory":
        return MemoryLimitStore()
    return RedisLimitStore(redis_client)


def counter(key_prefix: str, name: str = "k:60") -> str:
    return f"{key_prefix}rl:{{key_test}}:{name}"


async def take(store, key: str, now: int, *, limit: int = 3, window: int = MINUTE, want=1, hold=0):
    [grant] = await store.take([Take(key, limit, window, want, hold)], now)
    assert bool(grant.grant_id) == bool(grant.granted)
    return Grant(grant.granted, grant.remaining, grant.reset_ms, grant.retry_ms)


async def test_grants_up_to_the_limit_then_refuses_until_the_oldest_leaves(store, key_prefix):
    key = counter(key_prefix)
    assert await take(store, key, 1_000) == Grant(1, 2, MINUTE)
    assert await take(store, key, 2_000) == Grant(1, 1, MINUTE - 1_000)
    assert await take(store, key, 3_000) == Grant(1, 0, MINUTE - 2_000)
    refused = await take(store, key, 30_000)
    assert refused == Grant(0, 0, 31_000, 31_000)  # the first grant leaves at 61 000
    assert (await take(store, key, 60_999)).granted == 0
    assert await take(store, key, 61_000) == Grant(1, 0, 1_000, 0)
    assert (await take(store, key, 61_500)).retry_ms == 500  # the second leaves at 62 000


async def test_no_double_budget_at_a_window_edge(store, key_prefix):
    """A fixed window would let 2x through around the boundary; a sliding one never does."""
    key = counter(key_prefix)
    allowed = 0
    for now in range(59_000, 61_000, 10):  # a burst straddling t = 60 s
        allowed += (await take(store, key, now, limit=10)).granted
    assert allowed == 10
    # and in any 60 s span the total stays at the limit: half the window later, still nothing
    assert (await take(store, key, 100_000, limit=10)).granted == 0
    assert (await take(store, key, 119_000, limit=10)).granted == 1


async def test_grants_are_partial_at_the_end_of_the_budget(store, key_prefix):
    key = counter(key_prefix)
    assert (await take(store, key, 0, limit=10, want=7)).granted == 7
    assert await take(store, key, 1, limit=10, want=7) == Grant(3, 0, MINUTE - 1)
    refused = await take(store, key, 2, limit=10, want=7)
    assert refused.granted == 0 and refused.retry_ms == MINUTE - 2  # 7 units leave at 60 000


async def test_held_grants_stay_counted_until_their_hold_ends(store, key_prefix):
    key = counter(key_prefix)
    assert (await take(store, key, 0, limit=5, want=5, hold=250)).granted == 5
    assert (await take(store, key, 60_000, limit=5)).granted == 0
    assert (await take(store, key, 60_249, limit=5)).retry_ms == 1
    assert (await take(store, key, 60_250, limit=5)).granted == 1


async def test_several_counters_are_granted_all_or_none(store, key_prefix):
    plan, route = counter(key_prefix, "k:60"), counter(key_prefix, "r:users:1")
    both = [Take(plan, 100, MINUTE, 1), Take(route, 2, 1_000, 1)]
    assert [g.granted for g in await store.take(both, 0)] == [1, 1]
    assert [g.granted for g in await store.take(both, 10)] == [1, 1]
    refused = await store.take(both, 20)
    assert [g.granted for g in refused] == [0, 0]
    assert refused[0].retry_ms == 0 and refused[0].remaining == 98  # the plan had room
    assert refused[1].retry_ms == 980
    # the refusal spent nothing from the plan's budget
    assert (await store.take([Take(plan, 100, MINUTE, 1)], 30))[0].remaining == 97


async def test_unspent_units_of_a_grant_are_given_back(store, key_prefix):
    key = counter(key_prefix)
    [grant] = await store.take([Take(key, 10, MINUTE, 8, 100)], 0)
    assert grant.granted == 8
    [again] = await store.take([Take(key, 10, MINUTE, 1, 0, grant.grant_id, 5)], 50)
    assert (again.granted, again.remaining) == (1, 6)  # 3 of the 8 spent, then 1
    # a grant is given back once only
    [third] = await store.take([Take(key, 10, MINUTE, 1, 0, grant.grant_id, 3)], 60)
    assert (third.granted, third.remaining) == (1, 5)
    # a grant that already left the window is not refunded twice
    [late] = await store.take([Take(key, 10, MINUTE, 1, 0, again.grant_id, 1)], 70_000)
    assert (late.granted, late.remaining) == (1, 9)  # only the newest grant is left


async def test_a_lower_limit_applies_at_once_to_what_was_spent(store, key_prefix):
    key = counter(key_prefix)
    for now in range(5):
        await take(store, key, now, limit=10)
    assert (await take(store, key, 10, limit=4)).granted == 0


async def test_redis_keys_share_the_api_keys_hash_tag_and_expire(
    redis_client: aioredis.Redis, key_prefix: str
):
    store = RedisLimitStore(redis_client)
    key = counter(key_prefix)
    await store.take([Take(key, 5, 1_000, 1)])  # the server's own clock
    names = sorted([k async for k in redis_client.scan_iter(match=key_prefix + "rl:*")])
    assert names == [key, key + ":n"]
    for name in names:
        assert name[name.index("{") : name.index("}") + 1] == "{key_test}"
        assert 0 < await redis_client.pttl(name) <= 2_000


async def test_redis_rebuilds_a_lost_total_from_the_log(redis_client, key_prefix):
    store = RedisLimitStore(redis_client)
    key = counter(key_prefix)
    await take(store, key, 0, want=2)
    await redis_client.delete(key + ":n")
    assert await take(store, key, 1) == Grant(1, 0, MINUTE - 1)
    assert (await take(store, key, 2)).granted == 0

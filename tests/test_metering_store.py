"""The quota and credit scripts against the real store: calendar periods, refills, all or
nothing, alert crossings, and coalesced spends that never overspend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from gateway.metering import Meter, MeterStore, Quota, Refill, Unmetered, parse_quota
from gateway.store.connection import StoreUnavailable


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def until(now: str, then: str) -> int:
    return ms(then) - ms(now)


@pytest.fixture
def store(redis_client: aioredis.Redis, key_prefix: str) -> MeterStore:
    return MeterStore(redis_client, key_prefix)


@pytest.mark.parametrize(
    ("now", "unit", "next_start"),
    [
        ("2026-12-05T19:04:45", "day", "2026-12-06T00:00:00"),
        ("2026-12-31T23:59:59.999", "month", "2027-01-01T00:00:00"),
        ("2028-02-28T12:00:00", "month", "2028-03-01T00:00:00"),  # leap year
        ("2027-02-01T00:00:00", "month", "2027-03-01T00:00:00"),
        ("2100-02-28T00:00:00", "day", "2100-03-01T00:00:00"),  # not a leap year
        ("2000-02-29T00:00:00", "month", "2000-03-01T00:00:00"),
    ],
)
async def test_quota_resets_at_the_next_utc_calendar_period(
    store: MeterStore, now: str, unit: str, next_start: str
) -> None:
    (spent,) = await store.spend("acct", "live", Quota(5, unit), [(None, 1)], now_ms=ms(now))
    assert spent.allowed
    assert spent.quota_used == 1
    assert spent.quota_reset_ms == until(now, next_start)


async def test_quota_is_exact_and_starts_again_in_the_next_period(store: MeterStore) -> None:
    quota = Quota(3, "month")
    now = ms("2026-11-30T23:59:00")
    results = await store.spend("acct", "live", quota, [(None, 1)] * 5, now_ms=now)
    assert [r.reason for r in results] == [None, None, None, "quota_exceeded", "quota_exceeded"]
    assert results[-1].quota_used == 3
    (later,) = await store.spend("acct", "live", quota, [(None, 1)], now_ms=ms("2026-12-01T00:00"))
    assert later.allowed and later.quota_used == 1
    # the other mode has its own budget
    (test_mode,) = await store.spend("acct", "test", quota, [(None, 1)], now_ms=now)
    assert test_mode.quota_used == 1


async def test_credits_spend_by_cost_and_refuse_without_spending(store: MeterStore) -> None:
    await store.set_credits("acct", "live", "key_1", 5, None)
    results = await store.spend("acct", "live", None, [("key_1", 2), ("key_1", 2), ("key_1", 2)])
    assert [r.reason for r in results] == [None, None, "credits_exhausted"]
    assert [r.credits_remaining for r in results] == [3, 1, 1]
    assert results[2].credits_reset_ms == -1  # no refill: no Retry-After to give
    (free,) = await store.spend("acct", "live", None, [("key_1", 0)])
    assert free.allowed and free.credits_remaining == 1
    balance = await store.credits("acct", "live", "key_1")
    assert balance is not None and balance.remaining == 1 and balance.refill is None


async def test_a_request_refused_by_the_quota_spends_no_credits(store: MeterStore) -> None:
    await store.set_credits("acct", "live", "key_1", 10, None)
    quota = Quota(1, "day")
    results = await store.spend("acct", "live", quota, [("key_1", 1), ("key_1", 1)])
    assert [r.reason for r in results] == [None, "quota_exceeded"]
    assert (await store.credits("acct", "live", "key_1")).remaining == 9


async def test_a_request_refused_for_credits_spends_no_quota(store: MeterStore) -> None:
    await store.set_credits("acct", "live", "poor", 0, None)
    quota = Quota(10, "day")
    results = await store.spend("acct", "live", quota, [("poor", 1), (None, 1)])
    assert [r.reason for r in results] == ["credits_exhausted", None]
    assert results[1].quota_used == 1


async def test_refill_sets_remaining_at_the_start_of_each_period(store: MeterStore) -> None:
    now = ms("2026-12-05T10:00:00")
    await store.set_credits("acct", "live", "k", 2, Refill(100, "day"), now_ms=now)
    results = await store.spend("acct", "live", None, [("k", 1)] * 3, now_ms=now)
    assert [r.reason for r in results] == [None, None, "credits_exhausted"]
    assert results[2].credits_reset_ms == until("2026-12-05T10:00:00", "2026-12-06T00:00:00")
    tomorrow = ms("2026-12-06T00:00:00")
    balance = await store.credits("acct", "live", "k", now_ms=tomorrow)
    assert balance is not None
    assert (balance.remaining, balance.refill) == (100, Refill(100, "day"))
    (spent,) = await store.spend("acct", "live", None, [("k", 5)], now_ms=tomorrow)
    assert spent.credits_remaining == 95


async def test_thresholds_are_crossed_once_per_period(store: MeterStore) -> None:
    quota = Quota(10, "month")
    now = ms("2026-12-05T10:00:00")
    crossings = []
    for _ in range(12):
        (r,) = await store.spend("acct", "live", quota, [(None, 1)], now_ms=now)
        crossings.extend((c.budget, c.thresholds, c.used) for c in r.crossings)
    assert crossings == [("quota", (80,), 8), ("quota", (90,), 9), ("quota", (100,), 10)]
    (r,) = await store.spend("acct", "live", quota, [(None, 1)], now_ms=ms("2027-01-01T00:00"))
    assert r.crossings == ()
    await store.set_credits("acct", "live", "k", 10, None)
    (big,) = await store.spend("acct", "live", None, [("k", 10)])
    assert [(c.budget, c.thresholds, c.used, c.limit) for c in big.crossings] == [
        ("credits", (80, 90, 100), 10, 10)
    ]


async def test_balances_are_under_one_hash_tag_per_account_and_mode(
    store: MeterStore, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await store.set_credits("acct", "live", "k", 3, Refill(3, "month"))
    await store.spend("acct", "live", Quota(5, "day"), [("k", 1)])
    keys = sorted([k async for k in redis_client.scan_iter(match=key_prefix + "*")])
    assert keys == [f"{key_prefix}mt:{{acct:live}}:c:k", f"{key_prefix}mt:{{acct:live}}:q"]
    ttl = await redis_client.pttl(f"{key_prefix}mt:{{acct:live}}:q")
    assert 0 < ttl <= timedelta(days=2).total_seconds() * 1000


async def test_coalesced_spends_from_many_tasks_never_overspend(store: MeterStore) -> None:
    await store.set_credits("acct", "live", "k", 300, None)
    meter = Meter(store)
    results = await asyncio.gather(
        *(meter.spend("acct", "live", Quota(1000, "day"), "k", 1) for _ in range(500))
    )
    assert sum(r.allowed for r in results) == 300
    assert (await store.credits("acct", "live", "k")).remaining == 0
    assert meter.store_calls < 500  # requests waiting together share a round trip


async def test_a_store_failure_refuses_metered_requests_by_default(
    redis_url: str, key_prefix: str
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        store = MeterStore(client, key_prefix)
        with pytest.raises(StoreUnavailable):
            await store.spend("acct", "live", None, [("k", 1)])
        denied = await Meter(store).spend("acct", "live", Quota(5, "day"), "k", 1)
        assert isinstance(denied, Unmetered)
        assert (denied.allowed, denied.reason) == (False, "store_unavailable")
        allowed = await Meter(store, on_store_error="allow").spend("acct", "live", None, "k", 1)
        assert allowed.allowed
    finally:
        await client.aclose()


@pytest.mark.parametrize("text", ["", "10", "10/week", "-1/day", "ten/day", "0/month"])
def test_quota_syntax_errors_name_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="quota"):
        parse_quota(text)


# -- credits on keys: the key service keeps the record and the balance together ----------


async def test_a_keys_credits_are_set_topped_up_shared_by_its_rotation_and_removed(
    redis_client: aioredis.Redis, base_config
) -> None:
    from conftest import new_account, service_for

    from gateway.config import parse_config
    from gateway.keys.service import CLI, InvalidRequest

    service = service_for(redis_client, parse_config(base_config()))
    account = await new_account(service)
    refill = {"amount": 1000, "interval": "month"}
    record, _ = await service.create_key(
        CLI, account, {"name": "metered", "credits": {"remaining": 5, "refill": refill}}
    )
    assert record.credits == {"id": record.id, "refill": refill}
    shown = await service.credits_of([record])
    assert shown[record.id] == {"remaining": 5, "refill": refill}

    store = service.balances
    await store.spend(account, "live", None, [(record.id, 2)])
    # PATCH without remaining keeps the balance and changes the refill
    record = await service.update_key(CLI, record.id, {"credits": {"refill": None}})
    assert (await service.credits_of([record]))[record.id] == {"remaining": 3, "refill": None}

    new, _, old = await service.rotate_key(CLI, record.id, "1h")
    await store.spend(account, "live", None, [(new.credits_id, 1)])
    both = await service.credits_of([new, old])
    assert both[new.id]["remaining"] == both[old.id]["remaining"] == 2

    # removing credits from the new key keeps the balance the old key still spends
    new = await service.update_key(CLI, new.id, {"credits": None})
    assert new.credits is None and new.public()["credits"] is None
    assert (await store.credits(account, "live", old.id)).remaining == 2

    with pytest.raises(InvalidRequest, match="credits.remaining is required"):
        await service.create_key(CLI, account, {"name": "x", "credits": {"refill": refill}})
    for bad in (-1, 1.5, True, "10", 10**16):
        with pytest.raises(InvalidRequest, match="credits.remaining must be a whole number"):
            await service.create_key(CLI, account, {"name": "x", "credits": {"remaining": bad}})
    with pytest.raises(InvalidRequest, match="interval must be 'day' or 'month'"):
        await service.create_key(
            CLI,
            account,
            {"name": "x", "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "week"}}},
        )


async def test_a_metered_key_whose_balance_is_gone_spends_nothing(store: MeterStore) -> None:
    (spent,) = await store.spend("acct", "live", None, [("vanished", 1)])
    assert (spent.reason, spent.credits_remaining) == ("credits_exhausted", 0)
    (free,) = await store.spend("acct", "live", None, [("vanished", 0)])
    assert free.allowed


async def test_a_mixed_batch_decides_each_item_as_one_by_one_would(store: MeterStore) -> None:
    """Alike neighbours travel as one run: the outcome is still each item's, in order."""
    items = [("a", 1), ("a", 1), ("b", 3), (None, 1), ("a", 1), ("b", 3), ("b", 3), ("a", 2)]
    items += [("a", 1)] * 6 + [(None, 1)] * 3 + [("b", 0)] * 2
    quota = Quota(15, "day")
    now = ms("2026-12-05T12:00:00")
    for account in ("batched", "single"):
        await store.set_credits(account, "live", "a", 9, None, now_ms=now)
        await store.set_credits(account, "live", "b", 7, None, now_ms=now)
    batched = await store.spend("batched", "live", quota, items, now_ms=now)
    single = [(await store.spend("single", "live", quota, [item], now_ms=now))[0] for item in items]
    assert batched == single
    reasons = [r.reason for r in batched]
    assert reasons.count(None) == 15  # the quota's last call goes to the first free item
    assert reasons.count("credits_exhausted") == 3  # one "b" at 3, two "a" at 1
    assert reasons[-1] == "quota_exceeded"
    assert (await store.credits("batched", "live", "a")).remaining == 0
    assert (await store.credits("batched", "live", "b")).remaining == 1

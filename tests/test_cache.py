"""The in-process key cache, driven by an injected clock and a counting loader."""

from __future__ import annotations

import asyncio

import pytest

from gateway.keys.cache import KeyCache
from gateway.store.connection import StoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Store:
    """A loader that counts its calls; ``gate`` holds loads until set; ``down`` fails them."""

    def __init__(self, known: dict[str, object]):
        self.known = known
        self.calls: list[str] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def load(self, key_hash: str) -> object | None:
        self.calls.append(key_hash)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.known.get(key_hash)


KEY_A, KEY_B, KEY_C = object(), object(), object()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> Store:
    return Store({"a": KEY_A, "b": KEY_B, "c": KEY_C})


def make_cache(store: Store, clock: Clock, **overrides: float) -> KeyCache:
    settings = {"ttl": 30.0, "negative_ttl": 5.0, "max_size": 100, "stale_if_error": 300.0}
    settings.update(overrides)
    return KeyCache(store.load, clock=clock, **settings)  # type: ignore[arg-type]


class TestHits:
    async def test_known_key_is_loaded_once_then_served_from_memory(self, store, clock):
        cache = make_cache(store, clock)
        assert await cache.get("a") is KEY_A
        for _ in range(10):
            clock.advance(2.9)
            assert await cache.get("a") is KEY_A
        assert store.calls == ["a"]
        assert (cache.hits, cache.misses) == (10, 1)

    async def test_entry_reloads_after_ttl(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        clock.advance(30.0)
        await cache.get("a")
        assert store.calls == ["a", "a"]

    async def test_changed_record_is_seen_after_ttl(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        replacement = object()
        store.known["a"] = replacement
        clock.advance(29.0)
        assert await cache.get("a") is KEY_A
        clock.advance(1.0)
        assert await cache.get("a") is replacement


class TestNegativeEntries:
    async def test_unknown_key_is_remembered_for_negative_ttl(self, store, clock):
        cache = make_cache(store, clock)
        for _ in range(20):
            assert await cache.get("garbage") is None
        assert store.calls == ["garbage"]
        clock.advance(4.9)
        assert await cache.get("garbage") is None
        assert store.calls == ["garbage"]
        clock.advance(0.1)
        assert await cache.get("garbage") is None
        assert store.calls == ["garbage", "garbage"]

    async def test_key_created_after_a_miss_is_found_once_the_negative_entry_lapses(
        self, store, clock
    ):
        cache = make_cache(store, clock)
        assert await cache.get("new") is None
        fresh = store.known["new"] = object()
        clock.advance(5.0)
        assert await cache.get("new") is fresh

    async def test_negative_entry_is_dropped_by_invalidation(self, store, clock):
        cache = make_cache(store, clock)
        assert await cache.get("new") is None
        fresh = store.known["new"] = object()
        cache.invalidate("new")
        assert await cache.get("new") is fresh


class TestSingleFlight:
    async def test_concurrent_misses_share_one_load(self, store, clock):
        cache = make_cache(store, clock)
        store.gate = asyncio.Event()
        waiters = [asyncio.create_task(cache.get("a")) for _ in range(50)]
        await asyncio.sleep(0.01)
        assert store.calls == ["a"]
        store.gate.set()
        assert all(r is KEY_A for r in await asyncio.gather(*waiters))
        assert store.calls == ["a"]

    async def test_waiters_share_the_failure_of_the_one_load(self, store, clock):
        cache = make_cache(store, clock)
        store.gate = asyncio.Event()
        store.down = True
        waiters = [asyncio.create_task(cache.get("a")) for _ in range(5)]
        await asyncio.sleep(0.01)
        store.gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results)
        assert store.calls == ["a"]

    async def test_a_cancelled_waiter_does_not_cancel_the_load(self, store, clock):
        cache = make_cache(store, clock)
        store.gate = asyncio.Event()
        first = asyncio.create_task(cache.get("a"))
        second = asyncio.create_task(cache.get("a"))
        await asyncio.sleep(0.01)
        second.cancel()
        store.gate.set()
        assert await first is KEY_A
        assert await cache.get("a") is KEY_A
        assert store.calls == ["a"]

    async def test_cancelling_the_loading_caller_does_not_fail_the_others(self, store, clock):
        """A client that hangs up mid-load must not take the other waiters down with it."""
        cache = make_cache(store, clock)
        store.gate = asyncio.Event()
        first = asyncio.create_task(cache.get("a"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(cache.get("a"))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.01)
        store.gate.set()
        assert await second is KEY_A


class TestInvalidation:
    async def test_invalidate_forgets_the_entry(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        revoked = store.known["a"] = object()
        cache.invalidate("a")
        assert await cache.get("a") is revoked
        assert store.calls == ["a", "a"]

    async def test_invalidation_during_a_load_is_not_lost(self, store, clock):
        """A load that read the old record before the change must not be cached."""
        cache = make_cache(store, clock)
        store.gate = asyncio.Event()
        loading = asyncio.create_task(cache.get("a"))
        await asyncio.sleep(0.01)
        cache.invalidate("a")  # the record changed while the load was in flight
        store.gate.set()
        assert await loading is KEY_A  # the in-flight caller gets what was read
        store.gate = None
        changed = store.known["a"] = object()
        assert await cache.get("a") is changed
        assert store.calls == ["a", "a"]

    async def test_clear_during_a_load_is_not_lost(self, store, clock):
        cache = make_cache(store, clock)
        store.gate = asyncio.Event()
        loading = asyncio.create_task(cache.get("a"))
        await asyncio.sleep(0.01)
        cache.clear()
        store.gate.set()
        await loading
        store.gate = None
        await cache.get("a")
        assert store.calls == ["a", "a"]

    async def test_expire_all_reloads_but_keeps_stale_copies(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        cache.expire_all()
        store.down = True
        assert await cache.get("a") is KEY_A  # reload failed: the stale copy serves
        assert store.calls == ["a", "a"]
        assert cache.stale_served == 1


class TestStaleIfError:
    async def test_expired_entry_serves_while_the_store_is_down(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        clock.advance(30.0 + 299.0)
        store.down = True
        assert await cache.get("a") is KEY_A
        assert cache.stale_served == 1

    async def test_stale_entry_stops_serving_after_stale_if_error(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        clock.advance(30.0 + 300.0)
        store.down = True
        with pytest.raises(StoreUnavailable):
            await cache.get("a")

    async def test_store_recovery_refreshes_the_entry(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        clock.advance(31.0)
        store.down = True
        assert await cache.get("a") is KEY_A
        store.down = False
        updated = store.known["a"] = object()
        assert await cache.get("a") is updated

    async def test_negative_entries_are_never_served_stale(self, store, clock):
        cache = make_cache(store, clock)
        assert await cache.get("garbage") is None
        clock.advance(5.0)
        store.down = True
        with pytest.raises(StoreUnavailable):
            await cache.get("garbage")

    async def test_unknown_key_with_store_down_raises(self, store, clock):
        cache = make_cache(store, clock)
        store.down = True
        with pytest.raises(StoreUnavailable):
            await cache.get("a")
        store.down = False
        assert await cache.get("a") is KEY_A  # the failure was not cached


class TestBound:
    async def test_least_recently_used_entry_is_evicted(self, store, clock):
        cache = make_cache(store, clock, max_size=2)
        await cache.get("a")
        await cache.get("b")
        await cache.get("a")  # a is now the most recently used
        await cache.get("c")  # evicts b
        assert len(cache) == 2
        assert cache.peek("a") is KEY_A and cache.peek("c") is KEY_C
        assert cache.peek("b") is None
        store.calls.clear()
        await cache.get("a")
        await cache.get("b")
        assert store.calls == ["b"]

    async def test_garbage_cannot_grow_the_cache_past_its_bound(self, store, clock):
        cache = make_cache(store, clock, max_size=10)
        for i in range(500):
            await cache.get(f"garbage-{i}")
        assert len(cache) == 10


class TestWhileChangesGoUnheard:
    """The invalidation channel is down: a change made meanwhile must still be seen soon."""

    async def test_entries_reload_now_and_then_at_most_every_given_seconds(self, store, clock):
        cache = make_cache(store, clock)
        await cache.get("a")
        assert cache.fresh("a") is KEY_A
        cache.distrust(0.5)
        assert cache.fresh("a") is None  # reloads on next use
        store.known["a"] = KEY_B  # changed meanwhile, unheard
        assert await cache.get("a") is KEY_B
        assert cache.fresh("a") is KEY_B
        clock.advance(0.5)
        assert cache.fresh("a") is None  # not the whole TTL
        cache.trust()
        assert await cache.get("a") is KEY_B
        clock.advance(29.9)
        assert cache.fresh("a") is KEY_B  # heard again: the whole TTL
        assert store.calls == ["a", "a", "a"]

    async def test_a_store_down_meanwhile_still_serves_stale_entries(self, store, clock):
        cache = make_cache(store, clock, stale_if_error=60.0)
        await cache.get("a")
        cache.distrust(0.5)
        store.down = True
        clock.advance(10)
        assert await cache.get("a") is KEY_A
        assert cache.stale_served == 1

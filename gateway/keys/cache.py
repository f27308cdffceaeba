"""The in-process key cache: a known key costs no store round trip.

Entries are keyed by the secret's hash. A hit within ``ttl`` is a dict lookup;
a miss loads through the store once however many requests wait for it;
unknown hashes are remembered for ``negative_ttl`` so garbage cannot hammer
Redis; when the store is down an entry stays usable for ``stale_if_error``
past its expiry. Changes made anywhere reach here through :meth:`invalidate`
(driven by the store's pub/sub channel); the TTL is only the fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..store.connection import StoreUnavailable
from .model import CompiledKey

Loader = Callable[[str], Awaitable[CompiledKey | None]]


class _Entry:
    __slots__ = ("value", "fresh_until", "loaded_at")

    def __init__(self, value: CompiledKey | None, fresh_until: float, loaded_at: float):
        self.value = value
        self.fresh_until = fresh_until
        self.loaded_at = loaded_at


class KeyCache:
    def __init__(
        self,
        loader: Loader,
        *,
        ttl: float,
        negative_ttl: float,
        max_size: int,
        stale_if_error: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._loader = loader
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_size = max_size
        self._stale_if_error = stale_if_error
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[CompiledKey | None]] = {}
        self._dirty_loads: set[str] = set()  # invalidated while their load was in flight
        self._fresh_for = ttl  # how long a load stays fresh: less while changes go unheard
        self.hits = 0
        self.misses = 0
        self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key_hash: str) -> CompiledKey | None:
        """A known key within its TTL, without awaiting; None means: ask :meth:`get`."""
        entry = self._entries.get(key_hash)
        if entry is not None and entry.value is not None and entry.fresh_until > self._clock():
            self._entries.move_to_end(key_hash)
            self.hits += 1
            return entry.value
        return None

    def peek(self, key_hash: str) -> CompiledKey | None:
        entry = self._entries.get(key_hash)
        return entry.value if entry is not None else None

    async def get(self, key_hash: str) -> CompiledKey | None:
        """The key for ``key_hash``, or None if the store does not know it.

        Raises :class:`StoreUnavailable` only when the store is down and no
        usable copy is held.
        """
        entry = self._entries.get(key_hash)
        now = self._clock()
        if entry is not None and entry.fresh_until > now:
            self._entries.move_to_end(key_hash)
            self.hits += 1
            return entry.value
        self.misses += 1
        pending = self._inflight.get(key_hash)
        if pending is None:
            # The load runs in a task of its own: a caller that is cancelled (its client
            # hung up) must not cancel the load the other waiters share.
            pending = asyncio.get_running_loop().create_task(self._load(key_hash, entry, now))
            pending.add_done_callback(_retrieve)
            self._inflight[key_hash] = pending
        return await asyncio.shield(pending)

    async def _load(self, key_hash: str, entry: _Entry | None, now: float) -> CompiledKey | None:
        try:
            value = await self._loader(key_hash)
        except StoreUnavailable:
            if (
                entry is not None
                and entry.value is not None
                and now - entry.fresh_until < self._stale_if_error
            ):
                self.stale_served += 1
                return entry.value
            raise
        else:
            if key_hash not in self._dirty_loads:
                self._store(key_hash, value, now)
            return value
        finally:
            self._inflight.pop(key_hash, None)
            self._dirty_loads.discard(key_hash)

    def _store(self, key_hash: str, value: CompiledKey | None, now: float) -> None:
        ttl = self._fresh_for if value is not None else min(self._negative_ttl, self._fresh_for)
        self._entries[key_hash] = _Entry(value, now + ttl, now)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)

    def put(self, key_hash: str, value: CompiledKey | None) -> None:
        self._store(key_hash, value, self._clock())

    def invalidate(self, key_hash: str) -> None:
        """Forget ``key_hash`` now; a load already in flight is not cached."""
        self._entries.pop(key_hash, None)
        if key_hash in self._inflight:
            self._dirty_loads.add(key_hash)

    def expire_all(self) -> None:
        """Make every entry reload on next use, keeping it for ``stale_if_error``."""
        now = self._clock()
        for entry in self._entries.values():
            if entry.fresh_until > now:
                entry.fresh_until = now
        self._dirty_loads.update(self._inflight)

    def distrust(self, fresh_for: float) -> None:
        """Changes are not being heard (the invalidation channel is down): every entry
        reloads on next use, and what is loaded stays fresh ``fresh_for`` at most, until
        :meth:`trust`. A store that is down meanwhile serves entries under ``stale_if_error``."""
        self._fresh_for = min(self._ttl, fresh_for)
        self.expire_all()

    def trust(self) -> None:
        """Changes are heard again: loads stay fresh for the whole ``ttl``."""
        self._fresh_for = self._ttl

    def clear(self) -> None:
        self._entries.clear()
        self._dirty_loads.update(self._inflight)


def _retrieve(task: asyncio.Task[CompiledKey | None]) -> None:
    """Mark a load's failure as seen even when every caller has gone."""
    if not task.cancelled():
        task.exception()

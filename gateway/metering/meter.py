"""What the request path asks: may this request spend the quota and the key's credits?

Quotas and credits are exact, so every metered request is decided by the
store (:mod:`.store`), never from units leased to a worker. The round trip is
shared instead: per account and mode, one call is in flight at a time, and
the requests that arrive meanwhile go together in the next call, each still
decided on its own, in arrival order. Under load one store call decides many
requests; an idle gateway pays one round trip per metered request.

When the store fails, ``on_store_error`` decides: ``deny`` (the default)
refuses metered requests with 429 naming the store, because a balance that
cannot be checked could be overspent; ``allow`` lets them through unmetered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..store.connection import StoreUnavailable
from .store import Crossing, MeterStore, Quota, Spent

log = logging.getLogger("gateway.metering")

ON_STORE_ERROR = ("deny", "allow")
STORE_RETRY_MS = 1000


@dataclass(frozen=True, slots=True)
class Unmetered:
    """The store could not be asked; ``on_store_error`` said what to do."""

    allowed: bool
    reason: str | None = None  # "store_unavailable" when refused
    quota_used: int = 0
    quota_reset_ms: int = STORE_RETRY_MS
    credits_remaining: int | None = None
    credits_reset_ms: int = STORE_RETRY_MS
    crossings: tuple[Crossing, ...] = ()


class _Item:
    __slots__ = ("credits_id", "cost", "future", "key_id")

    def __init__(
        self, credits_id: str | None, cost: int, future: asyncio.Future, key_id: str | None
    ):
        self.credits_id = credits_id
        self.cost = cost
        self.future = future
        self.key_id = key_id


class Meter:
    """Coalesces spends per account and mode into one store call at a time."""

    def __init__(
        self,
        store: MeterStore,
        *,
        on_store_error: str | Callable[[], str] = "deny",
        on_crossing: Callable[[str, str, str | None, Crossing], None] | None = None,
    ):
        """``on_store_error`` may be a callable read at each failure (the live config's).

        ``on_crossing(account id, mode, key id, crossing)`` hears of every alert
        threshold crossed, once per period (the store keeps the level raised).
        """
        if isinstance(on_store_error, str) and on_store_error not in ON_STORE_ERROR:
            raise ValueError(f"on_store_error must be deny or allow, not {on_store_error!r}")
        self.store = store
        self._on_store_error = (
            on_store_error if callable(on_store_error) else (lambda: on_store_error)
        )
        self.on_crossing = on_crossing
        self._queues: dict[tuple[str, str], list[_Item]] = {}
        self._quotas: dict[tuple[str, str], Quota | None] = {}
        self._running: set[tuple[str, str]] = set()
        self._drains: set[asyncio.Task] = set()  # held, so none is collected mid-call
        self.store_calls = 0
        self.store_failures = 0

    @property
    def on_store_error(self) -> str:
        return self._on_store_error()

    async def spend(
        self,
        account_id: str,
        mode: str,
        quota: Quota | None,
        credits_id: str | None,
        cost: int,
        key_id: str | None = None,
    ) -> Spent | Unmetered:
        """One request's decision; spends only when it is allowed.

        ``key_id`` names the key in the crossings reported to ``on_crossing``.
        """
        tag = (account_id, mode)
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tag, []).append(_Item(credits_id, cost, future, key_id))
        self._quotas[tag] = quota
        if tag not in self._running:
            self._running.add(tag)
            task = asyncio.ensure_future(self._drain(tag))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        return await future

    async def _drain(self, tag: tuple[str, str]) -> None:
        try:
            # One turn of the event loop before each call: the requests it is reading
            # at that moment join this call instead of waiting for the next one.
            await asyncio.sleep(0)
            while batch := self._queues.pop(tag, None):
                quota = self._quotas.pop(tag, None)
                await self._decide(tag, quota, batch)
                await asyncio.sleep(0)
        finally:
            self._running.discard(tag)

    async def _decide(self, tag: tuple[str, str], quota: Quota | None, batch: list[_Item]) -> None:
        account_id, mode = tag
        try:
            self.store_calls += 1
            results: list[Spent | Unmetered] = list(
                await self.store.spend(
                    account_id, mode, quota, [(i.credits_id, i.cost) for i in batch]
                )
            )
        except StoreUnavailable as exc:
            self.store_failures += 1
            on_store_error = self._on_store_error()
            log.warning("metering store unavailable (%s); on_store_error=%s", exc, on_store_error)
            allowed = on_store_error == "allow"
            fallback = Unmetered(allowed, None if allowed else "store_unavailable")
            results = [fallback] * len(batch)
        except Exception as exc:  # pragma: no cover - a bug must not leave requests hanging
            log.exception("metering failed")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():  # the client may have gone
                item.future.set_result(result)
            if self.on_crossing is not None:
                for crossing in result.crossings:
                    self.on_crossing(account_id, mode, item.key_id, crossing)

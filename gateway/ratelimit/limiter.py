"""The rate limiter the pipeline asks after the permission check.

Every window of a request's limits (the key's or its plan's, plus the
route's, SPEC §16) is a counter of its own, and a request is admitted only
when every counter has a unit for it: nothing is spent from one window when
another refuses.

Budgets live in a shared :class:`~gateway.ratelimit.store.LimitStore` (Redis
in production), but a request does not wait on the store each time: a worker
takes units from the store in grants and spends them locally.

- A request that finds units in hand for each of its counters is decided
  without any I/O; one counter short and it spends from none.
- Otherwise it asks the store, in one call for all its short counters
  (granted all or none, and the same number of units each), for as many
  units as there are requests waiting on them (one call, however many
  wait), plus, for a key busy enough to use them and a limit large enough
  to spare them, a few *prefetched* units: at most 1/50 of the limit, spent
  within ``hold`` (0.5% of the window, at most 250 ms) or given back: at the
  next grant, or by a call of their own when the hold ends unspent (a worker
  the client stopped sending to must not keep units from the others).
  The store logs a prefetched grant as spent at the end of its hold, so the
  units actually spent in any window never exceed the limit, whatever the
  number of workers; small limits are never prefetched and stay exact to
  the unit.
- A refusal is remembered until the store said a unit frees up, so a client
  hammering a spent key costs no store call either.

When the store fails, ``on_store_error`` decides: ``local`` enforces the same
limits from this worker's memory, ``allow`` lets requests through, ``deny``
refuses them (429, never 503). The store is tried again a second later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..config.units import RateLimit
from ..denials import Denial
from ..store.connection import StoreUnavailable
from .headers import PolicyHeaders
from .policy import Limit, key_limits, policy_header, route_limits
from .store import Grant, LimitStore, MemoryLimitStore, Take

if TYPE_CHECKING:
    from ..keys.model import CompiledKey

log = logging.getLogger("gateway.ratelimit")

PREFETCH_SHARE = 50  # at most 1/50 of a limit is prefetched by one worker
HOLD_SHARE = 0.005  # a prefetched grant lives 0.5% of its window ...
HOLD_MAX = 0.25  # ... and at most 250 ms
GRANT_GRACE = 0.05  # units granted for waiting requests must be spent this soon
GIVE_BACK_AFTER = 0.05  # after a prefetched grant's hold, its unspent units go back
STORE_RETRY = 1.0  # after a store failure, the store is tried again this much later
PRUNE_EVERY = 30.0
IDLE_AFTER = 60.0


class RateLimitDecision:
    """The answer for one request: allowed or not, and what its headers say."""

    __slots__ = ("allowed", "limit", "_form", "remaining", "reset", "retry_after", "reason")

    def __init__(
        self,
        allowed: bool,
        limit: Limit,
        form: PolicyHeaders,
        remaining: int,
        reset: int,
        retry_after: int = 0,
        reason: str | None = None,
    ):
        self.allowed = allowed
        self.limit = limit
        self._form = form
        self.remaining = remaining
        self.reset = reset
        self.retry_after = retry_after
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"RateLimitDecision(allowed={self.allowed}, limit={self.limit.name!r} "
            f"{self.limit.rate}, remaining={self.remaining}, reset={self.reset})"
        )

    def headers(self) -> dict[str, str]:
        return self._form.render(self.remaining, self.reset)

    def denial(self) -> Denial:
        headers = {"Retry-After": str(self.retry_after), **self.headers()}
        details = {**self.limit.details(), "retry_after": self.retry_after}
        message = f"Rate limit exceeded: {self.limit.describe()}"
        if self.reason is not None:
            details["reason"] = self.reason
            message = "Rate limit store unavailable; requests are refused until it is back"
        return Denial("rate_limit_exceeded", details, headers, message)


class _Counter:
    """One budget as this worker sees it: the units in hand and what the store last said."""

    __slots__ = (
        "key",
        "limit",
        "tokens",
        "expires",
        "remaining",
        "reset_at",
        "denied_until",
        "reason",
        "used",
        "refilled_at",
        "waiting",
        "inflight",
        "grant_id",
    )

    def __init__(self, key: str, limit: Limit):
        self.key = key
        self.limit = limit
        self.tokens = 0
        self.expires = 0.0
        self.remaining = limit.rate.limit
        self.reset_at = 0.0
        self.denied_until = 0.0
        self.reason: str | None = None
        self.used = 0
        self.refilled_at: float | None = None
        self.waiting = 0
        self.inflight: asyncio.Task[None] | None = None
        self.grant_id = ""

    @property
    def hold(self) -> float:
        return min(self.limit.rate.window * HOLD_SHARE, HOLD_MAX)

    def prefetch(self, now: float) -> int:
        """Units to take beyond the waiting requests: what this worker should spend in a hold."""
        cap = self.limit.rate.limit // PREFETCH_SHARE
        if cap < 2 or self.refilled_at is None or self.used == 0:
            return 0
        hold = self.hold
        expected = self.used * hold / max(now - self.refilled_at, hold)
        if expected < 1:
            return 0
        return min(cap, int(expected * 2))

    def take(self, waiting: int, now: float) -> Take:
        """What to ask the store for; units left of an expired grant go back."""
        prefetch = self.prefetch(now)
        refund = self.tokens if self.tokens > 0 and self.grant_id else 0
        self.tokens = 0
        return Take(
            key=self.key,
            limit=self.limit.rate.limit,
            window_ms=self.limit.window_ms,
            want=max(waiting, 1) + prefetch,
            hold_ms=int(self.hold * 1000) if prefetch else 0,
            grant_id=self.grant_id,
            refund=refund,
        )

    def apply(self, take: Take, grant: Grant, sent: float, got: float, reason: str | None) -> None:
        self.grant_id = grant.grant_id
        if grant.granted > 0:
            self.tokens = grant.granted
            self.expires = sent + take.hold_ms / 1000 if take.hold_ms else got + GRANT_GRACE
            self.denied_until = 0.0
            self.reason = None
        else:
            self.tokens = 0
            if grant.retry_ms > 0:
                self.denied_until = sent + grant.retry_ms / 1000
                self.reason = reason
        self.remaining = grant.remaining
        self.reset_at = sent + grant.reset_ms / 1000
        self.used = 0
        self.refilled_at = got

    def idle(self, now: float) -> bool:
        return (
            self.inflight is None
            and self.waiting == 0
            and self.denied_until <= now
            and (self.refilled_at is None or now - self.refilled_at > IDLE_AFTER)
        )


class _Group:
    """The counters one (key, route) pair draws from, one per window, and their headers."""

    __slots__ = ("counters", "forms")

    def __init__(self, counters: tuple[_Counter, ...]):
        self.counters = counters
        policy = policy_header([c.limit for c in counters])
        self.forms = {c.key: PolicyHeaders(c.limit, policy) for c in counters}


PlanRate = Callable[[str], RateLimit | None]


class RateLimiter:
    """The pipeline's limiter: :meth:`check` answers None when no limit applies."""

    def __init__(
        self,
        store: LimitStore,
        *,
        prefix: str,
        plan_rate: PlanRate,
        on_store_error: str = "local",
        clock: Callable[[], float] | None = None,
        store_clock: bool = True,
    ):
        """``clock`` (seconds, monotonic) is injectable; ``store_clock=False`` passes it to the
        store too, instead of letting the store use its own time."""
        if on_store_error not in ("allow", "deny", "local"):
            raise ValueError(f"on_store_error must be allow, deny or local, not {on_store_error!r}")
        self.store = store
        self.prefix = prefix
        self.plan_rate = plan_rate
        self.on_store_error = on_store_error
        self._clock = clock or time.monotonic
        self._store_clock = store_clock
        self.fallback = MemoryLimitStore(self._clock)
        self._groups: dict[tuple, _Group] = {}
        self._counters: dict[str, _Counter] = {}
        self._store_down_until = 0.0
        self.store_failures = 0
        self.store_calls = 0
        self._pruned_at = time.monotonic()
        self._giving: set[asyncio.Task[None]] = set()  # unspent units on their way back

    @property
    def degraded(self) -> bool:
        """True while the shared store is being skipped after a failure."""
        return self._store_down_until > time.monotonic()

    # -- the request path -----------------------------------------------------

    async def check(
        self, key: CompiledKey, route_name: str, route_rate: RateLimit | None
    ) -> RateLimitDecision | None:
        """Admit the request only if every window of its limits has a unit for it."""
        group = self._group(key, route_name, route_rate)
        if group is None:
            return None
        now = self._clock()
        counters = group.counters
        for c in counters:
            if c.tokens <= 0 or now >= c.expires:
                return await self._wait(group)
        for c in counters:
            c.tokens -= 1
            c.used += 1
        return self._allowed(group, now)

    def _group(
        self, key: CompiledKey, route_name: str, route_rate: RateLimit | None
    ) -> _Group | None:
        own = key.rate_limit
        plan_rate = self.plan_rate(key.plan) if own is None else None
        if own is None and plan_rate is None and route_rate is None:
            return None
        cache_key = (
            key.record.id,
            own,
            plan_rate,
            key.plan if own is None else None,
            route_name if route_rate is not None else None,
            route_rate,
        )
        group = self._groups.get(cache_key)
        if group is None:
            limits = key_limits(own, key.plan, plan_rate) + route_limits(route_name, route_rate)
            group = _Group(tuple(self._counter(key.record.id, limit) for limit in limits))
            self._groups[cache_key] = group
        return group

    def _counter(self, key_id: str, limit: Limit) -> _Counter:
        name = f"{self.prefix}rl:{{{key_id}}}:{limit.counter()}"
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _Counter(name, limit)
        elif counter.limit != limit:
            # a new rate on the same window: the store decides afresh, not a refusal remembered
            counter.limit = limit
            counter.denied_until = 0.0
            counter.remaining = min(counter.remaining, limit.rate.limit)
        return counter

    async def _wait(self, group: _Group) -> RateLimitDecision:
        counters = group.counters
        for c in counters:
            c.waiting += 1
        try:
            while True:
                now = self._clock()
                denied = [c for c in counters if c.denied_until > now]
                if denied:
                    return self._denied(group, denied, now)
                short = [c for c in counters if c.tokens <= 0 or now >= c.expires]
                if not short:
                    for c in counters:
                        c.tokens -= 1
                        c.used += 1
                    return self._allowed(group, now)
                pending = next((c.inflight for c in short if c.inflight is not None), None)
                if pending is None:
                    pending = asyncio.ensure_future(self._refill(short))
                    for c in short:
                        c.inflight = pending
                await asyncio.shield(pending)
        finally:
            for c in counters:
                c.waiting -= 1

    async def _refill(self, counters: Sequence[_Counter]) -> None:
        try:
            sent = self._clock()
            takes = [c.take(c.waiting, sent) for c in counters]
            grants, reason = await self._take(takes, sent)
            got = self._clock()
            for c, take, grant in zip(counters, takes, grants, strict=True):
                c.apply(take, grant, sent, got, reason)
                if take.hold_ms and grant.granted > 1:
                    self._give_back_later(c)
        except Exception:  # pragma: no cover - a bug must not leave waiters hanging
            log.exception("rate limit refill failed")
            got = self._clock()
            for c in counters:
                c.denied_until = got + STORE_RETRY
                c.reason = "internal_error"
        finally:
            for c in counters:
                c.inflight = None
        if time.monotonic() - self._pruned_at > PRUNE_EVERY:
            self.prune()

    async def _take(self, takes: list[Take], now: float) -> tuple[list[Grant], str | None]:
        if time.monotonic() >= self._store_down_until:
            try:
                self.store_calls += 1
                grants = await self.store.take(
                    takes, None if self._store_clock else int(now * 1000)
                )
            except StoreUnavailable as exc:
                self.store_failures += 1
                if self._store_down_until == 0.0:
                    log.warning(
                        "rate limit store unavailable (%s); on_store_error=%s",
                        exc,
                        self.on_store_error,
                    )
                self._store_down_until = time.monotonic() + STORE_RETRY
            else:
                if self._store_down_until:
                    log.warning("rate limit store available again")
                    self._store_down_until = 0.0
                return grants, None
        if self.on_store_error == "deny":
            ms = int(STORE_RETRY * 1000)
            return [Grant(0, 0, ms, ms) for _ in takes], "store_unavailable"
        grants = self.fallback.take_now(takes, int(now * 1000))
        if self.on_store_error == "allow":
            grants = [
                g if g.granted else Grant(t.want, g.remaining, g.reset_ms)
                for t, g in zip(takes, grants, strict=True)
            ]
        return grants, None

    def _give_back_later(self, c: _Counter) -> None:
        """When a prefetched grant's hold ends, give back what it did not spend."""
        grant_id = c.grant_id
        asyncio.get_running_loop().call_later(
            max(c.expires - self._clock(), 0.0) + GIVE_BACK_AFTER, self._give_back, c, grant_id
        )

    def _give_back(self, c: _Counter, grant_id: str) -> None:
        if c.grant_id != grant_id or c.tokens <= 0 or c.inflight is not None:
            return  # spent, or already given back with a newer grant
        if self.degraded:
            return  # the store is down: the fallback keeps nothing to give back
        take = Take(key=c.key, limit=c.limit.rate.limit, window_ms=c.limit.window_ms, want=0,
                    grant_id=grant_id, refund=c.tokens)  # fmt: skip
        c.tokens = 0
        c.grant_id = ""
        task = asyncio.get_running_loop().create_task(self._give(take))
        self._giving.add(task)
        task.add_done_callback(self._giving.discard)

    async def _give(self, take: Take) -> None:
        try:
            self.store_calls += 1
            await self.store.take([take], None if self._store_clock else int(self._clock() * 1000))
        except StoreUnavailable:
            pass  # the units stay counted until the window moves past them: never too many

    # -- answers ----------------------------------------------------------------

    def _allowed(self, group: _Group, now: float) -> RateLimitDecision:
        """Headers of the counter closest to running out: fewest left, then longest to reset."""
        best = None
        best_left = best_reset = 0
        for c in group.counters:
            left = c.remaining + c.tokens
            if left > c.limit.rate.limit:
                left = c.limit.rate.limit
            reset = min(math.ceil(c.reset_at - now), c.limit.rate.window)
            if best is None or left < best_left or (left == best_left and reset > best_reset):
                best, best_left, best_reset = c, left, reset
        assert best is not None
        if best_reset < 1:
            best_reset = 1 if best_left == 0 else max(best_reset, 0)
        return RateLimitDecision(True, best.limit, group.forms[best.key], best_left, best_reset)

    def _denied(self, group: _Group, counters: Sequence[_Counter], now: float) -> RateLimitDecision:
        """Refused by ``counters`` (those still refusing): the one refusing longest answers."""
        worst = max(counters, key=lambda c: c.denied_until)
        # a prefetched grant may hold units up to 250 ms past the window: never said
        retry = max(min(math.ceil(worst.denied_until - now), worst.limit.rate.window), 1)
        return RateLimitDecision(
            False,
            worst.limit,
            group.forms[worst.key],
            0,
            retry,
            retry_after=retry,
            reason=worst.reason,
        )

    # -- housekeeping -----------------------------------------------------------

    def prune(self) -> None:
        """Forget counters (and the groups using them) idle for a minute."""
        self._pruned_at = time.monotonic()
        now = self._clock()
        idle = {name for name, c in self._counters.items() if c.idle(now)}
        if idle:
            for name in idle:
                del self._counters[name]
            self._groups = {
                k: g for k, g in self._groups.items() if not any(c.key in idle for c in g.counters)
            }
        self.fallback.prune(int(now * 1000))

    def __len__(self) -> int:
        return len(self._counters)

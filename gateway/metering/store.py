"""Plan quotas and key credits in Redis: one atomic Lua script spends both (SPEC §16).

Everything an account spends in one mode lives under one hash tag,
``{<account id>:<mode>}``, so a single script may read and write the plan's
quota and every one of the account's credit balances on Redis Cluster too:

- ``{P}mt:{acct:mode}:q``         hash: ``p`` the calendar period, ``u`` calls
  spent in it, ``t`` the highest alert level raised in it
- ``{P}mt:{acct:mode}:c:<id>``    hash: ``r`` credits remaining, ``a`` and
  ``i`` the refill (amount, ``day`` or ``month``), ``p`` the period of the
  last refill, ``b`` the budget alerts measure against, ``t`` the highest
  alert level raised since the last refill or top-up

Periods are calendar days and months in UTC, computed inside the script from
Redis's own clock (``TIME``), so every replica agrees on when a month ends
however their clocks drift. A refill is applied lazily: the first spend or
read in a new period sets ``remaining`` to the refill amount.

Each item of a :meth:`MeterStore.spend` is decided on its own, in order, all
or nothing: it is allowed only when the quota has a call left *and* the key
has credits for the route's cost, and only then are both spent. Since one
script does the check and the spend, no interleaving of replicas can spend a
unit twice: the balance is never overspent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import redis.asyncio as aioredis

from ..config.units import Quota
from ..store.connection import STORE_ERRORS, StoreUnavailable

THRESHOLDS = (80, 90, 100)  # percent of a budget; alert levels 1, 2, 3

# Shared by both scripts: calendar periods from a time in ms. A period is a day
# number (days since 1970-01-01) or a month number (months since 1970-01).
_CALENDAR = """
local DAY = 86400000
local function month_of(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_of(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- the period holding `now` and the ms until the next one starts
local function period(unit, now)
  local day = math.floor(now / DAY)
  if unit == 'day' then
    return day, (day + 1) * DAY - now
  end
  local y, m = month_of(day)
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return y * 12 + m - 1, days_of(ny, nm) * DAY - now
end
local function level(used, budget)
  if budget <= 0 then return 0 end
  if used * 100 >= budget * 100 then return 3 end
  if used * 100 >= budget * 90 then return 2 end
  if used * 100 >= budget * 80 then return 1 end
  return 0
end
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- a credit balance as of `now`, refilled first when its period has turned
local function balance(key, now)
  local h = redis.call('HMGET', key, 'r', 'a', 'i', 'p', 'b', 't')
  if not h[1] then return nil end
  local c = {r = tonumber(h[1]), a = tonumber(h[2]), i = h[3], p = tonumber(h[4]),
    b = tonumber(h[5]) or 0, t = tonumber(h[6]) or 0, reset = -1}
  if c.i and c.a then
    local p, reset = period(c.i, now)
    c.reset = reset
    if c.p == nil or p > c.p then
      c.r, c.p, c.b, c.t = c.a, p, c.a, 0
      redis.call('HSET', key, 'r', c.r, 'p', p, 'b', c.b, 't', 0)
    end
  end
  return c
end
"""

SPEND = (
    _CALENDAR
    + """
local now = clock(ARGV[1])
local qlimit = tonumber(ARGV[2])
local qkey = KEYS[1]
local q = nil
if qlimit > 0 then
  local p, reset = period(ARGV[3], now)
  local h = redis.call('HMGET', qkey, 'p', 'u', 't')
  q = {p = p, reset = reset, u = tonumber(h[2]) or 0, t = tonumber(h[3]) or 0}
  if tonumber(h[1]) ~= p then q.u, q.t = 0, 0 end
end
local balances = {}
local out = {now, q and q.u or 0, q and q.reset or 0}
-- the items come as runs: (credits key index, cost, how many in a row)
local runs = tonumber(ARGV[4])
for r = 1, runs do
  local ci = tonumber(ARGV[2 + 3 * r])
  local cost = tonumber(ARGV[3 + 3 * r])
  local count = tonumber(ARGV[4 + 3 * r])
  local c = nil
  if ci > 0 then
    c = balances[ci]
    if c == nil then
      -- a metered key whose balance is gone has nothing to spend: never unmetered
      c = balance(KEYS[1 + ci], now) or {r = 0, b = 0, t = 0, reset = -1}
      balances[ci] = c
    end
  end
  for _ = 1, count do
    local reason, qfrom, qto, cfrom, cto = 0, 0, 0, 0, 0
    if q and q.u + 1 > qlimit then
      reason = 1
    elseif c and cost > 0 and c.r < cost then
      reason = 2
    end
    if reason == 0 then
      if q then
        q.u = q.u + 1
        local l = level(q.u, qlimit)
        if l > q.t then qfrom, qto, q.t = q.t, l, l end
      end
      if c and cost > 0 then
        c.r = c.r - cost
        local l = level(c.b - c.r, c.b)
        if l > c.t then cfrom, cto, c.t = c.t, l, l end
        c.dirty = true
      end
    end
    out[#out + 1] = reason
    out[#out + 1] = q and q.u or 0
    out[#out + 1] = qfrom * 10 + qto
    out[#out + 1] = c and c.r or -1
    out[#out + 1] = c and c.reset or -1
    out[#out + 1] = c and c.b or 0
    out[#out + 1] = cfrom * 10 + cto
  end
end
if q then
  redis.call('HSET', qkey, 'p', q.p, 'u', q.u, 't', q.t)
  redis.call('PEXPIRE', qkey, q.reset + DAY)
end
for ci, c in pairs(balances) do
  if c.dirty then redis.call('HSET', KEYS[1 + ci], 'r', c.r, 't', c.t) end
end
return out
"""
)

PEEK = (
    _CALENDAR
    + """
local now = clock(ARGV[1])
local out = {now}
local qlimit = tonumber(ARGV[2])
if qlimit > 0 then
  local p, reset = period(ARGV[3], now)
  local h = redis.call('HMGET', KEYS[1], 'p', 'u')
  local used = 0
  if tonumber(h[1]) == p then used = tonumber(h[2]) or 0 end
  out[2], out[3] = used, reset
else
  out[2], out[3] = 0, 0
end
for i = 2, #KEYS do
  local c = balance(KEYS[i], now)
  if c then
    out[#out + 1] = c.r
    out[#out + 1] = c.reset
    out[#out + 1] = c.a or -1
    out[#out + 1] = c.i or ''
  else
    out[#out + 1] = -1
    out[#out + 1] = -1
    out[#out + 1] = -1
    out[#out + 1] = ''
  end
end
return out
"""
)

SET = (
    _CALENDAR
    + """
local now = clock(ARGV[1])
local amount, interval = tonumber(ARGV[3]), ARGV[4]
local remaining, budget, alerted = 0, 0, 0
if ARGV[2] == '' then
  -- keep the balance (refills due applied first) and the alert levels already raised,
  -- change only the refill; atomic with every spend, so none is lost or undone
  local c = balance(KEYS[1], now)
  if c then remaining, budget, alerted = c.r, c.b, c.t end
  if budget <= 0 then budget = remaining end
else
  remaining = tonumber(ARGV[2])
  budget = remaining
end
redis.call('DEL', KEYS[1])
if amount >= 0 then
  local p = period(interval, now)
  redis.call('HSET', KEYS[1], 'r', remaining, 'a', amount, 'i', interval, 'p', p,
    'b', budget, 't', alerted)
else
  redis.call('HSET', KEYS[1], 'r', remaining, 'b', budget, 't', alerted)
end
return remaining
"""
)


@dataclass(frozen=True, slots=True)
class Refill:
    """Credits set back to ``amount`` at the start of every UTC ``interval``."""

    amount: int
    interval: str  # "day" or "month"

    def __str__(self) -> str:
        return f"{self.amount}/{self.interval}"

    def public(self) -> dict[str, object]:
        return {"amount": self.amount, "interval": self.interval}


@dataclass(frozen=True, slots=True)
class Credits:
    """A key's balance as of a read: refills due have been applied."""

    remaining: int
    refill: Refill | None
    reset_ms: int  # until the next refill; -1 without one

    def public(self) -> dict[str, object]:
        return {
            "remaining": self.remaining,
            "refill": self.refill.public() if self.refill else None,
        }


@dataclass(frozen=True, slots=True)
class QuotaUse:
    used: int
    limit: int
    unit: str
    reset_ms: int  # until the quota's period ends


@dataclass(frozen=True, slots=True)
class Crossing:
    """A budget crossed one or more alert thresholds with this request."""

    budget: str  # "quota" or "credits"
    thresholds: tuple[int, ...]  # percents newly crossed, e.g. (80,) or (90, 100)
    used: int
    limit: int


class Spent(NamedTuple):
    """One item's outcome (a tuple: one is built per metered request)."""

    reason: str | None  # None (allowed), "quota_exceeded" or "credits_exhausted"
    quota_used: int
    quota_reset_ms: int
    credits_remaining: int | None  # None: the key has no credits
    credits_reset_ms: int  # -1: no refill
    crossings: tuple[Crossing, ...]

    @property
    def allowed(self) -> bool:
        return self.reason is None


_REASONS = {0: None, 1: "quota_exceeded", 2: "credits_exhausted"}


def _crossed(code: int) -> tuple[int, ...]:
    before, after = divmod(code, 10)
    return THRESHOLDS[before:after]


class MeterStore:
    """Quotas and credits in Redis; one ``EVALSHA`` per call, whatever the number of items."""

    def __init__(self, client: aioredis.Redis, prefix: str, *, timeout: float = 0.5):
        self._prefix = prefix
        self._spend = client.register_script(SPEND)
        self._peek = client.register_script(PEEK)
        self._set = client.register_script(SET)
        self._client = client
        self._timeout = timeout

    def tag(self, account_id: str, mode: str) -> str:
        return f"{self._prefix}mt:{{{account_id}:{mode}}}"

    def quota_key(self, account_id: str, mode: str) -> str:
        return self.tag(account_id, mode) + ":q"

    def credits_key(self, account_id: str, mode: str, credits_id: str) -> str:
        return f"{self.tag(account_id, mode)}:c:{credits_id}"

    async def _run(self, script, keys: list[str], args: list[object]) -> list:
        try:
            async with asyncio.timeout(self._timeout):
                return await script(keys=keys, args=args)
        except (*STORE_ERRORS, TimeoutError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc

    async def spend(
        self,
        account_id: str,
        mode: str,
        quota: Quota | None,
        items: Sequence[tuple[str | None, int]],
        now_ms: int | None = None,
    ) -> list[Spent]:
        """Decide and spend ``items`` (credits id or None, cost) in order, each all or nothing.

        Consecutive items alike (one key, one cost: a busy key's batch) go to the
        script as one run, so a batch costs a few arguments whatever its size.
        """
        keys = [self.quota_key(account_id, mode)]
        index: dict[str, int] = {}
        runs: list[object] = []
        last: tuple[int, int] | None = None
        count = 0
        for credits_id, cost in items:
            ci = 0
            if credits_id is not None:
                ci = index.get(credits_id, 0)
                if not ci:
                    keys.append(self.credits_key(account_id, mode, credits_id))
                    ci = index[credits_id] = len(keys) - 1
            if (ci, cost) == last:
                count += 1
                continue
            if last is not None:
                runs.extend((*last, count))
            last, count = (ci, cost), 1
        if last is not None:
            runs.extend((*last, count))
        args: list[object] = [
            "" if now_ms is None else now_ms,
            quota.limit if quota else 0,
            quota.unit if quota else "",
            len(runs) // 3,
            *runs,
        ]
        raw = await self._run(self._spend, keys, args)
        # Lua numbers come back as Redis integers: ints already, no conversion needed
        quota_reset = raw[2]
        out: list[Spent] = []
        for j in range(3, len(raw), 7):
            reason, q_used, q_code, c_left, c_reset, c_budget, c_code = raw[j : j + 7]
            crossings: tuple[Crossing, ...] = ()
            if q_code and quota:
                crossings = (Crossing("quota", _crossed(q_code), q_used, quota.limit),)
            if c_code:
                crossings += (Crossing("credits", _crossed(c_code), c_budget - c_left, c_budget),)
            out.append(
                Spent(
                    _REASONS[reason],
                    q_used,
                    quota_reset,
                    None if c_left < 0 else c_left,
                    c_reset,
                    crossings,
                )
            )
        return out

    async def read(
        self,
        account_id: str,
        mode: str,
        quota: Quota | None,
        credits_ids: Sequence[str] = (),
        now_ms: int | None = None,
    ) -> tuple[QuotaUse | None, list[Credits | None]]:
        """The quota's use and each key's balance, refills due applied; spends nothing."""
        keys = [self.quota_key(account_id, mode)]
        keys.extend(self.credits_key(account_id, mode, cid) for cid in credits_ids)
        args: list[object] = [
            "" if now_ms is None else now_ms,
            quota.limit if quota else 0,
            quota.unit if quota else "",
        ]
        raw = await self._run(self._peek, keys, args)
        use = QuotaUse(int(raw[1]), quota.limit, quota.unit, int(raw[2])) if quota else None
        balances: list[Credits | None] = []
        for j in range(3, len(raw), 4):
            remaining, reset, amount, interval = raw[j : j + 4]
            if int(remaining) < 0:
                balances.append(None)
                continue
            if isinstance(interval, bytes):
                interval = interval.decode()
            refill = Refill(int(amount), interval) if int(amount) >= 0 and interval else None
            balances.append(Credits(int(remaining), refill, int(reset)))
        return use, balances

    async def credits(
        self, account_id: str, mode: str, credits_id: str, now_ms: int | None = None
    ) -> Credits | None:
        _, (balance,) = await self.read(account_id, mode, None, (credits_id,), now_ms)
        return balance

    async def set_credits(
        self,
        account_id: str,
        mode: str,
        credits_id: str,
        remaining: int | None,
        refill: Refill | None,
        now_ms: int | None = None,
    ) -> int:
        """Set a balance (a top-up or a new key's credits); alerts count from this budget.

        ``remaining=None`` keeps the balance as it stands (refills due applied) and changes
        only the refill, in the same script as the read, so no concurrent spend is lost.
        Returns the balance now remaining.
        """
        if remaining is not None and remaining < 0:
            raise ValueError("credits remaining cannot be negative")
        args: list[object] = [
            "" if now_ms is None else now_ms,
            "" if remaining is None else remaining,
            refill.amount if refill else -1,
            refill.interval if refill else "",
        ]
        raw = await self._run(self._set, [self.credits_key(account_id, mode, credits_id)], args)
        return int(raw)

    async def drop_credits(self, account_id: str, mode: str, credits_id: str) -> None:
        """The key has no credits any more: it is no longer metered by balance."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.delete(self.credits_key(account_id, mode, credits_id))
        except (*STORE_ERRORS, TimeoutError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc

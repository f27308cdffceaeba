"""The limit store every replica shares: the sliding log of grants in one Lua script.

Per counter two Redis keys, both under the API key's hash tag so one script
may touch them on Redis Cluster:

- ``{P}rl:{key id}:<counter>``    sorted set of grants: member ``units:time:seq``,
  score = the grant's stamp (ms)
- ``{P}rl:{key id}:<counter>:n``  hash: ``t`` the units in the window, ``s`` a sequence

The script evicts grants that left the window, takes back the unspent part of
an earlier grant when asked, grants every counter or none (and the same
number of units to each: the fewest any of them wants or has left, so units
of one window are never leased beyond what the others let a request spend),
and answers per
counter ``granted, remaining, reset_ms, retry_ms, grant id`` after the server
time it used. Both keys expire once their last grant has left the
window. The clock is Redis's own (``TIME``), so replicas with skewed clocks
still share one exact budget; tests may pass the time in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis

from ..store.connection import STORE_ERRORS, StoreUnavailable
from .store import Grant, Take

SCRIPT = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function units(member)
  return tonumber(string.match(member, '^%d+'))
end
local n = #KEYS / 2
local totals = {}
local allowed = true
for i = 1, n do
  local log, meta = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 2 + 6 * (i - 1)
  local limit = tonumber(ARGV[a])
  local cutoff = now - tonumber(ARGV[a + 1])
  local total = redis.call('HGET', meta, 't')
  if total then
    total = tonumber(total)
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
    if #old > 0 then
      for _, member in ipairs(old) do
        total = total - units(member)
      end
      redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
    end
  else
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
    total = 0
    for _, member in ipairs(redis.call('ZRANGE', log, 0, -1)) do
      total = total + units(member)
    end
  end
  local refund = tonumber(ARGV[a + 5])
  if refund > 0 then
    local member = ARGV[a + 4]
    local stamp = redis.call('ZSCORE', log, member)
    if stamp then
      local had = units(member)
      if refund > had then refund = had end
      redis.call('ZREM', log, member)
      if had > refund then
        redis.call('ZADD', log, stamp, (had - refund) .. string.sub(member, (string.find(member, ':'))))
      end
      total = total - refund
    end
  end
  if total < 0 then total = 0 end
  totals[i] = total
  if limit - total < 1 then allowed = false end
end
local grant = 0
if allowed then
  for i = 1, n do
    local a = 2 + 6 * (i - 1)
    local room = math.min(tonumber(ARGV[a + 2]), tonumber(ARGV[a]) - totals[i])
    if i == 1 or room < grant then grant = room end
  end
end
local out = {now}
for i = 1, n do
  local log, meta = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 2 + 6 * (i - 1)
  local limit = tonumber(ARGV[a])
  local window = tonumber(ARGV[a + 1])
  local hold = tonumber(ARGV[a + 3])
  local total = totals[i]
  local granted, retry, id = 0, 0, ''
  if allowed then
    granted = grant
    if granted > 0 then  -- a take of 0 only gives units back: nothing to log
      local seq = redis.call('HINCRBY', meta, 's', 1)
      id = granted .. ':' .. now .. ':' .. seq
      redis.call('ZADD', log, now + hold, id)
      total = total + granted
    end
  else
    local need = total + 1 - limit
    if need > 0 then
      retry = window
      local acc = 0
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        acc = acc + units(entries[j])
        if acc >= need then
          retry = tonumber(entries[j + 1]) + window - now
          break
        end
      end
      if retry < 1 then retry = 1 end
    end
  end
  local reset = 0
  local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #first > 0 then
    reset = tonumber(first[2]) + window - now
    if reset < 0 then reset = 0 end
    local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
    local ttl = tonumber(last[2]) + window - now + 1000
    redis.call('HSET', meta, 't', total)
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', meta, ttl)
  else
    redis.call('DEL', log, meta)
  end
  local remaining = limit - total
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = granted
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
  out[#out + 1] = id
end
return out
"""


class RedisLimitStore:
    """Budgets in Redis; one ``EVALSHA`` per :meth:`take`, whatever the number of counters."""

    def __init__(self, client: aioredis.Redis, *, timeout: float = 0.5):
        self._script = client.register_script(SCRIPT)
        self._timeout = timeout

    async def take(self, takes: Sequence[Take], now_ms: int | None = None) -> list[Grant]:
        keys: list[str] = []
        args: list[str | int] = ["" if now_ms is None else now_ms]
        for take in takes:
            keys.append(take.key)
            keys.append(take.key + ":n")
            args.extend(
                (take.limit, take.window_ms, take.want, take.hold_ms, take.grant_id, take.refund)
            )
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(keys=keys, args=args)
        except (*STORE_ERRORS, TimeoutError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        return [
            Grant(int(raw[i]), int(raw[i + 1]), int(raw[i + 2]), int(raw[i + 3]), raw[i + 4])
            for i in range(1, len(raw), 5)
        ]

"""What memory costs: the gateway under a flood of unknown keys, Redis per key and per counter.

Starts a ``redis-server`` of its own (or uses ``--redis-url``), the stub
upstream and one ``gateway serve`` (``keys.cache_max_size`` 100 000, the
default), then:

1. Floods the gateway with ``--flood`` (one million) distinct, well-formed
   keys that the store does not know: each has a valid checksum, so each
   passes the format check, misses the cache and costs a Redis lookup, and
   each is remembered as unknown (a negative entry) in the LRU cache. The
   keys are made inside ``wrk`` (a Lua CRC32, so generating them costs
   nothing here). It prints the gateway's RSS at start and as the flood
   goes, and the cache's entries: once the cache is full the RSS stops
   growing.
2. Seeds ``--keys`` (100 000) keys in one account with pipelined writes and
   reads ``INFO memory``: Redis bytes per stored key (record, hash lookup,
   index entries), with ``MEMORY USAGE`` of each part.
3. Makes one rate-limit counter per key (one grant of the limiter's script
   each) and one daily usage counter per key: Redis bytes per active counter,
   and checks that every one of them has a TTL.

    .venv/bin/python bench/memory.py
    .venv/bin/python bench/memory.py --flood 200000 --keys 20000

Every process started here is stopped by its PID at the end. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from listing import seed_keys  # noqa: E402
from ratelimit_accuracy import (  # noqa: E402
    ROOT,
    Processes,
    delete_prefix,
    gateway_config,
    rss_kib,
    start_gateways,
    start_redis,
    start_upstream,
)

sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.keys.audit import AuditLog  # noqa: E402
from gateway.keys.format import generate_secret  # noqa: E402
from gateway.keys.service import CLI, KeyService  # noqa: E402
from gateway.keys.store import KeyStore  # noqa: E402
from gateway.ratelimit.redis_store import SCRIPT  # noqa: E402
from gateway.usage.recorder import UsageRecorder  # noqa: E402

# wrk's Lua (LuaJIT): each request carries a new key "sk_live_" + 8 salt + 24 counter
# characters (base62) + the 6-character base62 CRC32 of all that, as gateway/keys/format.py.
FLOOD_LUA = r"""
local B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320)
    else c = bit.rshift(c, 1) end
  end
  crc_table[i] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = bit.bxor(bit.rshift(c, 8), crc_table[bit.band(bit.bxor(c, s:byte(i)), 0xFF)])
  end
  c = bit.bxor(c, 0xFFFFFFFF)
  if c < 0 then c = c + 4294967296 end
  return c
end
local function base62(n, width)
  local out = {}
  while n > 0 do
    local r = n % 62
    out[#out + 1] = B62:sub(r + 1, r + 1)
    n = (n - r) / 62
  end
  local s = string.reverse(table.concat(out))
  return string.rep("0", width - #s) .. s
end
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  salt = args[1]
  counter = tonumber(args[2]) + tid * 1000000000
end
function request()
  counter = counter + 1
  local head = "sk_live_" .. salt .. base62(counter, 24)
  return wrk.format("GET", "/api/x", {["Authorization"] = "Bearer " .. head .. base62(crc32(head), 6)})
end
"""
WRK_TOTAL = re.compile(r"(\d+) requests in")
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def metric(admin_url: str, name: str) -> float:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f} MiB"


async def flood(args: argparse.Namespace, workdir: Path, procs: Processes, redis_url: str) -> None:
    upstream = start_upstream(procs)
    prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
    data = gateway_config(redis_url, prefix, upstream, cache_max_size=args.cache_max_size)
    gateway = start_gateways(procs, workdir, data, 1)[0]
    script = workdir / "flood.lua"
    script.write_text(FLOOD_LUA)
    salt = generate_secret("sk", "live")[8:16]  # 8 base62 characters, new each run
    # warm up, then the first reading
    subprocess.run(["wrk", "-t1", "-c4", "-d1s", "-s", str(script), gateway.url, "--", salt,
                    "900000000000"], capture_output=True, check=True)  # fmt: skip
    start_rss = rss_kib(gateway.proc.pid)
    warm_misses = metric(gateway.admin_url, "gateway_key_cache_misses_total")
    print(f"gateway RSS at start (after 1 s of warm-up): {mib(start_rss)}")
    print(f"flooding with {args.flood:,} distinct well-formed unknown keys "
          f"(cache_max_size {args.cache_max_size:,}):")  # fmt: skip
    print(f"  {'requests':>10}  {'non-401':>7}  {'cache entries':>13}  {'misses':>10}  "
          f"{'RSS':>11}  {'req/s':>6}")  # fmt: skip
    sent = 0
    readings = []
    started = time.monotonic()
    while sent < args.flood:
        t = time.monotonic()
        out = subprocess.run(
            ["wrk", "-t2", "-c64", f"-d{args.step}s", "-s", str(script), gateway.url, "--",
             salt, str(sent)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        n = int(WRK_TOTAL.search(out)[1])
        refused = WRK_NON_2XX.search(out)
        other = n - (int(refused[1]) if refused else 0)  # 2xx answers: there must be none
        sent += n
        rss = rss_kib(gateway.proc.pid)
        entries = metric(gateway.admin_url, "gateway_key_cache_entries")
        misses = metric(gateway.admin_url, "gateway_key_cache_misses_total")
        readings.append(rss)
        print(f"  {sent:>10,}  {other:>7}  {entries:>13,.0f}  {misses:>10,.0f}  {mib(rss)}  "
              f"{n / (time.monotonic() - t):>6.0f}", flush=True)  # fmt: skip
    looked_up = metric(gateway.admin_url, "gateway_key_cache_misses_total") - warm_misses
    print(f"flood took {time.monotonic() - started:.0f}s; RSS {mib(start_rss)} at start, "
          f"{mib(readings[-1])} after {sent:,} keys "
          f"(+{(readings[-1] - start_rss) / 1024:.1f} MiB, "
          f"{(readings[-1] - start_rss) * 1024 / max(args.cache_max_size, 1):.0f} bytes per cache entry "
          f"at most); growth over the last half of the flood: "
          f"{(readings[-1] - readings[len(readings) // 2]) / 1024:+.1f} MiB")  # fmt: skip
    # a malformed key never reaches the cache: one miss per request shows the keys were valid
    print(f"cache misses during the flood: {looked_up:,.0f} of {sent:,} requests")
    procs.stop(gateway.proc)
    await delete_prefix(redis_url, prefix)


async def redis_costs(args: argparse.Namespace, redis_url: str) -> None:
    prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
    config = parse_config({"redis": {"url": redis_url, "key_prefix": prefix}})
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = KeyStore(client, prefix)
        service = KeyService(store, config, audit=AuditLog(client, prefix))
        account = (await service.create_account(name="Big", plan="default")).id
        await service.create_key(CLI, account, {"name": "one"})

        async def used() -> int:
            return int((await client.info("memory"))["used_memory"])

        before = await used()
        await seed_keys(store, account, args.keys)
        per_key = (await used() - before) / args.keys
        sample = (await client.zrange(store._k("acct_keys", account, "all"), 0, 0))[0]
        record = await client.get(store._k("key", sample))
        lookup = store._k("keyhash", (await store.get_key(sample)).hash)
        parts = {
            "record (JSON string)": await client.memory_usage(store._k("key", sample)),
            "hash lookup": await client.memory_usage(lookup),
            "index 'all' / key": await client.memory_usage(store._k("acct_keys", account, "all"))
            / (args.keys + 1),
            "index 'live' / key": await client.memory_usage(store._k("acct_keys", account, "live"))
            / (args.keys + 1),
        }
        print(f"\nRedis, {args.keys:,} keys in one account: {per_key:.0f} bytes per stored key "
              f"(INFO memory used_memory delta); record JSON {len(record)} characters")  # fmt: skip
        for name, value in parts.items():
            print(f"  MEMORY USAGE {name:<22} {value:8.0f} bytes")

        ids = await client.zrange(store._k("acct_keys", account, "all"), 0, -1)
        script = client.register_script(SCRIPT)
        before = await used()
        for start in range(0, len(ids), 2000):
            async with client.pipeline(transaction=False) as pipe:
                for key_id in ids[start : start + 2000]:
                    name = f"{prefix}rl:{{{key_id}}}:key:1000/3600"
                    await script(keys=[name, name + ":n"], args=["", 1000, 3600000, 1, 0, "", 0],
                                 client=pipe)  # fmt: skip
                await pipe.execute()
        per_counter = (await used() - before) / len(ids)
        before = await used()

        class _Key:  # what UsageRecorder.record reads of a compiled key
            def __init__(self, key_id: str) -> None:
                self.record = type("R", (), {"id": key_id})

        usage = UsageRecorder(client, prefix)
        for key_id in ids:
            usage.record(_Key(key_id), "api", None)
        await usage.flush()
        per_usage = (await used() - before) / len(ids)
        sample_rl = f"{prefix}rl:{{{ids[0]}}}:key:1000/3600"
        print(f"\nRedis, one active counter per key ({len(ids):,} keys):")
        print(f"  rate limit (one grant logged): {per_counter:.0f} bytes per counter "
              f"(MEMORY USAGE log {await client.memory_usage(sample_rl)} + "
              f"meta {await client.memory_usage(sample_rl + ':n')}); "
              f"TTL {await client.pttl(sample_rl) / 1000:.0f}s")  # fmt: skip
        print(f"  daily usage (one outcome):     {per_usage:.0f} bytes per key and day "
              f"(plus a last-used field per key)")  # fmt: skip
        counted = missing = 0
        async for name in client.scan_iter(match=prefix + "*", count=10000):
            if ":rl:" in name or ":usage:" in name:
                counted += 1
                missing += await client.ttl(name) == -1  # -1: no expiry (-2: gone already)
        print(f"  rate-limit and usage keys without a TTL: {missing} of {counted}")
    finally:
        await client.aclose()
        await delete_prefix(redis_url, prefix)


async def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> int:
    redis_url = args.redis_url or start_redis(procs, workdir)
    if args.flood:
        await flood(args, workdir, procs, redis_url)
    if args.keys:
        await redis_costs(args, redis_url)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=1_000_000, help="unknown keys (1000000)")
    parser.add_argument("--cache-max-size", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10, help="seconds between readings (10)")
    parser.add_argument("--keys", type=int, default=100_000, help="keys seeded (100000)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args = parser.parse_args()
    if args.flood and not shutil.which("wrk"):
        print("the flood needs wrk (bench/install-wrk.sh)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gw-membench-", dir="/tmp"))
    procs = Processes()
    try:
        return asyncio.run(run(args, workdir, procs))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

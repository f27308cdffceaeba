"""How long a page of an account's keys takes when the account has 100 000 keys.

Starts a ``redis-server`` of its own (or uses ``--redis-url``), the stub
upstream and one ``gateway serve``; seeds ``--keys`` keys into one account
with pipelined writes in the key store's own layout (the record, the hash
lookup and the account's sorted-set indexes), then times pages of
``GET /v1/api-keys`` (first page, a page deep in the list via
``starting_after``, and a whole walk) and the store call behind them, and
checks with ``INFO commandstats`` that no SCAN or KEYS ran.

    .venv/bin/python bench/listing.py
    .venv/bin/python bench/listing.py --keys 20000 --pages 50

Every process started here is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ratelimit_accuracy import (  # noqa: E402
    ROOT,
    Processes,
    delete_prefix,
    gateway_config,
    start_gateways,
    start_redis,
    start_upstream,
)

sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.keys.audit import AuditLog  # noqa: E402
from gateway.keys.format import base62  # noqa: E402
from gateway.keys.model import KeyRecord  # noqa: E402
from gateway.keys.service import CLI, KeyService  # noqa: E402
from gateway.keys.store import KeyStore  # noqa: E402
from gateway.timefmt import isoformat, utcnow


async def seed_keys(store: KeyStore, account_id: str, count: int, batch: int = 5000) -> None:
    """``count`` keys in ``account_id``, written as :meth:`KeyStore.add_key` lays them out.

    Pipelined, ``batch`` keys a round trip; the secrets are random and thrown away.
    The records are one :meth:`KeyRecord.to_json` with the id, name and hash put in.
    """
    template = KeyRecord(
        id="@ID@",
        account_id=account_id,
        name="@NAME@",
        mode="live",
        hash="@HASH@",
        prefix="sk_live_",
        last4="abcd",
        permissions=("read",),
        created_at=isoformat(utcnow()),
    ).to_json()
    base = int(time.time() * 1000) - count
    for start in range(0, count, batch):
        async with store.client.pipeline(transaction=False) as pipe:
            scores: dict[str, int] = {}
            for n in range(start, min(start + batch, count)):
                key_id = "key_" + base62(int.from_bytes(os.urandom(15), "big"), 20)[-20:]
                key_hash = hashlib.sha256(os.urandom(24)).hexdigest()
                record = (
                    template.replace("@ID@", key_id)
                    .replace("@NAME@", f"seeded {n}")
                    .replace("@HASH@", key_hash)
                )
                pipe.set(store._k("key", key_id), record)
                pipe.set(store._k("keyhash", key_hash), f"{key_id} {account_id}")
                scores[key_id] = base + n
            pipe.zadd(store._k("acct_keys", account_id, "all"), scores)
            pipe.zadd(store._k("acct_keys", account_id, "live"), scores)
            await pipe.execute()


def ms(seconds: list[float]) -> str:
    q = statistics.quantiles(seconds, n=20) if len(seconds) >= 20 else seconds
    p95 = q[-1] if len(seconds) >= 20 else max(seconds)
    return f"median {statistics.median(seconds) * 1000:6.2f} ms   p95 {p95 * 1000:6.2f} ms"


async def scans(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("scan", "keys"))


async def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> int:
    redis_url = args.redis_url or start_redis(procs, workdir)
    upstream = start_upstream(procs)
    prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
    data = gateway_config(redis_url, prefix, upstream)
    config = parse_config(data)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = KeyStore(client, prefix)
        service = KeyService(store, config, audit=AuditLog(client, prefix))
        account = (await service.create_account(name="Big", plan="default")).id
        admin = (
            await service.create_key(CLI, account, {"name": "admin", "permissions": ["admin"]})
        )[1]
        started = time.monotonic()
        await seed_keys(store, account, args.keys)
        seeded = time.monotonic() - started
        total = await client.zcard(store._k("acct_keys", account, "all"))
        print(f"seeded {args.keys} keys in {seeded:.1f}s ({args.keys / seeded:,.0f} keys/s); "
              f"the account holds {total}")  # fmt: skip
        gateway = start_gateways(procs, workdir, data, 1)[0]
        headers = {"Authorization": f"Bearer {admin}"}
        deep = await client.zrevrange(store._k("acct_keys", account, "all"), total // 2, total // 2)
        small = (await service.create_account(name="Small", plan="default")).id
        await seed_keys(store, small, 200)
        before = await scans(client)
        rows: dict[str, list[float]] = {
            "first": [],
            "deep": [],
            "store first": [],
            "store deep": [],
            "store small": [],
        }
        async with aiohttp.ClientSession() as session:

            async def page(query: str) -> dict[str, Any]:
                async with session.get(f"{gateway.url}/v1/api-keys?{query}", headers=headers) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            await page("limit=100")  # the admin key into the cache
            for _ in range(args.pages):
                t = time.perf_counter()
                await page("limit=100")
                rows["first"].append(time.perf_counter() - t)
                t = time.perf_counter()
                body = await page(f"limit=100&starting_after={deep[0]}")
                rows["deep"].append(time.perf_counter() - t)
                assert len(body["data"]) == 100
                t = time.perf_counter()
                ids, _ = await store.list_key_ids(
                    account, mode=None, limit=100, starting_after=None
                )
                await store.get_keys(ids)
                rows["store first"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ids, _ = await store.list_key_ids(
                    account, mode=None, limit=100, starting_after=deep[0]
                )
                await store.get_keys(ids)
                rows["store deep"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ids, _ = await store.list_key_ids(small, mode=None, limit=100, starting_after=None)
                await store.get_keys(ids)
                rows["store small"].append(time.perf_counter() - t)
            walked, after, t = 0, "", time.perf_counter()
            while walked < args.walk:
                body = await page("limit=100" + (f"&starting_after={after}" if after else ""))
                walked += len(body["data"])
                after = body["meta"]["next_starting_after"]
                if not body["has_more"]:
                    break
            walk = time.perf_counter() - t
        scanned = await scans(client) - before
        print(f"\n{args.pages} pages of 100 each way, one gateway process, loopback:")
        print(f"  GET /v1/api-keys?limit=100                     {ms(rows['first'])}")
        print(f"  GET /v1/api-keys?limit=100&starting_after=mid  {ms(rows['deep'])}")
        print(f"  store only (ZREVRANK + ZREVRANGE + MGET), first {ms(rows['store first'])}")
        print(f"  store only, from the middle                    {ms(rows['store deep'])}")
        print(f"  store only, first page of an account of 200    {ms(rows['store small'])}")
        print(f"  walking {walked} keys page by page: {walk:.2f}s ({walked / walk:,.0f} keys/s)")
        print(f"  SCAN/KEYS commands run meanwhile: {scanned}")
        return 0 if scanned == 0 else 1
    finally:
        await client.aclose()
        if not args.keep_data:
            await delete_prefix(redis_url, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=100, help="timed pages of each kind (100)")
    parser.add_argument("--walk", type=int, default=10_000, help="keys to walk through (10000)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-listbench-", dir="/tmp"))
    procs = Processes()
    try:
        return asyncio.run(run(args, workdir, procs))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

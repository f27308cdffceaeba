"""Are credits exact when several gateway processes spend one key's balance at once?

Starts, on loopback and in a temporary directory: a ``redis-server`` of its
own (or uses ``--redis-url``, under a key prefix of the run's own, deleted at
the end), the stub upstream, and ``--replicas`` ``gateway serve`` processes
(4 by default) on it. One key gets ``--credits`` credits (10,000 by
default, no refill); ``--clients`` concurrent clients, spread over the
processes, send ``--requests`` requests in all (1.5 x the credits by
default) as fast as the gateways answer, stopping at ``--max-seconds``.

It prints the requests admitted (200) against the credits, the refusals
(429 ``credits_exhausted``), anything else, the throughput (answers of any
status per second), and the balance the store holds afterwards. Exact means
admitted == credits and a balance of 0 (when more requests than credits were
sent); the exit status is 1 otherwise.

    .venv/bin/python bench/credits_exact.py
    .venv/bin/python bench/credits_exact.py --replicas 2 --credits 2000 --clients 32

Every process started here is stopped by its PID at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

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
from gateway.keys.service import CLI, KeyService  # noqa: E402
from gateway.keys.store import KeyStore  # noqa: E402
from gateway.metering import MeterStore  # noqa: E402


async def make_key(redis_url: str, config: dict, credits: int) -> tuple[str, str, str]:
    """An account and a key holding ``credits``: (account id, key id, secret)."""
    parsed = parse_config(config)
    prefix = parsed.redis.key_prefix
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        service = KeyService(KeyStore(client, prefix), parsed, audit=AuditLog(client, prefix))
        account = (await service.create_account(name="Bench", plan="default")).id
        record, secret = await service.create_key(
            CLI, account, {"name": "credits", "credits": {"remaining": credits}}
        )
        return account, record.id, secret
    finally:
        await client.aclose()


async def balance(redis_url: str, prefix: str, account: str, key_id: str) -> int | None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = await MeterStore(client, prefix).credits(account, "live", key_id)
        return None if found is None else found.remaining
    finally:
        await client.aclose()


async def load(
    urls: list[str], secret: str, clients: int, requests: int, max_seconds: float
) -> dict[str, float | int]:
    """``requests`` calls over ``urls`` in turn from ``clients`` loops; counts by outcome."""
    headers = {"Authorization": f"Bearer {secret}"}
    turn = itertools.cycle(urls)
    left = requests
    counts = {"admitted": 0, "exhausted": 0, "other": 0}
    start = time.monotonic()
    deadline = start + max_seconds
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal left
            while left > 0 and time.monotonic() < deadline:
                left -= 1
                async with session.get(next(turn) + "/api/x", headers=headers) as resp:
                    body = await resp.read()
                if resp.status == 200:
                    counts["admitted"] += 1
                elif resp.status == 429 and b'"credits_exhausted"' in body:
                    counts["exhausted"] += 1
                else:
                    counts["other"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.monotonic() - start
    answered = sum(counts.values())
    return {**counts, "answered": answered, "seconds": seconds, "rps": answered / seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4, help="gateway processes")
    parser.add_argument("--credits", type=int, default=10_000)
    parser.add_argument("--requests", type=int, help="in all; default 1.5 x the credits")
    parser.add_argument("--clients", type=int, default=128, help="concurrent, in all")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending then")
    parser.add_argument("--redis-url", help="default: a redis-server of the run's own")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, procs: Processes, workdir: Path) -> int:
    redis_url = args.redis_url or start_redis(procs, workdir)
    prefix = f"bench:credits:{uuid.uuid4().hex[:8]}:"
    try:
        config = gateway_config(redis_url, prefix, start_upstream(procs))
        account, key_id, secret = await make_key(redis_url, config, args.credits)
        gateways = start_gateways(procs, workdir, config, args.replicas)
        requests = args.requests or args.credits * 3 // 2
        got = await load(
            [g.url for g in gateways], secret, args.clients, requests, args.max_seconds
        )
        left = await balance(redis_url, prefix, account, key_id)
    finally:
        if args.redis_url:
            await delete_prefix(redis_url, prefix)
    print(
        f"{args.replicas} gateway processes, {args.clients} clients, "
        f"{got['answered']} requests in {got['seconds']:.1f} s"
    )
    print(f"admitted/limit: {got['admitted']}/{args.credits}")
    print(f"refused credits_exhausted: {got['exhausted']}, other answers: {got['other']}")
    print(f"throughput: {got['rps']:,.0f} req/s (answers of any status)")
    print(f"balance left in the store: {left}")
    # nothing spent twice and nothing lost: what was admitted and what is left add up
    exact = got["other"] == 0 and left is not None and got["admitted"] + left == args.credits
    if got["answered"] > args.credits:  # more asked than there was: all of it spent
        exact = exact and left == 0
    print("exact: yes" if exact else "exact: NO")
    return 0 if exact else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="credits-exact-") as tmp:
            return asyncio.run(run(args, procs, Path(tmp)))
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

"""How the gateway behaves as replicas, keys and traffic grow (small numbers; bench/ has big ones).

- Limits stay exact across 1, 2 and 4 ``gateway serve`` processes under many
  concurrent clients: admitted requests never exceed the limit in a window
  and reach at least 95% of it (bench/ratelimit_accuracy.py at full size).
- A flood of distinct well-formed unknown keys leaves the key cache at its
  bound (bench/memory.py floods one million and reads the RSS).
- Every rate-limit and usage key in Redis expires.
- Listing keys pages through the account's sorted-set index: neither the API
  nor the CLI scans the database (bench/listing.py times it at 100 000 keys).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass

import aiohttp
import pytest
import redis_topologies
from conftest import bearer, new_account, new_key, run_cli, service_for, upstream_url, write_config

from gateway.config import parse_config
from gateway.keys.format import generate_secret, new_id
from gateway.keys.model import KeyRecord
from gateway.keys.store import KeyStore
from gateway.store.connection import open_store

pytestmark = pytest.mark.integration

redis_single = redis_topologies.redis_single  # a server of these tests' own


@dataclass
class Answer:
    sent: float
    answered: float
    status: int


async def hammer(
    urls: list[str], secret: str, clients: int, *, until: float, limit: int = 0, tail: float = 0
) -> list[Answer]:
    """``clients`` concurrent loops over ``urls`` until ``until``, or ``tail`` s after
    ``limit`` admissions."""
    answers: list[Answer] = []
    turn = itertools.cycle(urls)
    spent_at: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            while True:
                sent = time.monotonic()
                if sent >= until or (spent_at and sent > spent_at[0] + tail):
                    return
                async with session.get(next(turn) + "/items/1", headers=bearer(secret)) as resp:
                    await resp.read()
                    answers.append(Answer(sent, time.monotonic(), resp.status))
                admitted = sum(a.status == 200 for a in answers)
                if limit and not spent_at and admitted >= limit:
                    spent_at.append(time.monotonic())

        await asyncio.gather(*(client() for _ in range(clients)))
    return answers


def surely_within(admitted: list[Answer], window: float) -> int:
    """The most admissions sent and answered inside one span of ``window``."""
    admitted = sorted(admitted, key=lambda a: a.sent)
    return max(
        (
            sum(
                1
                for b in admitted[i:]
                if b.sent < a.sent + window and b.answered <= a.sent + window
            )
            for i, a in enumerate(admitted)
        ),
        default=0,
    )


@pytest.mark.parametrize("replicas", [1, 2, 4])
async def test_limits_stay_exact_across_gateway_processes(
    replicas, base_config, gateway_process, redis_client, upstream
):
    data = base_config(
        keys={"cache_ttl": "5m"},
        plans={"default": {}},
        routes=[{"name": "items", "match": "/items", "upstream": upstream_url(upstream)}],
    )
    gateways = [gateway_process(data, name=f"gw{i}") for i in range(replicas)]
    await asyncio.gather(*(asyncio.to_thread(g.start) for g in gateways))
    urls = [g.url for g in gateways]
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    _, per_second = await new_key(service, account, rate_limit="20/second")
    _, per_minute = await new_key(service, account, rate_limit="300/minute")

    # 20/second over two whole windows (less 100 ms, so the last decisions stay inside)
    start = time.monotonic()
    answers = await hammer(urls, per_second, 32, until=start + 1.9)
    admitted = [a for a in answers if a.status == 200]
    assert {a.status for a in answers} <= {200, 429}
    assert 38 <= len(admitted) <= 40, len(admitted)
    assert surely_within(admitted, 1.0) <= 20

    # 300/minute, observed for far less than a minute: never more than 300 in all
    answers = await hammer(urls, per_minute, 32, until=time.monotonic() + 20, limit=300, tail=0.5)
    admitted = [a for a in answers if a.status == 200]
    assert {a.status for a in answers} <= {200, 429}
    assert len(answers) > 300
    assert 285 <= len(admitted) <= 300, len(admitted)


async def test_a_flood_of_unknown_keys_leaves_the_cache_at_its_bound(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(
        base_config(
            keys={"cache_max_size": 200},
            routes=[{"name": "items", "match": "/items", "upstream": upstream_url(upstream)}],
        )
    )
    account = await new_account(gw.service)
    _, known = await new_key(gw.service, account)
    assert (await (await http.get(gw.url + "/items/1", headers=bearer(known))).read()) is not None
    statuses = set()
    sem = asyncio.Semaphore(32)

    async def unknown() -> None:
        async with sem:
            secret = generate_secret("sk", "live")  # valid checksum: reaches the store
            async with http.get(gw.url + "/items/1", headers=bearer(secret)) as resp:
                statuses.add(resp.status)
                await resp.read()

    await asyncio.gather(*(unknown() for _ in range(2000)))
    assert statuses == {401}
    assert len(gw.runtime.cache) <= 200
    assert gw.runtime.cache.misses >= 2000
    assert len(gw.runtime.limiter) <= 1  # no rate-limit state for unknown keys


async def test_every_rate_limit_and_usage_key_expires(
    start_gateway, base_config, upstream, http, redis_client, key_prefix
):
    gw = await start_gateway(
        base_config(
            plans={"default": {"rate_limit": "3/second"}},
            routes=[
                {
                    "name": "items",
                    "match": "/items",
                    "upstream": upstream_url(upstream),
                    "rate_limit": "100/minute",
                    "permissions": {"GET": "read", "*": "write"},
                },
            ],
        )  # fmt: skip
    )
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    _, own = await new_key(gw.service, account, rate_limit="2/hour", permissions=["read"])
    seen = set()
    for key in (secret, own):
        for method in ("GET", "GET", "GET", "GET", "POST"):
            async with http.request(method, gw.url + "/items/1", headers=bearer(key)) as resp:
                seen.add(resp.status)
    assert {200, 403, 429} <= seen  # allowed, denied and limited requests were all counted
    await gw.runtime.usage.flush()
    names = [k async for k in redis_client.scan_iter(match=key_prefix + "*")]
    counters = [n for n in names if n.startswith((key_prefix + "rl:", key_prefix + "usage:"))]
    assert len([n for n in counters if ":rl:" in n]) >= 4  # plan, route and own limits
    assert any(":usage:" in n for n in counters)
    for name in counters:
        assert await redis_client.ttl(name) > 0, name
    # the 2/hour counter lives as long as its window, and no longer
    ttls = [await redis_client.pttl(n) for n in counters if ":rl:" in n]
    hour = [ttl for ttl in ttls if ttl > 120_000]
    assert hour and all(ttl <= 3_601_000 for ttl in hour), ttls


async def test_listing_pages_through_the_index_without_scanning(
    redis_single, start_gateway, upstream, http, tmp_path
):
    prefix = f"gwscale:{uuid.uuid4().hex[:8]}:"
    data = {
        "server": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "redis": {"url": redis_single.url, "key_prefix": prefix},
        "routes": [{"name": "items", "match": "/items", "upstream": upstream_url(upstream)}],
    }
    config = parse_config(data)
    handle = open_store(config.redis)
    try:
        service = service_for(handle.client, config)
        account = await new_account(service)
        _, admin = await new_key(service, account, permissions=["admin"], name="admin")
        made = [(await new_key(service, account, name=f"k{i}"))[0] for i in range(25)]
        gw = await start_gateway(data)

        def scans() -> int:
            with redis_single.server.client() as c:
                stats = c.info("commandstats")
            return sum(
                stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("scan", "keys")
            )

        before = scans()
        seen, after = [], None
        while True:
            query = "?limit=10" + (f"&starting_after={after}" if after else "")
            async with http.get(f"{gw.url}/v1/api-keys{query}", headers=bearer(admin)) as resp:
                page = await resp.json()
                assert resp.status == 200, page
            seen += [k["id"] for k in page["data"]]
            if not page["has_more"]:
                break
            after = page["meta"]["next_starting_after"]
        assert seen[:25] == made[::-1] and len(seen) == 26
        path = write_config(tmp_path / "gateway.yaml", data)
        result = await asyncio.to_thread(
            run_cli, path, "keys", "list", "--account", account, "--json"
        )
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)["data"]) == 26
        assert scans() == before  # neither the API nor the CLI scanned the database
    finally:
        keys = [k async for k in handle.client.scan_iter(match=prefix + "*")]
        if keys:
            await handle.client.delete(*keys)
        await handle.close()


async def test_keys_made_in_one_millisecond_list_in_the_order_they_were_made(
    redis_client, key_prefix
):
    """Every key below is stamped with one future moment, so their scores would all tie."""
    store = KeyStore(redis_client, key_prefix)
    account, moment = new_id("acct"), "2999-01-01T00:00:00Z"

    def record(mode: str) -> KeyRecord:
        key_id = new_id("key")
        return KeyRecord(
            id=key_id, account_id=account, name=key_id, mode=mode, hash=uuid.uuid4().hex,
            prefix=f"sk_{mode}_", last4="abcd", created_at=moment,
        )  # fmt: skip

    made = [record("live" if i % 3 else "test") for i in range(30)]
    for key in made:
        await store.add_key(key)
    await store.add_key(made[4])  # adding a key again moves nothing

    async def pages(mode: str | None, limit: int) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            ids, more = await store.list_key_ids(
                account, mode=mode, limit=limit, starting_after=after
            )
            seen += ids
            if not more:
                return seen
            after = ids[-1]

    newest_first = [k.id for k in reversed(made)]
    for limit in (1, 7, 30, 100):
        assert await pages(None, limit) == newest_first
        for mode in ("live", "test"):
            expected = [k.id for k in reversed(made) if k.mode == mode]
            assert await pages(mode, limit) == expected

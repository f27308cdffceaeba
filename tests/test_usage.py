"""Per-key usage: daily counts by outcome and last use, written in the background."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from conftest import bearer, new_account, new_key, run_cli, service_for, upstream_url, write_config

from gateway.config import parse_config
from gateway.keys.model import CompiledKey, KeyRecord
from gateway.usage import UsageReader, UsageRecorder


def compiled(key_id: str = "key_u1") -> CompiledKey:
    record = KeyRecord(
        id=key_id, account_id="acct_1", name="k", mode="live", hash="h", prefix="sk_live_",
        last4="abcd",
    )  # fmt: skip
    return CompiledKey.build(record, "default")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def day(offset: int = 0) -> str:
    """A UTC date ``offset`` days from today (counts older than 90 days expire at once)."""
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the recorder on its own --------------------------------------------------------------


async def test_counts_by_outcome_are_written_in_one_flush(redis_client, key_prefix):
    today, yesterday, before = day(), day(-1), day(-2)
    clock = Clock(at(f"{today}T12:00:00"))
    recorder = UsageRecorder(redis_client, key_prefix, clock=clock)
    key = compiled()
    for code in [None] * 4 + ["ip_not_allowed", "insufficient_permissions", "ip_not_allowed"]:
        recorder.record(key, "items", code)
    for code in ["rate_limit_exceeded"] * 2 + ["revoked_api_key", "expired_api_key"]:
        recorder.record(key, "items", code)
    assert recorder.pending == 9  # the two 401s are not counted
    assert await recorder.flush()
    assert recorder.pending == 0
    stored = await redis_client.hgetall(f"{key_prefix}usage:{{key_u1}}:{today}")
    assert stored == {
        "allowed": "4",
        "denied": "3",
        "denied:ip_not_allowed": "2",
        "denied:insufficient_permissions": "1",
        "rate_limited": "2",
    }
    ttl = await redis_client.ttl(f"{key_prefix}usage:{{key_u1}}:{today}")
    expires = time.time() + ttl
    assert abs(expires - at(f"{day(91)}T00:00:00")) < 5  # 90 days after the day ends
    assert await redis_client.hget(key_prefix + "last_used", "key_u1") == f"{today}T12:00:00Z"
    days = await UsageReader(redis_client, key_prefix, clock=clock).days(key, 3, by_code=True)
    assert days == [
        {"date": today, "allowed": 4, "denied": 3, "rate_limited": 2,
         "denied_by_code": {"insufficient_permissions": 1, "ip_not_allowed": 2}},
        {"date": yesterday, "allowed": 0, "denied": 0, "rate_limited": 0, "denied_by_code": {}},
        {"date": before, "allowed": 0, "denied": 0, "rate_limited": 0, "denied_by_code": {}},
    ]  # fmt: skip


async def test_requests_count_on_their_own_utc_day(redis_client, key_prefix):
    clock = Clock(at(f"{day(-1)}T23:59:59.5"))
    recorder = UsageRecorder(redis_client, key_prefix, clock=clock)
    recorder.record(compiled(), "items", None)
    clock.now = at(f"{day()}T00:00:00.2")
    recorder.record(compiled(), "items", None)
    recorder.record(compiled(), "items", "rate_limit_exceeded")
    await recorder.flush()
    days = await recorder.days(compiled().record, days=2)
    assert days == [
        {"date": day(), "allowed": 1, "denied": 0, "rate_limited": 1},
        {"date": day(-1), "allowed": 1, "denied": 0, "rate_limited": 0},
    ]


async def test_a_failed_write_keeps_the_counts_for_the_next(redis_client, key_prefix):
    dead = aioredis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2, retry=None)
    recorder = UsageRecorder(dead, key_prefix)
    for _ in range(3):
        recorder.record(compiled(), "items", None)
    assert not await recorder.flush()
    recorder.record(compiled(), "items", None)
    assert recorder.pending == 4
    recorder.client = redis_client
    assert await recorder.flush()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert await redis_client.hget(f"{key_prefix}usage:{{key_u1}}:{today}", "allowed") == "4"
    await dead.aclose()


async def test_last_used_never_moves_back(redis_client, key_prefix):
    late = UsageRecorder(redis_client, key_prefix, clock=Clock(at(f"{day()}T12:00:05")))
    early = UsageRecorder(redis_client, key_prefix, clock=Clock(at(f"{day()}T12:00:01")))
    late.record(compiled(), "items", None)
    early.record(compiled(), "items", None)
    await late.flush()
    await early.flush()  # a replica flushing an older use afterwards
    assert await redis_client.hget(key_prefix + "last_used", "key_u1") == f"{day()}T12:00:05Z"


async def test_background_writes_and_stop_flushes_the_rest(redis_client, key_prefix):
    recorder = UsageRecorder(redis_client, key_prefix, interval=0.05)
    recorder.start()
    recorder.record(compiled(), "items", None)
    await asyncio.sleep(0.3)
    assert recorder.flushes >= 1 and recorder.pending == 0
    recorder.record(compiled(), "items", None)
    await recorder.stop()
    assert (await recorder.days("key_u1", 1))[0]["allowed"] == 2


# -- through the gateway ----------------------------------------------------------------


async def usage_of(gw, http, admin: str, key_id: str) -> list[dict]:
    async with http.get(f"{gw.url}/v1/api-keys/{key_id}/usage", headers=bearer(admin)) as resp:
        assert resp.status == 200
        return (await resp.json())["data"]["days"]


async def test_a_burst_is_counted_by_outcome_within_seconds(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(
        base_config(
            routes=[
                {"name": "items", "match": "/items", "upstream": upstream_url(upstream)},
                {
                    "name": "admin",
                    "match": "/admin",
                    "upstream": upstream_url(upstream),
                    "permissions": {"*": "admin"},
                },
            ]  # fmt: skip
        )
    )
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["admin"])
    key_id, secret = await new_key(gw.service, account, rate_limit="5/minute", permissions=["read"])
    _, test_secret = await new_key(gw.service, account, mode="test")

    async def get(path: str, who: str) -> int:
        async with http.get(gw.url + path, headers=bearer(who)) as resp:
            await resp.read()
            return resp.status

    started = time.time()
    got = await asyncio.gather(*(get("/items", secret) for _ in range(8)))
    got += [await get("/admin", secret) for _ in range(2)]
    got.append(await get("/items", test_secret))
    assert sorted(got) == [200] * 6 + [403] * 2 + [429] * 3
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    deadline = time.monotonic() + 10
    while True:
        days = await usage_of(gw, http, admin, key_id)
        if days[0]["allowed"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(days) == 30
    assert days[0] == {"date": today, "allowed": 5, "denied": 2, "rate_limited": 3}
    assert time.time() - started < 5
    # the test key's request is its own, and last use is recent
    async with http.get(f"{gw.url}/v1/api-keys/{key_id}", headers=bearer(admin)) as resp:
        used = (await resp.json())["data"]["last_used_at"]
    assert used is not None and abs(datetime.fromisoformat(used).timestamp() - started) < 5


async def test_a_clean_stop_loses_no_count_and_keys_show_prints_them(
    gateway_process, base_config, upstream, redis_client, tmp_path
):
    data = base_config(
        routes=[{"name": "items", "match": "/items", "upstream": upstream_url(upstream)}]
    )
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    key_id, secret = await new_key(service, account, rate_limit="30/minute")
    gw = gateway_process(data)
    await asyncio.to_thread(gw.start)
    import aiohttp

    async with aiohttp.ClientSession() as http:

        async def get() -> int:
            async with http.get(gw.url + "/items", headers=bearer(secret)) as resp:
                await resp.read()
                return resp.status

        got = await asyncio.gather(*(get() for _ in range(40)))
    assert got.count(200) == 30 and got.count(429) == 10
    assert await asyncio.to_thread(gw.stop) == 0  # at once: the last counts go out at shutdown
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    stored = await redis_client.hgetall(f"{data['redis']['key_prefix']}usage:{{{key_id}}}:{today}")
    assert stored == {"allowed": "30", "rate_limited": "10"}

    config_path = write_config(tmp_path / "cli.yaml", data)
    shown = await asyncio.to_thread(run_cli, config_path, "keys", "show", key_id)
    assert shown.returncode == 0, shown.stderr
    assert f"{today}: 30 / 0 / 10" in shown.stdout
    as_json = await asyncio.to_thread(run_cli, config_path, "keys", "show", key_id, "--json")
    document = json.loads(as_json.stdout)
    assert document["usage"][0] == {"date": today, "allowed": 30, "denied": 0, "rate_limited": 10}
    assert len(document["usage"]) == 7
    assert document["last_used_at"].startswith(today)
    assert secret not in shown.stdout + as_json.stdout


async def test_closing_the_app_writes_what_was_not_written_yet(
    start_gateway, base_config, upstream, http, redis_client, key_prefix
):
    gw = await start_gateway(
        base_config(
            routes=[{"name": "items", "match": "/items", "upstream": upstream_url(upstream)}]
        )
    )
    recorder = gw.runtime.usage
    recorder.interval = 3600  # from the next wait on: only the shutdown writes
    await asyncio.sleep(1.1)  # the wait under way (1 s) ends
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    for _ in range(7):
        async with http.get(gw.url + "/items", headers=bearer(secret)) as resp:
            assert resp.status == 200
    assert recorder.pending == 7
    await gw.app.close()
    stored = await redis_client.hgetall(f"{key_prefix}usage:{{{key_id}}}:{day()}")
    assert stored == {"allowed": "7"}
    assert await redis_client.hget(key_prefix + "last_used", key_id)


@pytest.mark.parametrize("days", [1, 90])
async def test_the_reader_answers_any_number_of_days_up_to_ninety(redis_client, key_prefix, days):
    reader = UsageReader(redis_client, key_prefix)
    answered = await reader.days("key_none", days)
    assert len(answered) == days and all(d["allowed"] == 0 for d in answered)

"""Unusual-activity alerts (SPEC §14), driven by real traffic through the gateway with low
thresholds and short windows."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from conftest import bearer, gateways, new_account, new_key, upstream_url
from prometheus_client import generate_latest

from gateway.events.log import ALERT_TYPES as EVENT_ALERT_TYPES
from gateway.keys.service import CLI
from gateway.timefmt import isoformat, utcnow

FAST = {
    "flush_interval": "50ms",
    "check_interval": "200ms",
    "new_network": {"learn_for": "0s"},
    "usage_spike": {"window": "30s", "baseline": "5m", "factor": 10, "min_requests": 30},
    "denied_burst": {"window": "30s", "threshold": 5},
    "key_unused": {"after": "1h"},
}


@pytest.fixture
def config(base_config, upstream):
    def make(**alerts) -> dict:
        return base_config(
            server={"trusted_proxies": ["127.0.0.1/32"]},
            routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
            alerts={**FAST, **alerts},
        )

    return make


async def send(http, gw, secret: str, n: int = 1, ip: str | None = None) -> list[int]:
    headers = bearer(secret)
    if ip:
        headers["X-Forwarded-For"] = ip
    statuses = []
    for _ in range(n):
        async with http.get(gw.url + "/api/thing", headers=headers) as resp:
            await resp.read()
            statuses.append(resp.status)
    return statuses


async def alerts_of(gw, account: str, kind: str) -> list[dict]:
    """The alerts raised so far, once what was counted has been judged and stored."""
    await gw.runtime.alerts.flush()
    await gw.service.events.drain()
    page = await gw.service.events.list(account, test_only=False, limit=100,
                                        type_filter=f"alert.{kind}")  # fmt: skip
    assert page is not None
    return [e.public() for e in page[0]]


async def eventually(gw, account: str, kind: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = await alerts_of(gw, account, kind)
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_a_new_network_is_an_alert_once(start_gateway, config, http):
    gw = await start_gateway(config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    await send(http, gw, secret, 3, ip="203.0.113.5")
    await send(http, gw, secret, 2, ip="203.0.113.77")  # the same /24
    assert await alerts_of(gw, account, "new_network") == []  # the first network is learnt
    await send(http, gw, secret, 3, ip="198.51.100.9")
    (alert,) = await eventually(gw, account, "new_network")
    assert alert["data"] == {"key_id": key_id, "network": "198.51.100.0/24", "ip": "198.51.100.9"}
    assert alert["mode"] == "live" and alert["account_id"] == account
    await send(http, gw, secret, 2, ip="2001:db8:1:2::7")
    found = await eventually(gw, account, "new_network")
    while len(found) < 2:
        found = await alerts_of(gw, account, "new_network")
    assert found[0]["data"]["network"] == "2001:db8:1::/48"
    await send(http, gw, secret, 3, ip="198.51.100.10")
    assert len(await alerts_of(gw, account, "new_network")) == 2


async def test_while_a_key_is_learning_new_networks_raise_nothing(start_gateway, config, http):
    gw = await start_gateway(config(new_network={"learn_for": "1h"}))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    for ip in ("203.0.113.5", "198.51.100.9", "192.0.2.1"):
        await send(http, gw, secret, 1, ip=ip)
    assert await alerts_of(gw, account, "new_network") == []


async def test_a_usage_spike_is_an_alert_once_per_window(start_gateway, config, http):
    gw = await start_gateway(config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    await send(http, gw, secret, 29)
    assert await alerts_of(gw, account, "usage_spike") == []  # below min_requests
    await send(http, gw, secret, 2)
    (alert,) = await eventually(gw, account, "usage_spike")
    assert alert["data"]["key_id"] == key_id
    assert alert["data"]["count"] >= 30 and alert["data"]["baseline"] == 0
    await send(http, gw, secret, 40)
    assert len(await alerts_of(gw, account, "usage_spike")) == 1  # the same episode


async def test_a_spike_is_judged_against_the_keys_usual_traffic(start_gateway, config, http,
                                                                 redis_client):  # fmt: skip
    """A key whose usual traffic is as high as the burst raises nothing."""
    gw = await start_gateway(config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    window = 30
    bucket = int(time.time() // window)
    history = {str(bucket - 2 - i): 40 for i in range(10)}  # 40 a window for ten windows
    await redis_client.hset(gw.config.redis.key_prefix + f"al:rq:{key_id}", mapping=history)
    await send(http, gw, secret, 60)  # 60 < 10 x (400 / 10 windows)
    assert await alerts_of(gw, account, "usage_spike") == []


async def test_a_burst_of_refusals_is_an_alert_naming_codes_and_addresses(start_gateway, config,
                                                                          http):  # fmt: skip
    gw = await start_gateway(config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, allowed_ips=["10.0.0.0/8"])
    assert await send(http, gw, secret, 3, ip="203.0.113.5") == [403] * 3
    assert await send(http, gw, secret, 1, ip="10.1.2.3") == [200]
    assert await alerts_of(gw, account, "denied_burst") == []
    await send(http, gw, secret, 2, ip="198.51.100.9")
    (alert,) = await eventually(gw, account, "denied_burst")
    assert alert["data"]["key_id"] == key_id and alert["data"]["count"] == 5
    assert alert["data"]["codes"] == {"ip_not_allowed": 5}
    assert sorted(alert["data"]["ips"]) == ["198.51.100.9", "203.0.113.5"]
    await gw.service.revoke_key(CLI, key_id)
    assert (await send(http, gw, secret, 6, ip="10.1.2.3"))[-1] == 401
    assert len(await alerts_of(gw, account, "denied_burst")) == 1  # the same episode


async def test_unused_and_old_keys_are_alerts_once(start_gateway, config, http):
    # created_at holds whole seconds: "after" leaves a second for that
    gw = await start_gateway(config(key_unused={"after": "2s"}))
    account = await new_account(gw.service)
    busy_id, busy = await new_key(gw.service, account)
    await send(http, gw, busy, 1)
    await gw.runtime.usage.flush()  # in use from the start
    idle_id, _ = await new_key(gw.service, account)
    test_id, _ = await new_key(gw.service, account, mode="test")
    old_id, _ = await new_key(gw.service, account, name="old")
    record = await gw.service.store.get_key(old_id)
    aged = isoformat(utcnow() - timedelta(days=gw.config.keys.rotation_days + 1))
    await gw.service.store.save_key(record.evolve(created_at=aged))
    deadline = time.monotonic() + 10
    unused: list[dict] = []
    while time.monotonic() < deadline:
        await send(http, gw, busy, 1)
        await gw.runtime.usage.flush()
        unused = await alerts_of(gw, account, "key_unused")
        if idle_id in {a["data"]["key_id"] for a in unused}:
            break
        await asyncio.sleep(0.1)
    flagged = {a["data"]["key_id"] for a in unused}
    assert idle_id in flagged and old_id in flagged
    assert busy_id not in flagged and test_id not in flagged  # test keys are never "unused"
    idle = next(a for a in unused if a["data"]["key_id"] == idle_id)
    assert idle["data"]["last_used_at"] is None
    rotation = await eventually(gw, account, "rotation_due")
    assert [a["data"] for a in rotation] == [{"key_id": old_id, "created_at": aged}]
    for _ in range(3):  # more sweeps: nothing twice
        await gw.runtime.alerts.sweep()
    assert len(await alerts_of(gw, account, "rotation_due")) == 1
    again = [a for a in await alerts_of(gw, account, "key_unused")
             if a["data"]["key_id"] == idle_id]  # fmt: skip
    assert len(again) == 1


async def test_alerts_are_counted_in_metrics(start_gateway, config, http):
    gw = await start_gateway(config())
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    await send(http, gw, secret, 31)
    assert len(await eventually(gw, account, "usage_spike")) == 1
    text = generate_latest(gw.runtime.metrics.registry).decode()
    series = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("gateway_alerts_total{")
    }
    # one series per alert type, every one shown from the start, named as the docs say
    assert series == {
        f'gateway_alerts_total{{type="{kind}"}}': 1.0 if kind == "usage_spike" else 0.0
        for kind in (t.removeprefix("alert.") for t in EVENT_ALERT_TYPES)
    }


async def test_with_alerts_off_nothing_is_counted(start_gateway, base_config, upstream, http):
    gw = await start_gateway(
        base_config(
            routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
            alerts={"enabled": False, "usage_spike": {"min_requests": 1}},
        )
    )
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    await send(http, gw, secret, 5)
    assert gw.runtime.alerts is None and gw.runtime.pipeline.alerts is None
    page = await gw.service.events.list(account, test_only=False, type_filter="alert.")
    assert page is not None and page[0] == []


async def test_a_gateway_stops_promptly_while_its_detectors_work(config, http):
    """The sweeps run back to back here: closing must not wait for the next one."""
    async with gateways() as start:
        gw = await start(config(check_interval="10ms", key_unused={"after": "1s"}))
        account = await new_account(gw.service)
        for i in range(20):
            await new_key(gw.service, account, name=f"k{i}")
        _, secret = await new_key(gw.service, account)
        await send(http, gw, secret, 5, ip="203.0.113.5")
        started = time.monotonic()
        await gw.app.close()
        assert time.monotonic() - started < 3


async def test_a_bursts_codes_add_up_to_its_count_across_two_buckets(redis_client, key_prefix):
    """The count weighs the previous bucket by the share of it still in the window; the
    codes it names are weighed the same, or the alert says 10 refusals of which 14 ..."""
    from gateway.alerts.detectors import AlertDetector
    from gateway.config.schema import AlertsConfig
    from gateway.events.log import EventLog
    from gateway.keys.model import CompiledKey, KeyRecord

    config = AlertsConfig.model_validate({"denied_burst": {"window": "30s", "threshold": 10}})
    now = [30 * 1000 + 29.0]  # a second before a 30 s bucket ends
    events = EventLog(redis_client, key_prefix)
    detector = AlertDetector(redis_client, key_prefix, events, lambda: config, clock=lambda: now[0])
    record = KeyRecord(id="key_burst", account_id="acct_burst", name="k", mode="live",
                       hash="h", prefix="sk_live_", last4="abcd")  # fmt: skip
    key = CompiledKey.build(record, "default")
    for _ in range(8):
        detector.observe(key, None, "ip_not_allowed")
    await detector.flush()
    await events.drain()
    assert await events.list("acct_burst", test_only=False) == ([], False)
    now[0] += 16  # 15 s into the next bucket: half the previous one still counts
    for _ in range(6):
        detector.observe(key, None, "insufficient_permissions")
    await detector.flush()
    await events.drain()
    (alert,), _ = await events.list("acct_burst", test_only=False)
    assert alert.type == "alert.denied_burst"
    assert alert.data["count"] == 10  # 6 + 8 / 2
    assert alert.data["codes"] == {"insufficient_permissions": 6, "ip_not_allowed": 4}

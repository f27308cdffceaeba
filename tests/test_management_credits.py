"""Credits and quota as the management API shows them (SPEC §7, §14, §16), over HTTP on a
real gateway and a real Redis: key answers, verify, the usage view and key events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import bearer, new_account, new_key, service_for
from test_secret_scanning import GitHub, post_report, report

from gateway.config import parse_config
from gateway.config.units import Quota
from gateway.keys.model import KeyRecord
from gateway.metering import MeterStore, Refill
from gateway.store.connection import StoreUnavailable

MONTHLY = {"amount": 1000, "interval": "month"}


@pytest.fixture
async def admin(start_gateway, base_config):
    """A gateway whose default plan has a 500/day quota, an account and a live admin key."""
    gw = await start_gateway(
        base_config(
            plans={
                "default": {"rate_limit": "100000/minute", "quota": "500/day"},
                "free": {"rate_limit": "100000/minute"},
            }
        )
    )
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, name="admin", permissions=["admin"])
    return gw, account, key_id, bearer(secret)


async def _call(http, method: str, url: str, headers, status: int, **kwargs) -> Any:
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == status, body
    return body


async def _create(http, gw, headers, **fields) -> dict[str, Any]:
    fields.setdefault("name", "metered")
    body = await _call(http, "POST", gw.url + "/v1/api-keys", headers, 201, json=fields)
    return body["data"]


async def _rotate(http, gw, headers, key_id: str) -> dict[str, Any]:
    url = f"{gw.url}/v1/api-keys/{key_id}/rotate"
    return (await _call(http, "POST", url, headers, 201, json={"grace_period": "1h"}))["data"]


async def _spend(gw, account: str, key_id: str, n: int, mode: str = "live") -> None:
    balance_id = (await gw.service.store.get_key(key_id)).credits_id
    results = await gw.service.balances.spend(account, mode, None, [(balance_id, 1)] * n)
    assert all(r.allowed for r in results)


# -- key answers ------------------------------------------------------------------


async def test_every_key_answer_shows_the_live_balance(admin, http):
    gw, account, _, headers = admin
    made = await _create(http, gw, headers, credits={"remaining": 1000, "refill": MONTHLY})
    assert made["credits"] == {"remaining": 1000, "refill": MONTHLY}
    assert made["key"].startswith("sk_live_")
    key_url = f"{gw.url}/v1/api-keys/{made['id']}"

    await _spend(gw, account, made["id"], 7)
    shown = (await _call(http, "GET", key_url, headers, 200))["data"]
    assert shown["credits"] == {"remaining": 993, "refill": MONTHLY}
    listed = (await _call(http, "GET", gw.url + "/v1/api-keys", headers, 200))["data"]
    assert {k["id"]: k["credits"] for k in listed}[made["id"]] == shown["credits"]

    patched = (await _call(http, "PATCH", key_url, headers, 200, json={"name": "renamed"}))["data"]
    assert patched["name"] == "renamed" and patched["credits"]["remaining"] == 993

    rotated = (
        await _call(http, "POST", key_url + "/rotate", headers, 201, json={"grace_period": "1h"})
    )["data"]
    assert rotated["credits"] == {"remaining": 993, "refill": MONTHLY}
    # the new key spends the same balance: both show what either spent
    await _spend(gw, account, rotated["id"], 3)
    for key_id in (made["id"], rotated["id"]):
        again = await _call(http, "GET", f"{gw.url}/v1/api-keys/{key_id}", headers, 200)
        assert again["data"]["credits"]["remaining"] == 990

    revoked = (await _call(http, "DELETE", key_url, headers, 200))["data"]
    assert revoked == {
        "id": made["id"],
        "revoked_at": revoked["revoked_at"],
        "credits": {"remaining": 990, "refill": MONTHLY},
    }


async def test_an_unmetered_key_shows_null_credits_everywhere(admin, http):
    gw, _, admin_id, headers = admin
    made = await _create(http, gw, headers, name="plain")
    assert made["credits"] is None
    key_url = f"{gw.url}/v1/api-keys/{made['id']}"
    assert (await _call(http, "GET", key_url, headers, 200))["data"]["credits"] is None
    listed = (await _call(http, "GET", gw.url + "/v1/api-keys", headers, 200))["data"]
    assert all(k["credits"] is None for k in listed)
    assert (await _call(http, "DELETE", key_url, headers, 200))["data"]["credits"] is None


async def test_a_refill_due_shows_at_once_in_the_balance(admin, http):
    gw, account, _, headers = admin
    made = await _create(
        http, gw, headers, credits={"remaining": 50, "refill": {"amount": 80, "interval": "day"}}
    )
    # The balance was last refilled yesterday: the first read today refills it.
    key = gw.service.balances.credits_key(account, "live", made["id"])
    await gw.runtime.store.client.hset(key, mapping={"r": 3, "p": _days_since_epoch() - 1})
    shown = await _call(http, "GET", f"{gw.url}/v1/api-keys/{made['id']}", headers, 200)
    assert shown["data"]["credits"] == {
        "remaining": 80,
        "refill": {"amount": 80, "interval": "day"},
    }


def _days_since_epoch() -> int:
    return (datetime.now(UTC).date() - datetime(1970, 1, 1, tzinfo=UTC).date()).days


async def test_list_reads_every_balance_of_an_account_in_one_store_call(admin, http, monkeypatch):
    gw, account, _, headers = admin
    made = []
    for i in range(5):
        made.append(await _create(http, gw, headers, name=f"m{i}", credits={"remaining": i}))
    made.append(
        await _create(http, gw, headers, name="test one", mode="test", credits={"remaining": 42})
    )
    await _create(http, gw, headers, name="plain")
    calls: list[list[str]] = []
    real = MeterStore._run

    async def counted(self, script, keys, args):
        calls.append(keys)
        return await real(self, script, keys, args)

    monkeypatch.setattr(MeterStore, "_run", counted)
    listed = (await _call(http, "GET", gw.url + "/v1/api-keys?limit=100", headers, 200))["data"]
    shown = {k["id"]: k["credits"] for k in listed}
    for i, key in enumerate(made[:5]):
        assert shown[key["id"]] == {"remaining": i, "refill": None}
    assert shown[made[5]["id"]] == {"remaining": 42, "refill": None}
    # one read per account and mode (live, test), each holding every key of it
    assert len(calls) == 2
    assert sorted(len(keys) for keys in calls) == [2, 6]  # the quota key + the balances


# -- PATCH ----------------------------------------------------------------------


async def test_patch_with_a_refill_only_keeps_the_balance(admin, http):
    gw, account, _, headers = admin
    made = await _create(http, gw, headers, credits={"remaining": 300})
    await _spend(gw, account, made["id"], 20)
    key_url = f"{gw.url}/v1/api-keys/{made['id']}"
    patched = await _call(
        http, "PATCH", key_url, headers, 200, json={"credits": {"refill": MONTHLY}}
    )
    assert patched["data"]["credits"] == {"remaining": 280, "refill": MONTHLY}
    # the store holds the new refill beside the kept balance
    balance = await gw.service.balances.credits(account, "live", made["id"])
    assert balance.remaining == 280 and str(balance.refill) == "1000/month"
    # remaining alone sets the balance (a top-up) and keeps the refill
    patched = await _call(
        http, "PATCH", key_url, headers, 200, json={"credits": {"remaining": 5000}}
    )
    assert patched["data"]["credits"] == {"remaining": 5000, "refill": MONTHLY}
    # refill: null stops refilling and still keeps the balance
    patched = await _call(http, "PATCH", key_url, headers, 200, json={"credits": {"refill": None}})
    assert patched["data"]["credits"] == {"remaining": 5000, "refill": None}
    balance = await gw.service.balances.credits(account, "live", made["id"])
    assert balance.remaining == 5000 and balance.refill is None


async def test_a_refill_change_loses_no_spend_made_meanwhile(admin, http):
    gw, account, _, headers = admin
    made = await _create(http, gw, headers, credits={"remaining": 10000})
    key_url = f"{gw.url}/v1/api-keys/{made['id']}"
    spenders = [
        asyncio.create_task(
            gw.service.balances.spend(account, "live", None, [(made["id"], 1)] * 10)
        )
        for _ in range(40)
    ]
    patches = [
        _call(
            http,
            "PATCH",
            key_url,
            headers,
            200,
            json={"credits": {"refill": {"amount": 10000 + i, "interval": "month"}}},
        )
        for i in range(10)
    ]
    await asyncio.gather(*patches)
    results = await asyncio.gather(*spenders)
    assert all(r.allowed for batch in results for r in batch)
    balance = await gw.service.balances.credits(account, "live", made["id"])
    assert balance.remaining == 10000 - 400


async def test_patch_credits_null_removes_metering(admin, http):
    gw, account, _, headers = admin
    made = await _create(http, gw, headers, credits={"remaining": 9, "refill": MONTHLY})
    key_url = f"{gw.url}/v1/api-keys/{made['id']}"
    patched = await _call(http, "PATCH", key_url, headers, 200, json={"credits": None})
    assert patched["data"]["credits"] is None
    assert (await _call(http, "GET", key_url, headers, 200))["data"]["credits"] is None
    assert (await gw.service.store.get_key(made["id"])).credits is None
    key = gw.service.balances.credits_key(account, "live", made["id"])
    assert await gw.runtime.store.client.exists(key) == 0
    # metering can be given back, with a balance
    patched = await _call(http, "PATCH", key_url, headers, 200, json={"credits": {"remaining": 4}})
    assert patched["data"]["credits"] == {"remaining": 4, "refill": None}


async def test_a_rotated_key_and_its_successor_show_one_balance_and_one_refill(admin, http):
    gw, _, _, headers = admin
    old = await _create(http, gw, headers, credits={"remaining": 10, "refill": MONTHLY})
    new = await _rotate(http, gw, headers, old["id"])
    old_url, new_url = f"{gw.url}/v1/api-keys/{old['id']}", f"{gw.url}/v1/api-keys/{new['id']}"
    daily = {"amount": 50, "interval": "day"}
    await _call(http, "PATCH", new_url, headers, 200, json={"credits": {"refill": daily}})
    for url in (old_url, new_url):
        assert (await _call(http, "GET", url, headers, 200))["data"]["credits"]["refill"] == daily
    await _call(http, "PATCH", old_url, headers, 200, json={"credits": {"remaining": 3}})
    for url in (old_url, new_url):  # a top-up keeps the refill the balance has
        shown = (await _call(http, "GET", url, headers, 200))["data"]["credits"]
        assert shown == {"remaining": 3, "refill": daily}, url


async def test_metering_a_rotated_key_afresh_leaves_its_successors_balance_alone(admin, http):
    gw, _, _, headers = admin
    old = await _create(http, gw, headers, credits={"remaining": 10})
    new = await _rotate(http, gw, headers, old["id"])
    old_url, new_url = f"{gw.url}/v1/api-keys/{old['id']}", f"{gw.url}/v1/api-keys/{new['id']}"
    await _call(http, "PATCH", old_url, headers, 200, json={"credits": None})
    assert (await _call(http, "GET", new_url, headers, 200))["data"]["credits"]["remaining"] == 10
    await _call(http, "PATCH", old_url, headers, 200, json={"credits": {"remaining": 1000}})
    assert (await _call(http, "GET", old_url, headers, 200))["data"]["credits"]["remaining"] == 1000
    assert (await _call(http, "GET", new_url, headers, 200))["data"]["credits"]["remaining"] == 10


@pytest.mark.parametrize(
    ("method", "credits", "field"),
    [
        ("POST", {"remaining": -1}, "credits.remaining"),
        ("POST", {"remaining": "10"}, "credits.remaining"),
        ("POST", {"refill": MONTHLY}, "credits"),
        ("POST", {"remaining": 5, "refill": {"amount": 5, "interval": "week"}}, "credits"),
        (
            "POST",
            {"remaining": 5, "refill": {"amount": 0, "interval": "day"}},
            "credits.refill.amount",
        ),
        ("POST", {"remaining": 5, "refill": {"amount": 5}}, "credits"),
        ("POST", {"remaining": 5, "top_up": 5}, "credits"),
        ("POST", 1000, "credits"),
        ("PATCH", {"refill": MONTHLY}, "credits"),  # an unmetered key has no balance to keep
        ("PATCH", {"remaining": 1.5}, "credits.remaining"),
    ],
)
async def test_bad_credits_are_refused_naming_the_field(admin, http, method, credits, field):
    gw, _, _, headers = admin
    url = gw.url + "/v1/api-keys"
    if method == "PATCH":
        url += "/" + (await _create(http, gw, headers, name="plain"))["id"]
    body = await _call(
        http, method, url, headers, 400, json={"name": "refused", "credits": credits}
    )
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["details"] == {"field": field}
    listed = (await _call(http, "GET", gw.url + "/v1/api-keys", headers, 200))["data"]
    assert "refused" not in {k["name"] for k in listed}


# -- verify ----------------------------------------------------------------------


async def test_verify_shows_the_calling_keys_credits(admin, http):
    gw, account, _, headers = admin
    made = await _create(
        http, gw, headers, credits={"remaining": 12, "refill": MONTHLY}, permissions=["read"]
    )
    await _spend(gw, account, made["id"], 2)
    body = await _call(http, "GET", gw.url + "/v1/auth/verify", bearer(made["key"]), 200)
    assert body["key_id"] == made["id"]
    assert body["credits"] == {"remaining": 10, "refill": MONTHLY}
    body = await _call(http, "GET", gw.url + "/v1/auth/verify", headers, 200)
    assert body["credits"] is None


# -- usage view ------------------------------------------------------------------


def _next_midnight() -> str:
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return f"{tomorrow.isoformat()}T00:00:00Z"


async def test_usage_shows_the_plans_quota_and_the_keys_credits(admin, http):
    gw, account, _, headers = admin
    made = await _create(
        http, gw, headers, credits={"remaining": 70, "refill": {"amount": 70, "interval": "day"}}
    )
    spent = await gw.service.balances.spend(
        account, "live", Quota(500, "day"), [(made["id"], 1)] * 4 + [(None, 1)] * 2
    )
    assert all(s.allowed for s in spent)
    body = await _call(http, "GET", f"{gw.url}/v1/api-keys/{made['id']}/usage", headers, 200)
    data = body["data"]
    assert data["key_id"] == made["id"] and len(data["days"]) == 30
    assert data["quota"] == {
        "limit": 500,
        "used": 6,  # shared by every live key of the account
        "period": "day",
        "resets_at": _next_midnight(),
    }
    assert data["credits"] == {"remaining": 66, "refill": {"amount": 70, "interval": "day"}}


async def test_usage_of_a_test_key_counts_the_test_quota_apart(admin, http):
    gw, account, _, headers = admin
    made = await _create(http, gw, headers, name="sandbox", mode="test")
    await gw.service.balances.spend(account, "live", Quota(500, "day"), [(None, 1)] * 3)
    await gw.service.balances.spend(account, "test", Quota(500, "day"), [(None, 1)])
    body = await _call(http, "GET", f"{gw.url}/v1/api-keys/{made['id']}/usage", headers, 200)
    assert body["data"]["quota"]["used"] == 1
    assert body["data"]["credits"] is None


async def test_usage_without_a_quota_or_credits_shows_nulls(admin, http):
    gw, _, _, _ = admin
    account = await new_account(gw.service, plan="free")
    _, secret = await new_key(gw.service, account, name="admin", permissions=["admin"])
    made = await _create(http, gw, bearer(secret), name="plain")
    body = await _call(http, "GET", f"{gw.url}/v1/api-keys/{made['id']}/usage", bearer(secret), 200)
    assert body["data"]["quota"] is None and body["data"]["credits"] is None


# -- events ----------------------------------------------------------------------


async def test_key_events_carry_the_credits_as_the_api_shows_them(admin, http):
    gw, account, _, headers = admin
    made = await _create(http, gw, headers, credits={"remaining": 100})
    await _spend(gw, account, made["id"], 25)
    key_url = f"{gw.url}/v1/api-keys/{made['id']}"
    await _call(http, "PATCH", key_url, headers, 200, json={"credits": {"refill": MONTHLY}})
    await _call(http, "POST", key_url + "/rotate", headers, 201, json={})
    await _call(http, "DELETE", key_url, headers, 200)
    events = (await _call(http, "GET", gw.url + "/v1/events?limit=100", headers, 200))["data"]
    about = {
        e["type"]: e["data"]["credits"]
        for e in events
        if e["data"].get("id") == made["id"] or e["data"].get("rotated_from") == made["id"]
    }
    assert about["api_key.created"] == {"remaining": 100, "refill": None}
    assert about["api_key.updated"] == {"remaining": 75, "refill": MONTHLY}
    assert about["api_key.rotated"] == {"remaining": 75, "refill": MONTHLY}
    assert about["api_key.revoked"] == {"remaining": 75, "refill": MONTHLY}


async def test_a_refill_change_raises_no_threshold_alert_twice(admin):
    gw, account, _, _ = admin
    balances = gw.service.balances
    await balances.set_credits(account, "live", "kept", 10, None)
    spent = await balances.spend(account, "live", None, [("kept", 1)] * 8)
    assert [c.thresholds for s in spent for c in s.crossings] == [(80,)]
    # only the refill changes: the balance and the 80% already raised are kept
    left = await balances.set_credits(account, "live", "kept", None, Refill(10, "month"))
    assert left == 2
    spent = await balances.spend(account, "live", None, [("kept", 1)])
    assert [c.thresholds for c in spent[0].crossings] == [(90,)]
    # a new balance starts the levels again
    await balances.set_credits(account, "live", "kept", 10, None)
    spent = await balances.spend(account, "live", None, [("kept", 1)] * 8)
    assert [c.thresholds for s in spent for c in s.crossings] == [(80,)]


async def test_a_leaked_key_event_carries_its_live_credits(start_gateway, base_config, http):
    github = GitHub()
    url = await github.start()
    try:
        gw = await start_gateway(
            base_config(leak_detection={"action": "notify", "github": {"public_keys_url": url}})
        )
        account = await new_account(gw.service)
        _, admin = await new_key(gw.service, account, permissions=["admin"])
        key_id, secret = await new_key(gw.service, account, credits={"remaining": 30})
        await _spend(gw, account, key_id, 5)
        body = report(secret)
        status, _ = await post_report(http, gw, body, github.sign(body))
        assert status == 200
        events = await _call(
            http, "GET", gw.url + "/v1/events?type=api_key.leaked", bearer(admin), 200
        )
        (leaked,) = events["data"]
        assert leaked["data"]["key"]["id"] == key_id
        assert leaked["data"]["key"]["credits"] == {"remaining": 25, "refill": None}
    finally:
        assert github.server is not None
        await github.server.close()


async def test_a_change_made_is_shown_even_when_the_store_cannot_be_read(base_config):
    """Create and rotate show a secret once: a failed read afterwards must not hide it."""
    config = parse_config(base_config(redis={"url": "redis://127.0.0.1:9/0"}))  # nothing there
    client = aioredis.Redis.from_url(config.redis.url, decode_responses=True)
    try:
        service = service_for(client, config)
        record = KeyRecord(
            id="key_x", account_id="acct_x", name="n", mode="live", hash="h",
            prefix="sk_live_", last4="abcd", credits={"id": "key_x", "refill": MONTHLY},
        )  # fmt: skip
        (shown,) = await service.shown([record], after_change=True)
        assert shown["credits"] == {"remaining": None, "refill": MONTHLY}
        assert shown["last_used_at"] is None
        with pytest.raises(StoreUnavailable):
            await service.shown([record])
    finally:
        await client.aclose()

"""POST /v1/api-keys/{id}/rotate over HTTP on a real Redis (SPEC §7)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from conftest import bearer, new_account, new_key, upstream_url

from gateway.timefmt import parse_time, utcnow

SETTINGS = {
    "name": "payments backend",
    "permissions": ["read", "payments:write"],
    "metadata": {"team": "payments", "cost_center": 42},
    "allowed_ips": ["127.0.0.1", "10.0.0.0/8"],
    "allowed_referrers": ["*.example.com"],
    "allowed_endpoints": ["GET /v1/**", "POST /v1/payments/*"],
    "rate_limit": "50/second",
}


@pytest.fixture
async def setup(start_gateway, base_config, upstream):
    routes = [{"name": "api", "match": "/v1/payments", "upstream": upstream_url(upstream)}]
    gw = await start_gateway(base_config(routes=routes))
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["admin"])
    return gw, account, bearer(admin)


async def _status(http, gw, secret: str) -> tuple[int, str | None]:
    headers = {**bearer(secret), "Referer": "https://app.example.com/"}
    async with http.get(gw.url + "/v1/payments/1", headers=headers) as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("code")


async def _rotate(http, gw, headers, key_id, body=None):
    async with http.post(
        gw.url + f"/v1/api-keys/{key_id}/rotate", json=body, headers=headers
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
        assert resp.headers["Cache-Control"] == "no-store"
    return answer["data"]


async def test_the_new_key_keeps_every_setting_and_the_old_one_works_until_grace_ends(setup, http):
    gw, account, headers = setup
    expires = (utcnow() + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old_id, old_secret = await new_key(gw.service, account, expires_at=expires, **SETTINGS)
    assert await _status(http, gw, old_secret) == (200, None)  # cached from here on

    started = time.monotonic()
    new = await _rotate(http, gw, headers, old_id, {"grace_period": "2s"})
    new_secret = new["key"]
    assert new_secret != old_secret and new_secret.startswith("sk_live_")
    assert new["id"] != old_id
    assert new["last4"] == new_secret[-4:]
    carried = {**SETTINGS, "expires_at": expires, "mode": "live", "account_id": account,
               "prefix": "sk_live_"}  # fmt: skip
    for field, value in carried.items():
        assert new[field] == value, field
    assert new["rotated_from"] == old_id
    assert new["previous_key"]["id"] == old_id
    grace_end = parse_time(new["previous_key"]["expires_at"])
    assert grace_end is not None and grace_end <= utcnow() + timedelta(seconds=2)

    async with http.get(gw.url + f"/v1/api-keys/{old_id}", headers=headers) as resp:
        old = (await resp.json())["data"]
    assert old["rotated_to"] == new["id"]
    assert old["expires_at"] == new["previous_key"]["expires_at"]
    for field in SETTINGS:
        assert old[field] == SETTINGS[field]

    assert await _status(http, gw, old_secret) == (200, None)  # within the grace period
    assert await _status(http, gw, new_secret) == (200, None)
    while (status := await _status(http, gw, old_secret)) == (200, None):
        assert time.monotonic() - started < 4, "the old key outlived its grace period"
        await asyncio.sleep(0.05)
    assert status == (401, "expired_api_key")
    assert await _status(http, gw, new_secret) == (200, None)


async def test_default_grace_is_24h(setup, http):
    gw, account, headers = setup
    old_id, _ = await new_key(gw.service, account)
    new = await _rotate(http, gw, headers, old_id)
    grace_end = parse_time(new["previous_key"]["expires_at"])
    assert grace_end is not None
    assert abs((grace_end - utcnow()) - timedelta(hours=24)) < timedelta(seconds=5)


async def test_grace_never_extends_an_earlier_expiry(setup, http):
    gw, account, headers = setup
    soon = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old_id, _ = await new_key(gw.service, account, expires_at=soon)
    new = await _rotate(http, gw, headers, old_id, {"grace_period": "24h"})
    assert new["previous_key"]["expires_at"] == soon
    assert new["expires_at"] == soon


async def test_zero_grace_retires_the_cached_old_key_at_once(setup, http):
    gw, account, headers = setup
    old_id, old_secret = await new_key(gw.service, account, **SETTINGS)
    assert await _status(http, gw, old_secret) == (200, None)
    new = await _rotate(http, gw, headers, old_id, {"grace_period": "0s"})
    assert await _status(http, gw, old_secret) == (401, "expired_api_key")
    assert await _status(http, gw, new["key"]) == (200, None)


async def test_revoking_either_key_leaves_the_other_working(setup, http):
    gw, account, headers = setup
    first_id, first_secret = await new_key(gw.service, account, **SETTINGS)
    new = await _rotate(http, gw, headers, first_id, {"grace_period": "1h"})
    async with http.delete(gw.url + f"/v1/api-keys/{new['id']}", headers=headers) as resp:
        assert resp.status == 200
    assert await _status(http, gw, new["key"]) == (401, "revoked_api_key")
    assert await _status(http, gw, first_secret) == (200, None)

    second_id, second_secret = await new_key(gw.service, account, **SETTINGS)
    newer = await _rotate(http, gw, headers, second_id, {"grace_period": "1h"})
    async with http.delete(gw.url + f"/v1/api-keys/{second_id}", headers=headers) as resp:
        assert resp.status == 200
    assert await _status(http, gw, second_secret) == (401, "revoked_api_key")
    assert await _status(http, gw, newer["key"]) == (200, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"grace_period": "soon"}, "grace_period"),
        ({"grace_period": "-1h"}, "grace_period"),
        ({"grace_period": "99999999999d"}, "grace_period"),
        ({"grace_period": True}, "grace_period"),
        ({"grace": "2s"}, "grace"),
    ],
)
async def test_bad_rotate_bodies_are_400_and_rotate_nothing(setup, http, body, field):
    gw, account, headers = setup
    key_id, secret = await new_key(gw.service, account, **SETTINGS)
    async with http.post(
        gw.url + f"/v1/api-keys/{key_id}/rotate", json=body, headers=headers
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]["field"] == field
    async with http.get(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        data = (await resp.json())["data"]
    assert data["rotated_to"] is None and data["expires_at"] is None


async def test_a_revoked_key_cannot_be_rotated(setup, http):
    gw, account, headers = setup
    key_id, _ = await new_key(gw.service, account)
    async with http.delete(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        assert resp.status == 200
    async with http.post(gw.url + f"/v1/api-keys/{key_id}/rotate", headers=headers) as resp:
        assert resp.status == 409
        error = (await resp.json())["error"]
        assert (error["code"], error["details"]["field"]) == ("key_not_active", "id")


async def test_a_test_key_rotates_into_a_test_key(setup, http):
    gw, account, _ = setup
    _, test_admin = await new_key(gw.service, account, mode="test", permissions=["admin"])
    key_id, _ = await new_key(gw.service, account, mode="test", name="sandbox")
    new = await _rotate(http, gw, bearer(test_admin), key_id)
    assert new["mode"] == "test" and new["key"].startswith("sk_test_")
    assert new["name"] == "sandbox"

"""GET /v1/auth/verify and GET /v1/account over HTTP on a real Redis (SPEC §7)."""

from __future__ import annotations

import json
from datetime import timedelta

from conftest import bearer, new_account, new_key

from gateway.keys.service import CLI
from gateway.timefmt import isoformat, utcnow

VERIFY_FIELDS = {
    "valid", "key_id", "name", "mode", "account_id", "permissions", "created_at",
    "expires_at", "last_used_at", "rotation_due", "credits",  # credits: SPEC §16
}  # fmt: skip


async def test_verify_answers_exactly_the_documented_shape(start_gateway, base_config, http):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    expires = isoformat(utcnow() + timedelta(days=3))
    key_id, secret = await new_key(
        gw.service, account, name="ci", permissions=["read", "users:write"], expires_at=expires
    )
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Request-Id"].startswith("req_")
        body = await resp.json()
    assert set(body) == VERIFY_FIELDS
    assert body["valid"] is True
    assert body["key_id"] == key_id
    assert body["name"] == "ci"
    assert body["mode"] == "live"
    assert body["account_id"] == account
    assert body["permissions"] == ["read", "users:write"]
    assert body["expires_at"] == expires
    assert body["created_at"].endswith("Z")
    # This very request may already be written as the key's last use (it lags by up to 10 s).
    assert body["last_used_at"] is None or body["last_used_at"] >= body["created_at"]
    assert body["rotation_due"] is False
    assert secret not in json.dumps(body)


async def test_verify_reports_rotation_due_once_the_key_is_older_than_rotation_days(
    start_gateway, base_config, http, redis_client, key_prefix
):
    gw = await start_gateway(base_config(keys={"rotation_days": 30}))
    account = await new_account(gw.service)
    old_id, old_secret = await new_key(gw.service, account)
    young_id, young_secret = await new_key(gw.service, account)
    # Backdate one key's creation in the store, as if it were made 31 days ago.
    raw = json.loads(await redis_client.get(f"{key_prefix}key:{old_id}"))
    raw["created_at"] = isoformat(utcnow() - timedelta(days=31))
    await redis_client.set(f"{key_prefix}key:{old_id}", json.dumps(raw))
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(old_secret)) as resp:
        assert (await resp.json())["rotation_due"] is True
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(young_secret)) as resp:
        assert (await resp.json())["rotation_due"] is False


async def test_verify_shows_last_used_at_from_the_store(
    start_gateway, base_config, http, redis_client, key_prefix
):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    # Later than any use this test makes, which the usage writer will not move back.
    await redis_client.hset(f"{key_prefix}last_used", key_id, "2099-11-20T08:00:00Z")
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert (await resp.json())["last_used_at"] == "2099-11-20T08:00:00Z"


async def test_verify_needs_a_valid_key_and_answers_like_any_route(
    start_gateway, base_config, http
):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    async with http.get(gw.url + "/v1/auth/verify") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "missing_api_key"
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret[:-1] + "x")) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    async with http.get(gw.url + "/v1/auth/verify", headers={"Authorization": "Basic abc"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_authorization_header"
    await gw.service.revoke_key(CLI, key_id)
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["error"]["code"] == "revoked_api_key"
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]


async def test_verify_applies_the_keys_restrictions(start_gateway, base_config, http):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    _, far_ip = await new_key(gw.service, account, allowed_ips=["203.0.113.0/24"])
    _, loopback = await new_key(gw.service, account, allowed_ips=["127.0.0.1"])
    _, users_only = await new_key(gw.service, account, allowed_endpoints=["GET /v1/users/**"])
    _, ref_only = await new_key(gw.service, account, allowed_referrers=["app.example.com"])
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(far_ip)) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "ip_not_allowed"
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(loopback)) as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(users_only)) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "endpoint_not_allowed"
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(ref_only)) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "referrer_not_allowed"
    headers = {**bearer(ref_only), "Referer": "https://app.example.com/settings"}
    async with http.get(gw.url + "/v1/auth/verify", headers=headers) as resp:
        assert resp.status == 200


async def test_verify_refuses_other_methods_with_allow(start_gateway, base_config, http):
    gw = await start_gateway(base_config())
    async with http.post(gw.url + "/v1/auth/verify") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_account_answers_exactly_the_documented_shape(start_gateway, base_config, http):
    gw = await start_gateway(base_config())
    account = (
        await gw.service.create_account(name="Globex", email="it@globex.test", plan="pro")
    ).id
    _, secret = await new_key(gw.service, account, mode="test")
    headers = {**bearer(secret), "X-Request-Id": "my-request.1"}
    async with http.get(gw.url + "/v1/account", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "my-request.1"
        body = await resp.json()
    assert set(body) == {"data", "meta"}
    assert body["data"] == {
        "account_id": account,
        "name": "Globex",
        "email": "it@globex.test",
        "plan": "pro",
        "api_version": "v1",
    }
    assert set(body["meta"]) == {"request_id", "timestamp"}
    assert body["meta"]["request_id"] == "my-request.1"
    assert body["meta"]["timestamp"].endswith("Z")


async def test_management_paths_follow_the_configured_prefix(start_gateway, base_config, http):
    gw = await start_gateway(base_config(management={"path_prefix": "/api/v2"}))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    async with http.get(gw.url + "/api/v2/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "route_not_found"


async def test_rate_limits_apply_to_management_calls(start_gateway, base_config, http):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, rate_limit="2/minute")
    for remaining in (1, 0):
        async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
            assert resp.status == 200
            assert resp.headers["X-RateLimit-Limit"] == "2"
            assert resp.headers["X-RateLimit-Remaining"] == str(remaining)
            assert "RateLimit-Policy" in resp.headers and "RateLimit" in resp.headers
    async with http.get(gw.url + "/v1/account", headers=bearer(secret)) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"

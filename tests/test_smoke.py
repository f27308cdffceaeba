"""The gateway end to end on a real Redis and a real upstream: the first things a user tries."""

from __future__ import annotations

from conftest import bearer, new_account, new_key, upstream_url


async def test_valid_key_reaches_upstream_with_identity_headers(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(
        base_config(
            routes=[{"name": "users", "match": "/v1/users", "upstream": upstream_url(upstream)}]
        )
    )
    account = await new_account(gw.service)
    key_id, secret = await new_key(
        gw.service, account, permissions=["read"], metadata={"team": "a"}
    )
    async with http.get(gw.url + "/v1/users/7?x=1", headers=bearer(secret)) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert resp.headers["X-Request-Id"].startswith("req_")
    seen = {k.lower(): v for k, v in body["headers"]}
    assert body["path"] == "/v1/users/7"
    assert body["query"] == "x=1"
    assert seen["x-gateway-key-id"] == key_id
    assert seen["x-gateway-account-id"] == account
    assert seen["x-gateway-key-mode"] == "live"
    assert seen["x-gateway-permissions"] == "read"
    assert seen["x-gateway-key-metadata"] == '{"team":"a"}'
    assert "authorization" not in seen


async def test_missing_key_is_401_with_bare_challenge(start_gateway, base_config, upstream, http):
    gw = await start_gateway(
        base_config(
            routes=[{"name": "users", "match": "/v1/users", "upstream": upstream_url(upstream)}]
        )
    )
    async with http.get(gw.url + "/v1/users") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        body = await resp.json()
    assert body["error"]["code"] == "missing_api_key"
    assert body["error"]["type"] == "authentication_error"
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]

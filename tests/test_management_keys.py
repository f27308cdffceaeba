"""The /v1/api-keys endpoints over HTTP on a real Redis (SPEC §7)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import CLI, bearer, keys_being_created, new_account, new_key

from gateway.keys.format import hash_secret
from gateway.timefmt import isoformat, parse_time


@pytest.fixture
async def admin(start_gateway, base_config):
    """A gateway, an account and a live admin key: (gateway, account id, key id, headers)."""
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, name="admin", permissions=["admin"])
    return gw, account, key_id, bearer(secret)


def _no_secret_fields(data: Any) -> None:
    if isinstance(data, dict):
        for name, value in data.items():
            assert "secret" not in name.lower() and "hash" not in name.lower(), name
            _no_secret_fields(value)
    elif isinstance(data, list):
        for value in data:
            _no_secret_fields(value)


async def _create(http, gw, headers, **fields) -> dict[str, Any]:
    fields.setdefault("name", "made over http")
    async with http.post(gw.url + "/v1/api-keys", json=fields, headers=headers) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return body["data"]


# -- create, show, list -----------------------------------------------------------


async def test_create_shows_the_secret_once_and_the_key_works(admin, http):
    gw, account, _, headers = admin
    fields = {
        "name": "billing worker",
        "permissions": ["read", "invoices:write"],
        "metadata": {"team": "billing", "tier": 2, "beta": True, "note": None},
        "allowed_ips": ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"],
        "allowed_referrers": ["*.example.com"],
        "allowed_endpoints": ["GET /v1/**", "/v1/auth/verify"],
        "rate_limit": "100/minute",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    async with http.post(gw.url + "/v1/api-keys", json=fields, headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    data = body["data"]
    secret = data["key"]
    assert secret.startswith("sk_live_") and len(secret) == len("sk_live_") + 38
    assert data["id"].startswith("key_") and secret[8:] not in data["id"]
    assert data["account_id"] == account
    assert data["mode"] == "live"
    assert data["prefix"] == "sk_live_"
    assert data["last4"] == secret[-4:]
    for name, value in fields.items():
        assert data[name] == value, name
    assert data["revoked_at"] is None and data["last_used_at"] is None
    _no_secret_fields(body)

    # The secret works, and is never shown again: not by show, list, nor the store.
    verify_headers = {**bearer(secret), "Referer": "https://app.example.com/"}
    async with http.get(gw.url + "/v1/auth/verify", headers=verify_headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["key_id"] == data["id"]
    async with http.get(gw.url + f"/v1/api-keys/{data['id']}", headers=headers) as resp:
        shown = await resp.text()
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        listed = await resp.text()
    stored = await gw.runtime.store.client.get(f"{gw.config.redis.key_prefix}key:{data['id']}")
    for text in (shown, listed, stored):
        assert secret not in text and secret[8:] not in text
    assert hash_secret(secret) in stored  # only the hash is kept
    assert json.loads(shown)["data"] == {k: v for k, v in data.items() if k != "key"}


async def test_create_defaults_and_expires_in(admin, http):
    gw, _, _, headers = admin
    data = await _create(http, gw, headers, name="  padded  ")
    assert data["name"] == "padded"
    assert data["permissions"] == [] and data["metadata"] == {}
    assert data["expires_at"] is None and data["rate_limit"] is None
    data = await _create(http, gw, headers, expires_in="90d")
    assert data["expires_at"].startswith(("20",))


async def test_list_shows_the_accounts_keys_newest_first_without_secrets(admin, http):
    gw, account, admin_id, headers = admin
    made = [(await _create(http, gw, headers, name=f"k{i}"))["id"] for i in range(3)]
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    ids = [k["id"] for k in body["data"]]
    assert ids == [*reversed(made), admin_id]
    assert body["has_more"] is False
    assert body["meta"]["has_more"] is False
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]
    for key in body["data"]:
        assert key["prefix"] == "sk_live_" and len(key["last4"]) == 4
        assert "key" not in key
    _no_secret_fields(body)


async def test_pagination_with_limit_and_starting_after(admin, http):
    gw, _, admin_id, headers = admin
    made = [(await _create(http, gw, headers, name=f"k{i}"))["id"] for i in range(4)]
    everything = [*reversed(made), admin_id]
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        url = gw.url + "/v1/api-keys?limit=2" + (f"&starting_after={after}" if after else "")
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            body = await resp.json()
        pages += 1
        page = [k["id"] for k in body["data"]]
        assert len(page) <= 2
        seen.extend(page)
        if not body["has_more"]:
            assert body["meta"]["next_starting_after"] is None
            break
        assert body["meta"]["next_starting_after"] == page[-1]
        after = page[-1]
    assert seen == everything
    assert pages == 3
    async with http.get(gw.url + "/v1/api-keys?limit=100", headers=headers) as resp:
        assert len((await resp.json())["data"]) == 5


async def test_paging_while_keys_are_created_lists_each_key_once(admin, http):
    """New keys go on top; the page after a cursor never shifts (one atomic read)."""
    gw, account, _, headers = admin
    before = [(await new_key(gw.service, account, name=f"old{i}"))[0] for i in range(40)]
    seen: list[str] = []
    async with keys_being_created(gw.service, account):
        after = None
        while True:
            url = gw.url + "/v1/api-keys?limit=3" + (f"&starting_after={after}" if after else "")
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200
                body = await resp.json()
            seen += [k["id"] for k in body["data"]]
            if not body["has_more"]:
                break
            after = seen[-1]
    assert len(seen) == len(set(seen))
    assert set(before) <= set(seen)


async def test_a_cursor_from_the_other_mode_is_not_in_the_list(admin, http):
    gw, account, _, headers = admin
    test_id, _ = await new_key(gw.service, account, mode="test")
    live_id, _ = await new_key(gw.service, account)
    for mode, cursor in (("live", test_id), ("test", live_id)):
        url = gw.url + f"/v1/api-keys?mode={mode}&starting_after={cursor}"
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 404, await resp.text()
            error = (await resp.json())["error"]
            assert (error["code"], error["details"]["field"]) == (
                "resource_not_found", "starting_after"
            )  # fmt: skip


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("limit=1&limit=2", "limit"),
        ("mode=sandbox", "mode"),
        ("starting_after=nope", "starting_after"),  # not a key id
        ("starting_after=", "starting_after"),
        ("page=2", "page"),
    ],
)
async def test_bad_list_parameters_are_400_naming_them(admin, http, query, field):
    gw, _, _, headers = admin
    async with http.get(gw.url + "/v1/api-keys?" + query, headers=headers) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["details"]["field"] == field


async def test_starting_after_an_unknown_key_is_404_like_any_unknown_key(admin, http):
    """SPEC §7: an unknown key id answers 404, and another account's as an unknown one."""
    gw, _, _, headers = admin
    other = await new_account(gw.service, name="Other")
    other_id, _ = await new_key(gw.service, other)
    for key_id in ("key_nope", other_id):
        async with http.get(
            gw.url + f"/v1/api-keys?starting_after={key_id}", headers=headers
        ) as resp:
            assert resp.status == 404
            body = await resp.json()
            assert body["error"]["code"] == "resource_not_found"
            assert body["error"]["details"] == {"field": "starting_after"}


async def test_list_filters_by_mode(admin, http):
    gw, _, admin_id, headers = admin
    test_key = await _create(http, gw, headers, mode="test")
    assert test_key["prefix"] == "sk_test_" and test_key["key"].startswith("sk_test_")
    async with http.get(gw.url + "/v1/api-keys?mode=test", headers=headers) as resp:
        assert [k["id"] for k in (await resp.json())["data"]] == [test_key["id"]]
    async with http.get(gw.url + "/v1/api-keys?mode=live", headers=headers) as resp:
        assert [k["id"] for k in (await resp.json())["data"]] == [admin_id]


# -- permission, isolation, test mode ----------------------------------------------


async def test_every_key_endpoint_needs_admin(admin, http):
    gw, account, admin_id, headers = admin
    _, writer = await new_key(gw.service, account, permissions=["write", "users:*"])
    calls = [
        ("GET", "/v1/api-keys"),
        ("POST", "/v1/api-keys"),
        ("GET", f"/v1/api-keys/{admin_id}"),
        ("PATCH", f"/v1/api-keys/{admin_id}"),
        ("DELETE", f"/v1/api-keys/{admin_id}"),
        ("POST", f"/v1/api-keys/{admin_id}/rotate"),
        ("GET", f"/v1/api-keys/{admin_id}/usage"),
    ]
    for method, path in calls:
        async with http.request(method, gw.url + path, json={}, headers=bearer(writer)) as resp:
            assert resp.status == 403, (method, path)
            body = await resp.json()
            assert body["error"]["code"] == "insufficient_permissions"
            assert body["error"]["details"]["required_permission"] == "admin"
            assert resp.headers["WWW-Authenticate"] == (
                'Bearer realm="api", error="insufficient_scope", scope="admin"'
            )
        async with http.request(method, gw.url + path, json={}) as resp:
            assert resp.status == 401
    # Nothing changed.
    async with http.get(gw.url + f"/v1/api-keys/{admin_id}", headers=headers) as resp:
        data = (await resp.json())["data"]
    assert data["revoked_at"] is None and data["rotated_to"] is None


async def test_another_accounts_key_is_404_like_an_unknown_one(admin, http):
    gw, _, _, headers = admin
    other = await new_account(gw.service, name="Other")
    other_id, other_secret = await new_key(gw.service, other, permissions=["admin"])
    answers = []
    for key_id in (other_id, "key_doesnotexist"):
        for method, path in [
            ("GET", f"/v1/api-keys/{key_id}"),
            ("PATCH", f"/v1/api-keys/{key_id}"),
            ("DELETE", f"/v1/api-keys/{key_id}"),
            ("POST", f"/v1/api-keys/{key_id}/rotate"),
            ("GET", f"/v1/api-keys/{key_id}/usage"),
        ]:
            async with http.request(
                method, gw.url + path, json={"name": "x"} if method == "PATCH" else None,
                headers=headers,
            ) as resp:  # fmt: skip
                assert resp.status == 404, (method, path)
                error = (await resp.json())["error"]
                assert error["code"] == "resource_not_found"
                assert error["type"] == "invalid_request_error"
                answers.append(error["message"].replace(key_id, "ID"))
    assert answers[:5] == answers[5:]
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert other_id not in {k["id"] for k in (await resp.json())["data"]}
    # The other account's key is untouched and still works.
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(other_secret)) as resp:
        assert resp.status == 200


async def test_a_test_mode_admin_key_sees_creates_and_manages_only_test_keys(admin, http):
    gw, account, live_admin_id, live_headers = admin
    test_admin_id, test_admin = await new_key(
        gw.service, account, mode="test", permissions=["admin"]
    )
    headers = bearer(test_admin)
    made = await _create(http, gw, headers, name="sandbox")
    assert made["mode"] == "test" and made["key"].startswith("sk_test_")
    async with http.post(
        gw.url + "/v1/api-keys", json={"name": "x", "mode": "live"}, headers=headers
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
        assert body["error"]["code"] == "insufficient_permissions"
        assert body["error"]["details"]["field"] == "mode"
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        ids = {k["id"] for k in (await resp.json())["data"]}
    assert ids == {made["id"], test_admin_id}
    async with http.get(gw.url + "/v1/api-keys?mode=live", headers=headers) as resp:
        assert resp.status == 403
    for method, path in [
        ("GET", f"/v1/api-keys/{live_admin_id}"),
        ("PATCH", f"/v1/api-keys/{live_admin_id}"),
        ("DELETE", f"/v1/api-keys/{live_admin_id}"),
        ("POST", f"/v1/api-keys/{live_admin_id}/rotate"),
        ("GET", f"/v1/api-keys/{live_admin_id}/usage"),
    ]:
        async with http.request(method, gw.url + path, json={}, headers=headers) as resp:
            assert resp.status == 403, (method, path)
            assert (await resp.json())["error"]["code"] == "insufficient_permissions"
    async with http.get(gw.url + f"/v1/api-keys/{live_admin_id}", headers=live_headers) as resp:
        assert (await resp.json())["data"]["revoked_at"] is None
    # Its own test keys it manages fully.
    async with http.patch(
        gw.url + f"/v1/api-keys/{made['id']}", json={"name": "renamed"}, headers=headers
    ) as resp:
        assert resp.status == 200
    async with http.delete(gw.url + f"/v1/api-keys/{made['id']}", headers=headers) as resp:
        assert resp.status == 200


# -- patch and revoke -------------------------------------------------------------


async def test_patch_changes_the_named_fields_and_the_gateway_follows(admin, http):
    gw, account, _, headers = admin
    key_id, secret = await new_key(gw.service, account, permissions=["read"], metadata={"a": 1})
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 200  # now cached
    change = {
        "name": "renamed",
        "permissions": ["write"],
        "metadata": {"b": "2"},
        "allowed_ips": ["192.0.2.0/24"],
        "rate_limit": "5/second",
    }
    async with http.patch(gw.url + f"/v1/api-keys/{key_id}", json=change, headers=headers) as resp:
        assert resp.status == 200
        data = (await resp.json())["data"]
    for name, value in change.items():
        assert data[name] == value
    assert data["id"] == key_id and data["mode"] == "live"
    _no_secret_fields(data)
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "ip_not_allowed"
    async with http.patch(
        gw.url + f"/v1/api-keys/{key_id}", json={"allowed_ips": []}, headers=headers
    ) as resp:
        assert (await resp.json())["data"]["allowed_ips"] == []
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        body = await resp.json()
    assert body["name"] == "renamed" and body["permissions"] == ["write"]


async def test_delete_revokes_at_once_and_is_idempotent(admin, http):
    gw, account, _, headers = admin
    key_id, secret = await new_key(gw.service, account)
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 200
    async with http.delete(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["message"] == "API key revoked successfully"
    assert body["data"]["id"] == key_id and body["data"]["revoked_at"].endswith("Z")
    async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "revoked_api_key"
    async with http.delete(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["data"]["revoked_at"] == body["data"]["revoked_at"]
    async with http.patch(
        gw.url + f"/v1/api-keys/{key_id}", json={"name": "x"}, headers=headers
    ) as resp:
        assert resp.status == 409  # a revoked key cannot be changed
        answer = await resp.json()
        assert answer["error"]["code"] == "key_not_active"
        assert answer["error"]["details"] == {"field": "id"}
    async with http.get(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        assert (await resp.json())["data"]["revoked_at"] == body["data"]["revoked_at"]


async def test_an_admin_key_can_revoke_itself_while_another_admin_key_remains(admin, http):
    gw, account, admin_id, headers = admin
    await new_key(gw.service, account, name="second admin", permissions=["admin"])
    async with http.delete(gw.url + f"/v1/api-keys/{admin_id}", headers=headers) as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "revoked_api_key"


# -- the account's last admin key --------------------------------------------------------


async def _refused_as_last_admin(resp) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == 409, body
    assert body["error"]["code"] == "last_admin_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert "last active" in body["error"]["message"]
    assert "admin key" in body["error"]["message"]
    return body


async def test_the_last_admin_key_can_neither_revoke_nor_demote_itself(admin, http):
    gw, account, admin_id, headers = admin
    # Other accounts' admin keys, revoked and expired admin keys, and non-admin keys do
    # not count.
    other = await new_account(gw.service, name="Other")
    await new_key(gw.service, other, name="their admin", permissions=["admin"])
    revoked = await _create(http, gw, headers, name="old admin", permissions=["admin"])
    async with http.delete(gw.url + f"/v1/api-keys/{revoked['id']}", headers=headers) as resp:
        assert resp.status == 200  # another admin key (this one) remains
    expired_id, _ = await new_key(gw.service, account, name="expired", permissions=["admin"])
    expired = await gw.service.store.get_key(expired_id)
    await gw.service.store.save_key(expired.evolve(expires_at="2001-01-01T00:00:00Z"))
    await _create(http, gw, headers, name="writer", permissions=["write"])

    url = gw.url + f"/v1/api-keys/{admin_id}"
    async with http.delete(url, headers=headers) as resp:
        body = await _refused_as_last_admin(resp)
        assert "the key making this request" in body["error"]["message"]
        assert body["error"]["details"] == {"field": "id"}
    for permissions in (["read", "write"], []):
        async with http.patch(url, json={"permissions": permissions}, headers=headers) as resp:
            await _refused_as_last_admin(resp)
    # Nothing changed: the key still works, still admin, not revoked.
    async with http.get(url, headers=headers) as resp:
        data = (await resp.json())["data"]
        assert resp.status == 200
        assert data["permissions"] == ["admin"] and data["revoked_at"] is None
    # Changes that keep it an admin key are fine.
    async with http.patch(url, json={"permissions": ["admin", "read"]}, headers=headers) as resp:
        assert resp.status == 200


async def test_another_admin_key_cannot_take_the_last_one_away_either(admin, http):
    gw, account, admin_id, headers = admin
    made = await _create(http, gw, headers, name="second admin", permissions=["admin"])
    second = bearer(made["key"])
    # The second admin demotes the first: allowed, the second remains.
    async with http.patch(
        gw.url + f"/v1/api-keys/{admin_id}", json={"permissions": ["read"]}, headers=second
    ) as resp:
        assert resp.status == 200
    # Now the second is the last: the first (no longer admin) cannot act, and the second
    # cannot revoke itself.
    async with http.delete(gw.url + f"/v1/api-keys/{made['id']}", headers=headers) as resp:
        assert resp.status == 403
    async with http.delete(gw.url + f"/v1/api-keys/{made['id']}", headers=second) as resp:
        await _refused_as_last_admin(resp)


async def test_test_admin_keys_do_not_keep_live_keys_manageable(admin, http):
    gw, account, admin_id, headers = admin
    test_admin = await _create(
        http, gw, headers, name="test admin", mode="test", permissions=["admin"]
    )
    # A test-mode admin key manages only test keys: the last live admin key stays.
    async with http.delete(gw.url + f"/v1/api-keys/{admin_id}", headers=headers) as resp:
        body = await _refused_as_last_admin(resp)
        assert "last active live admin key" in body["error"]["message"]
    # The last test admin key may go: the live admin key manages test keys too.
    async with http.delete(
        gw.url + f"/v1/api-keys/{test_admin['id']}", headers=bearer(test_admin["key"])
    ) as resp:
        assert resp.status == 200


async def test_the_operators_cli_is_not_held_to_it(admin, http):
    from gateway.keys.service import CLI

    gw, _, admin_id, headers = admin
    await gw.service.revoke_key(CLI, admin_id)  # how a locked-out account is let back in
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert resp.status == 401


# -- refused input --------------------------------------------------------------


BAD_BODIES = [
    ({"name": "x", "owner": "me"}, "owner"),
    ({"name": "x", "account_id": "acct_other"}, "account_id"),
    ({"name": "x", "hash": "abc"}, "hash"),
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 7}, "name"),
    ({"name": "x", "mode": "prod"}, "mode"),
    ({"name": "x", "permissions": ["Admin"]}, "permissions"),
    ({"name": "x", "permissions": ["users:read:all"]}, "permissions"),
    ({"name": "x", "permissions": "read"}, "permissions"),
    ({"name": "x", "metadata": {"nested": {"a": 1}}}, "metadata"),
    ({"name": "x", "metadata": {"list": [1]}}, "metadata"),
    ({"name": "x", "metadata": ["a"]}, "metadata"),
    ({"name": "x", "metadata": {f"k{i}": i for i in range(51)}}, "metadata"),
    ({"name": "x", "allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
    ({"name": "x", "allowed_ips": ["not-an-ip"]}, "allowed_ips"),
    ({"name": "x", "allowed_ips": "10.0.0.1"}, "allowed_ips"),
    ({"name": "x", "allowed_endpoints": ["GET"]}, "allowed_endpoints"),
    ({"name": "x", "rate_limit": "100/fortnight"}, "rate_limit"),
    ({"name": "x", "rate_limit": "0/minute"}, "rate_limit"),
    ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "expires_at": "2001-13-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "expires_in": "0s"}, "expires_in"),
    ({"name": "x", "expires_in": " 1d"}, "expires_in"),
    ({"name": "x", "rate_limit": "10 / minute"}, "rate_limit"),
    ({"name": "x", "permissions": ["read\n"]}, "permissions"),
    ({"name": "x", "allowed_ips": [" 10.0.0.1"]}, "allowed_ips"),
    ({"name": "x", "allowed_ips": ["010.0.0.1"]}, "allowed_ips"),
    ({"name": "x", "allowed_endpoints": [""]}, "allowed_endpoints"),
    ({"name": "x", "allowed_endpoints": ["BREW /coffee"]}, "allowed_endpoints"),
    ({"name": "x", "allowed_endpoints": ["GET  /x"]}, "allowed_endpoints"),
    ({"name": "x", "allowed_endpoints": ["/a/**b"]}, "allowed_endpoints"),
    ({"name": "x", "allowed_referrers": ["ftp://example.com/*"]}, "allowed_referrers"),
    ({"name": "x", "metadata": {"k" * 41: 1}}, "metadata"),
    ({"name": "x", "expires_in": "5 fortnights"}, "expires_in"),
    ({"name": "x", "expires_in": "-5d"}, "expires_in"),
    ({"name": "x", "expires_in": "99999999999d"}, "expires_in"),
    ({"name": "x", "expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"}, "expires_in"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_create_bodies_are_400_naming_the_field(admin, http, body, field):
    gw, _, _, headers = admin
    async with http.post(gw.url + "/v1/api-keys", json=body, headers=headers) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["details"]["field"] == field
    assert answer["meta"]["request_id"] == resp.headers["X-Request-Id"]
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert len((await resp.json())["data"]) == 1  # nothing was created


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "body"),
        (b'{"name": "x",}', "body"),
        (b'["name"]', "body"),
        (b'"x"', "body"),
        (b'{"name": "x", "name": "y"}', "body"),
        (b'{"name": "x", "metadata": {"n": NaN}}', "body"),
        (b"\xff\xfe{}", "body"),
    ],
)
async def test_unreadable_bodies_are_400(admin, http, raw, field):
    gw, _, _, headers = admin
    send = {**headers, "Content-Type": "application/json"}
    async with http.post(gw.url + "/v1/api-keys", data=raw, headers=send) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["details"]["field"] == field


async def test_bad_patch_bodies_are_400_and_change_nothing(admin, http):
    gw, account, _, headers = admin
    key_id, _ = await new_key(gw.service, account, name="keep", permissions=["read"])
    for body, field in [
        ({"mode": "test"}, "mode"),
        ({"permissions": ["read", "bad perm"]}, "permissions"),
        ({"allowed_ips": ["300.1.1.1"]}, "allowed_ips"),
        ({"metadata": {"a": {"b": 1}}}, "metadata"),
        ({"name": "ok", "unknown": 1}, "unknown"),
    ]:
        async with http.patch(gw.url + f"/v1/api-keys/{key_id}", json=body, headers=headers) as r:
            assert r.status == 400, body
            assert (await r.json())["error"]["details"]["field"] == field
    async with http.get(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        data = (await resp.json())["data"]
    assert data["name"] == "keep" and data["permissions"] == ["read"]


async def test_bodies_over_the_cap_are_413(admin, http):
    gw, _, _, headers = admin
    big = {"name": "x", "metadata": {"pad": "y" * 100_000}}
    async with http.post(gw.url + "/v1/api-keys", json=big, headers=headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"

    async def chunks():
        yield b'{"name": "x", "metadata": {"pad": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}}'

    async with http.post(gw.url + "/v1/api-keys", data=chunks(), headers=headers) as resp:
        assert resp.status == 413
    # Refused on its declared size before the key is even looked at.
    async with http.post(
        gw.url + "/v1/api-keys", json=big, headers={"Authorization": "Bearer nope"}
    ) as resp:
        assert resp.status == 413


async def test_body_cap_follows_a_smaller_server_max(start_gateway, base_config, http):
    gw = await start_gateway(base_config(server={"max_body_bytes": 100}))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["admin"])
    body = {"name": "x" * 150}
    async with http.post(gw.url + "/v1/api-keys", json=body, headers=bearer(secret)) as resp:
        assert resp.status == 413


async def test_unknown_paths_and_methods_under_api_keys(admin, http):
    gw, _, admin_id, headers = admin
    async with http.get(gw.url + f"/v1/api-keys/{admin_id}/nothing", headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "route_not_found"
    async with http.put(gw.url + f"/v1/api-keys/{admin_id}", headers=headers) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "DELETE, GET, HEAD, PATCH"
    async with http.get(gw.url + f"/v1/api-keys/{admin_id}/rotate", headers=headers) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
    async with http.get(gw.url + "/v1/api-keys/", headers=headers) as resp:
        assert resp.status == 200  # a trailing slash is the same collection


# -- usage ----------------------------------------------------------------------


async def test_usage_answers_thirty_utc_days_newest_first(admin, http):
    from datetime import UTC, datetime, timedelta

    gw, account, _, headers = admin
    key_id, _ = await new_key(gw.service, account)
    async with http.get(gw.url + f"/v1/api-keys/{key_id}/usage", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["data"]["key_id"] == key_id
    days = body["data"]["days"]
    today = datetime.now(UTC).date()
    assert [d["date"] for d in days] == [(today - timedelta(days=n)).isoformat() for n in range(30)]
    for day in days:
        assert set(day) == {"date", "allowed", "denied", "rate_limited"}


async def test_usage_reads_counts_through_the_usage_source(admin, http):
    from gateway.timefmt import utcnow

    gw, account, _, headers = admin
    key_id, _ = await new_key(gw.service, account)
    today = utcnow().date().isoformat()
    asked = []

    class Counts:
        async def days(self, key_record, days=30):
            asked.append((key_record.id, days))
            return [{"date": today, "allowed": 7, "denied": 2, "rate_limited": 1}]

    gw.runtime.usage = Counts()
    async with http.get(gw.url + f"/v1/api-keys/{key_id}/usage", headers=headers) as resp:
        days = (await resp.json())["data"]["days"]
    assert asked == [(key_id, 30)]
    assert days[0] == {"date": today, "allowed": 7, "denied": 2, "rate_limited": 1}
    assert all(d["allowed"] == d["denied"] == d["rate_limited"] == 0 for d in days[1:])
    assert len(days) == 30


async def test_store_down_during_an_operation_is_503(admin, http):
    gw, _, _, headers = admin
    async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert resp.status == 200  # the admin key is now cached
    client = gw.runtime.store.client
    real_execute = client.execute_command

    async def down(*args, **kwargs):
        from redis.exceptions import ConnectionError as RedisConnectionError

        raise RedisConnectionError("store down (simulated)")

    client.execute_command = down
    try:
        async with http.get(gw.url + "/v1/api-keys", headers=headers) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert (await resp.json())["error"]["code"] == "auth_backend_unavailable"
    finally:
        client.execute_command = real_execute


async def test_usage_and_last_used_follow_real_requests(admin, http):
    import time

    gw, account, _, headers = admin
    key_id, secret = await new_key(gw.service, account, permissions=["read"])
    for _ in range(3):
        async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
            assert resp.status == 200
    async with http.get(gw.url + "/v1/api-keys", headers=bearer(secret)) as resp:
        assert resp.status == 403  # identified, then refused: counted as denied
    deadline = time.monotonic() + 10  # counts may lag by up to 10 s
    while True:
        async with http.get(gw.url + f"/v1/api-keys/{key_id}/usage", headers=headers) as resp:
            today = (await resp.json())["data"]["days"][0]
        if today["allowed"] >= 3 and today["denied"] >= 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert (today["allowed"], today["denied"], today["rate_limited"]) == (3, 1, 0)
    async with http.get(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        assert (await resp.json())["data"]["last_used_at"] is not None


async def test_two_admin_keys_revoking_each_other_at_once_leave_one(admin, http):
    """The check and the revocation are one step per account: never both succeed."""

    gw, account, first_id, first = admin
    made = await _create(http, gw, first, name="second admin", permissions=["admin"])
    second = bearer(made["key"])

    async def revoke(key_id: str, headers: dict) -> int:
        async with http.delete(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
            await resp.read()
            return resp.status

    for _ in range(5):
        statuses = await asyncio.gather(revoke(made["id"], first), revoke(first_id, second))
        # One wins. The other is refused: 409 when both got past authentication first, or
        # 401 revoked_api_key when the first revocation reached it before its own check.
        assert sorted(statuses) in ([200, 401], [200, 409]), statuses
        # Exactly one active admin key is left, and it works.
        keys = [await gw.service.store.get_key(i) for i in (first_id, made["id"])]
        alive = [k for k in keys if k.revoked_at is None]
        assert len(alive) == 1
        survivor = first if alive[0].id == first_id else second
        async with http.get(gw.url + "/v1/api-keys", headers=survivor) as resp:
            assert resp.status == 200
        # Another pair for the next round.
        made = await _create(http, gw, survivor, name="next admin", permissions=["admin"])
        first_id, first, second = alive[0].id, survivor, bearer(made["key"])


async def test_a_patch_needs_a_body(admin, http):
    gw, _, key_id, headers = admin
    async with http.patch(gw.url + f"/v1/api-keys/{key_id}", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["details"] == {"field": "body"}


@pytest.mark.parametrize("grace", [0, 5, "2 s", "1000000d", ""])
async def test_a_grace_period_is_a_duration_string_of_at_most_six_digits(admin, http, grace):
    gw, _, key_id, headers = admin
    async with http.post(
        gw.url + f"/v1/api-keys/{key_id}/rotate", json={"grace_period": grace}, headers=headers
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["details"] == {"field": "grace_period"}


def test_a_time_in_an_early_year_is_written_with_four_digits():
    """strftime("%Y") writes year 388 as "388", which no ISO 8601 reader takes back."""
    assert isoformat(parse_time("0388-03-20T01:42:06Z")) == "0388-03-20T01:42:06Z"


async def test_a_referrer_pattern_urllib_cannot_split_is_no_server_error(admin, http):
    gw, _, key_id, headers = admin
    async with http.patch(
        gw.url + f"/v1/api-keys/{key_id}",
        json={"allowed_referrers": ["https://[not-an-address/*"]},
        headers=headers,
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["data"]["allowed_referrers"] == ["https://[not-an-address/*"]


async def test_credits_given_as_whole_floats_are_taken_and_fractions_refused(admin, http):
    """JSON has one number type: 5000.0 is the whole number the schema's integer allows."""
    gw, account, _, headers = admin
    made = await _create(
        http,
        gw,
        headers,
        credits={"remaining": 5000.0, "refill": {"amount": 20.0, "interval": "day"}},
    )
    balance = await gw.service.balances.credits(account, "live", made["id"])
    assert balance is not None and balance.remaining == 5000
    record = await gw.service.get_key(CLI, made["id"])
    assert record.credits["refill"] == {"amount": 20, "interval": "day"}
    async with http.post(
        gw.url + "/v1/api-keys",
        json={"name": "half", "credits": {"remaining": 5.5}},
        headers=headers,
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["details"] == {"field": "credits.remaining"}

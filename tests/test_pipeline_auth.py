"""The key checks of the pipeline (SPEC §4) over HTTP, on a real Redis and a real upstream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from conftest import bearer, new_account, new_key, upstream_url
from http_raw import raw_request

from gateway.keys.format import checksum, hash_secret
from gateway.keys.service import CLI

CHALLENGE = 'Bearer realm="api"'
INVALID_REQUEST = 'Bearer realm="api", error="invalid_request"'
INVALID_TOKEN = 'Bearer realm="api", error="invalid_token"'


def routes(upstream, **extra):
    return [
        {"name": "users", "match": "/api/users", "upstream": upstream_url(upstream),
         "permissions": {"GET": "users:read", "*": "users:write"}, **extra},
        {"name": "open", "match": "/api/open", "upstream": upstream_url(upstream)},
        {"name": "public", "match": "/public", "upstream": upstream_url(upstream), "auth": "none"},
    ]  # fmt: skip


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(base_config(routes=routes(upstream)))


@pytest.fixture
async def account(gw):
    return await new_account(gw.service)


async def error_of(resp) -> dict:
    body = await resp.json()
    assert set(body) == {"error", "meta"}
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]
    assert resp.headers["Content-Type"].startswith("application/json")
    return body["error"]


def seen_headers(body: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in body["headers"]}


# -- missing and malformed credentials --------------------------------------------------


class TestMissingKey:
    async def test_no_authorization_header(self, gw, http):
        async with http.get(gw.url + "/api/users") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == CHALLENGE
            error = await error_of(resp)
        assert error["code"] == "missing_api_key"
        assert error["type"] == "authentication_error"
        assert error["message"]

    @pytest.mark.parametrize("param", ["api_key", "access_token", "key"])
    async def test_key_in_query_string_is_not_read(self, gw, account, http, param):
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        async with http.get(gw.url + f"/api/users?{param}={secret}") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == CHALLENGE
            assert (await error_of(resp))["code"] == "missing_api_key"


class TestMalformedHeader:
    @pytest.mark.parametrize(
        "value",
        [
            "Basic dXNlcjpwYXNz",
            "Token {key}",
            "Basic {key}",
            "Bearer",
            "Bearer ",
            "Bearerabc",
            "Bearer{key}",
            "{key}",
            "Bearer a b",
            "Bearer {key} extra",
            "",
        ],
    )
    async def test_malformed_header_is_invalid_request(self, gw, account, value):
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        header = value.format(key=secret)
        resp = await raw_request(gw.url, "GET", "/api/users", [("Authorization", header)])
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == INVALID_REQUEST
        body = resp.json()
        assert body["error"]["code"] == "invalid_authorization_header"
        assert body["error"]["type"] == "authentication_error"
        assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]

    async def test_two_authorization_headers(self, gw, account):
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        resp = await raw_request(
            gw.url, "GET", "/api/users",
            [("Authorization", f"Bearer {secret}"), ("Authorization", f"Bearer {secret}")],
        )  # fmt: skip
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == INVALID_REQUEST
        assert resp.json()["error"]["code"] == "invalid_authorization_header"

    @pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
    async def test_scheme_is_case_insensitive(self, gw, account, http, scheme):
        _, secret = await new_key(gw.service, account, permissions=["users:read"])
        async with http.get(
            gw.url + "/api/users", headers={"Authorization": f"{scheme} {secret}"}
        ) as resp:
            assert resp.status == 200

    async def test_several_spaces_after_the_scheme_are_allowed(self, gw, account):
        _, secret = await new_key(gw.service, account, permissions=["users:read"])
        resp = await raw_request(
            gw.url, "GET", "/api/users", [("Authorization", f"Bearer   {secret}")]
        )
        assert resp.status == 200


# -- bad, revoked, expired keys ---------------------------------------------------------


def with_bad_checksum(secret: str) -> str:
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


def well_formed_unknown(prefix: str = "sk_live_") -> str:
    head = prefix + "Z" * 32
    return head + checksum(head)


class TestInvalidKey:
    @pytest.mark.parametrize(
        "token",
        [
            "sk_live_tooshort",
            with_bad_checksum(well_formed_unknown()),
            "pk_live_" + "a" * 38,
            "sk_prod_" + "a" * 38,
        ],
    )
    async def test_badly_formed_key(self, gw, http, token):
        async with http.get(gw.url + "/api/users", headers=bearer(token)) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == INVALID_TOKEN
            error = await error_of(resp)
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "authentication_error"

    async def test_bad_checksum_of_a_real_key(self, gw, account, http):
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        async with http.get(
            gw.url + "/api/users", headers=bearer(with_bad_checksum(secret))
        ) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == INVALID_TOKEN
            assert (await error_of(resp))["code"] == "invalid_api_key"

    async def test_well_formed_but_unknown_key(self, gw, http):
        async with http.get(gw.url + "/api/users", headers=bearer(well_formed_unknown())) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == INVALID_TOKEN
            assert (await error_of(resp))["code"] == "invalid_api_key"

    async def test_key_with_another_prefix_is_unknown(
        self, start_gateway, base_config, upstream, http
    ):
        gw = await start_gateway(base_config(keys={"prefix": "acme"}, routes=routes(upstream)))
        account = await new_account(gw.service)
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        assert secret.startswith("acme_live_")
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 200
        sk_lookalike = "sk_live_" + secret.removeprefix("acme_live_")
        async with http.get(gw.url + "/api/users", headers=bearer(sk_lookalike)) as resp:
            assert resp.status == 401


@contextlib.asynccontextmanager
async def monitored(
    redis_url: str, marker: str, sentinel_client: aioredis.Redis
) -> AsyncIterator[list[str]]:
    """Every command the Redis server runs while inside, as text, that mentions ``marker``."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    seen: list[str] = []
    sentinel = marker + "monitor-sentinel"
    async with client.monitor() as monitor:

        async def collect() -> None:
            async for info in monitor.listen():
                if marker in info["command"]:
                    seen.append(info["command"])
                if sentinel in info["command"]:
                    return

        task = asyncio.create_task(collect())
        try:
            yield seen
            await sentinel_client.get(sentinel)
            await asyncio.wait_for(task, 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    await client.aclose()


class TestMalformedKeysNeverReachTheStore:
    async def test_bad_checksum_costs_no_redis_command(
        self, gw, account, http, redis_url, redis_client, key_prefix
    ):
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        bad = with_bad_checksum(secret)
        unknown = well_formed_unknown()
        async with monitored(redis_url, key_prefix, redis_client) as commands:
            for token in (bad, "sk_live_garbage", bad):
                async with http.get(gw.url + "/api/users", headers=bearer(token)) as resp:
                    assert resp.status == 401
            async with http.get(gw.url + "/api/users", headers=bearer(unknown)) as resp:
                assert resp.status == 401  # a well-formed key is looked up: the control
        text = "\n".join(commands)
        assert hash_secret(unknown) in text
        assert hash_secret(bad) not in text
        assert len([c for c in commands if "keyhash" in c]) == 1

    async def test_unknown_key_is_cached_negatively(
        self, gw, http, redis_url, redis_client, key_prefix
    ):
        unknown = well_formed_unknown()
        async with monitored(redis_url, key_prefix, redis_client) as commands:
            for _ in range(20):
                async with http.get(gw.url + "/api/users", headers=bearer(unknown)) as resp:
                    assert resp.status == 401
        assert len([c for c in commands if hash_secret(unknown) in c]) == 1

    async def test_known_key_costs_no_redis_command_once_cached(
        self, gw, account, http, redis_url, redis_client, key_prefix
    ):
        _, secret = await new_key(gw.service, account, permissions=["users:read"])
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 200
        async with monitored(redis_url, key_prefix, redis_client) as commands:
            for _ in range(10):
                async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
                    assert resp.status == 200
        assert not [c for c in commands if "keyhash" in c or " key:" in c.replace(key_prefix, " ")]


class TestKeyStatus:
    async def test_revoked_key(self, gw, account, http):
        key_id, secret = await new_key(gw.service, account, permissions=["users:read"])
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 200  # cached now
        await gw.service.revoke_key(CLI, key_id)
        await asyncio.sleep(0.2)  # the invalidation message
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == INVALID_TOKEN
            error = await error_of(resp)
        assert error["code"] == "revoked_api_key"
        assert error["type"] == "authentication_error"

    async def test_expired_key(self, gw, account, http):
        key_id, secret = await new_key(gw.service, account, permissions=["users:read"])
        record = await gw.service.store.get_key(key_id)
        past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await gw.service.store.save_key(record.evolve(expires_at=past))
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == INVALID_TOKEN
            error = await error_of(resp)
        assert error["code"] == "expired_api_key"

    async def test_key_expires_while_cached(self, gw, account, http):
        soon = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        _, secret = await new_key(gw.service, account, permissions=["users:read"], expires_at=soon)
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 200
        await asyncio.sleep(
            max(0.0, (datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds()) + 0.05
        )
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert resp.status == 401
            assert (await error_of(resp))["code"] == "expired_api_key"

    async def test_revoked_wins_over_expired(self, gw, account, http):
        key_id, secret = await new_key(gw.service, account, permissions=["users:read"])
        record = await gw.service.revoke_key(CLI, key_id)
        past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await gw.service.store.save_key(record.evolve(expires_at=past))
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            assert (await error_of(resp))["code"] == "revoked_api_key"


# -- permissions ------------------------------------------------------------------------


class TestPermissions:
    async def test_missing_permission_is_403_with_scope(self, gw, account, http):
        _, secret = await new_key(gw.service, account, permissions=["users:read"])
        async with http.post(gw.url + "/api/users", headers=bearer(secret), data=b"{}") as resp:
            assert resp.status == 403
            assert resp.headers["WWW-Authenticate"] == (
                'Bearer realm="api", error="insufficient_scope", scope="users:write"'
            )
            error = await error_of(resp)
        assert error["code"] == "insufficient_permissions"
        assert error["type"] == "permission_error"
        assert error["details"]["required_permission"] == "users:write"

    @pytest.mark.parametrize(
        "held, method, status",
        [
            (["users:read"], "GET", 200),
            (["read"], "GET", 200),
            (["write"], "GET", 200),
            (["users:*"], "DELETE", 200),
            (["users:write"], "PATCH", 200),
            (["admin"], "PUT", 200),
            (["orders:*", "users:read"], "GET", 200),
            (["read"], "POST", 403),
            (["users:read"], "DELETE", 403),
            (["orders:*"], "GET", 403),
            (["webhook"], "GET", 403),
            ([], "GET", 403),
        ],
    )
    async def test_route_permission_map(self, gw, account, http, held, method, status):
        _, secret = await new_key(gw.service, account, permissions=held)
        async with http.request(method, gw.url + "/api/users/1", headers=bearer(secret)) as resp:
            assert resp.status == status

    async def test_route_without_map_needs_only_a_valid_key(self, gw, account, http):
        _, secret = await new_key(gw.service, account, permissions=[])
        async with http.delete(gw.url + "/api/open/1", headers=bearer(secret)) as resp:
            assert resp.status == 200


class TestIdentityReachesUpstream:
    async def test_valid_key_forwards_identity_headers(self, gw, account, http):
        key_id, secret = await new_key(
            gw.service, account, name="ci deploy", permissions=["users:read", "orders:*"],
            metadata={"team": "billing", "tier": 2},
        )  # fmt: skip
        async with http.get(gw.url + "/api/users/7", headers=bearer(secret)) as resp:
            assert resp.status == 200
            body = await resp.json()
        seen = seen_headers(body)
        assert seen["x-gateway-key-id"] == key_id
        assert seen["x-gateway-key-name"] == "ci deploy"
        assert seen["x-gateway-key-mode"] == "live"
        assert seen["x-gateway-account-id"] == account
        assert seen["x-gateway-permissions"] == "users:read,orders:*"
        assert seen["x-gateway-key-metadata"] == '{"team":"billing","tier":2}'
        assert "authorization" not in seen

    async def test_key_without_metadata_sends_no_metadata_header(self, gw, account, http):
        _, secret = await new_key(gw.service, account, permissions=["users:read"])
        async with http.get(gw.url + "/api/users", headers=bearer(secret)) as resp:
            seen = seen_headers(await resp.json())
        assert "x-gateway-key-metadata" not in seen


# -- auth: none -------------------------------------------------------------------------


class TestAuthNoneRoutes:
    async def test_no_key_needed(self, gw, http):
        async with http.get(gw.url + "/public/docs") as resp:
            assert resp.status == 200
            assert (await resp.json())["path"] == "/public/docs"

    @pytest.mark.parametrize(
        "value", ["Basic dXNlcjpwYXNz", "Bearer a b", "Bearer sk_live_garbage", "junk"]
    )
    async def test_malformed_authorization_is_ignored_and_not_forwarded(self, gw, http, value):
        async with http.get(gw.url + "/public/docs", headers={"Authorization": value}) as resp:
            assert resp.status == 200
            seen = seen_headers(await resp.json())
        assert "authorization" not in seen

    async def test_valid_key_is_not_forwarded_nor_identified(self, gw, account, http):
        _, secret = await new_key(gw.service, account, permissions=["admin"])
        async with http.get(gw.url + "/public/docs", headers=bearer(secret)) as resp:
            seen = seen_headers(await resp.json())
        assert "authorization" not in seen
        assert not [h for h in seen if h.startswith("x-gateway-")]

    async def test_two_authorization_headers_are_ignored(self, gw):
        resp = await raw_request(
            gw.url, "GET", "/public/docs", [("Authorization", "a"), ("Authorization", "b")]
        )
        assert resp.status == 200
        assert "authorization" not in seen_headers(resp.json())

    async def test_client_gateway_headers_are_stripped(self, gw):
        resp = await raw_request(
            gw.url, "GET", "/public/docs",
            [("X-Gateway-Key-Id", "key_forged"), ("x-gateway-account-id", "acct_forged"),
             ("X_Gateway_Permissions", "admin"), ("X-GATEWAY-KEY-MODE", "live"),
             ("X-Other", "kept")],
        )  # fmt: skip
        assert resp.status == 200
        seen = seen_headers(resp.json())
        assert not [h for h in seen if h.startswith(("x-gateway", "x_gateway"))]
        assert seen["x-other"] == "kept"

    async def test_proxy_authorization_is_not_forwarded(self, gw, http):
        async with http.get(
            gw.url + "/public/x", headers={"Proxy-Authorization": "Basic eA=="}
        ) as resp:
            assert "proxy-authorization" not in seen_headers(await resp.json())

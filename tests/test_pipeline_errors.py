"""The request checks before the key (SPEC §4): HTTPS, path, route, method, size; the
error envelope and X-Request-Id."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from conftest import bearer, new_account, new_key, service_for, upstream_url
from http_raw import raw_request
from realparts import self_signed

from gateway.config import parse_config


def routes(upstream, **users):
    return [
        {"name": "users", "match": "/api/users", "upstream": upstream_url(upstream),
         "methods": ["GET", "POST"], **users},
        {"name": "uploads", "match": "/upload", "upstream": upstream_url(upstream)},
        {"name": "public", "match": "/public", "upstream": upstream_url(upstream), "auth": "none"},
        {"name": "raw", "match": "/raw", "upstream": upstream_url(upstream), "auth": "none",
         "strip_prefix": True},
    ]  # fmt: skip


def seen_headers(body: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in body["headers"]}


async def error_of(resp, status: int, code: str, type_: str) -> dict:
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["type"] == type_
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]
    return body["error"]


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(
        base_config(server={"max_body_bytes": 1000}, routes=routes(upstream))
    )


@pytest.fixture
async def secret(gw):
    account = await new_account(gw.service)
    return (await new_key(gw.service, account, permissions=["admin"]))[1]


# -- require_https ----------------------------------------------------------------------


class TestHttpsBehindTrustedProxy:
    @pytest.fixture
    async def gw(self, start_gateway, base_config, upstream):
        return await start_gateway(
            base_config(
                server={"require_https": True, "trusted_proxies": ["127.0.0.1/32"]},
                routes=routes(upstream),
            )
        )

    async def test_plain_http_is_refused(self, gw, http):
        async with http.get(gw.url + "/public/x") as resp:
            error = await error_of(resp, 403, "https_required", "permission_error")
        assert error["message"]

    async def test_https_is_checked_before_anything_else(self, gw, http):
        async with http.get(gw.url + "/no/such/route") as resp:
            await error_of(resp, 403, "https_required", "permission_error")
        resp = await raw_request(gw.url, "GET", "/a/../../etc")
        assert resp.status == 403

    async def test_forwarded_proto_https_from_trusted_proxy_counts(self, gw, http, secret):
        headers = {"X-Forwarded-Proto": "https", **bearer(secret)}
        async with http.get(gw.url + "/api/users", headers=headers) as resp:
            assert resp.status == 200
            seen = seen_headers(await resp.json())
        assert seen["x-forwarded-proto"] == "https"

    @pytest.mark.parametrize("proto", ["http", "HTTP", "ws", ""])
    async def test_forwarded_proto_other_than_https_is_refused(self, gw, http, proto):
        async with http.get(gw.url + "/public/x", headers={"X-Forwarded-Proto": proto}) as resp:
            await error_of(resp, 403, "https_required", "permission_error")


async def test_a_listed_origin_can_read_the_https_refusal(
    start_gateway, base_config, upstream, http
):
    """SPEC §12: every answer to a listed origin carries the CORS headers, this one too."""
    app = "https://app.example.com"
    gw = await start_gateway(
        base_config(
            server={"require_https": True, "trusted_proxies": ["10.0.0.0/8"]},
            routes=routes(upstream, cors={"allow_origins": [app]}),
            management={"cors": {"allow_origins": [app]}},
        )
    )
    for path in ("/api/users", "/v1/auth/verify"):  # a route's policy, and management's
        async with http.get(gw.url + path, headers={"Origin": app}) as resp:
            await error_of(resp, 403, "https_required", "permission_error")
            assert resp.headers["Access-Control-Allow-Origin"] == app, path
            assert resp.headers["Vary"] == "Origin"
    for path, origin in (("/public/x", app), ("/api/users", "https://other.example.com")):
        async with http.get(gw.url + path, headers={"Origin": origin}) as resp:
            await error_of(resp, 403, "https_required", "permission_error")
            assert "Access-Control-Allow-Origin" not in resp.headers, path


class TestHttpsFromUntrustedPeer:
    async def test_forwarded_proto_from_untrusted_peer_counts_for_nothing(
        self, start_gateway, base_config, upstream, http
    ):
        gw = await start_gateway(
            base_config(
                server={"require_https": True, "trusted_proxies": ["10.0.0.0/8"]},
                routes=routes(upstream),
            )
        )
        async with http.get(gw.url + "/public/x", headers={"X-Forwarded-Proto": "https"}) as resp:
            await error_of(resp, 403, "https_required", "permission_error")

    async def test_upstream_sees_the_real_scheme(self, gw, http):
        async with http.get(gw.url + "/public/x", headers={"X-Forwarded-Proto": "https"}) as resp:
            seen = seen_headers(await resp.json())
        assert seen["x-forwarded-proto"] == "http"


class TestHttpsTerminatedByTheGateway:
    async def test_tls_listener_serves_https_and_counts_as_https(
        self, gateway_process, base_config, upstream, redis_client, tmp_path
    ):
        cert, key = self_signed(tmp_path)
        data = base_config(
            server={"require_https": True, "tls": {"cert_file": str(cert), "key_file": str(key)}},
            routes=routes(upstream),
        )
        service = service_for(redis_client, parse_config(data))
        account = await new_account(service)
        _, secret = await new_key(service, account, permissions=["admin"])
        proc = gateway_process(data).start()
        trust = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{proc.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/api/users", headers=bearer(secret), ssl=trust) as resp:
                assert resp.status == 200
                seen = seen_headers(await resp.json())
            assert seen["x-forwarded-proto"] == "https"
            async with session.get(url + "/api/users", ssl=trust) as resp:
                assert resp.status == 401  # TLS satisfies require_https; the key check still runs
            # Plain HTTP on the TLS port is no way around it: the handshake fails.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{proc.port}/public/x") as resp:
                    await resp.read()
                    assert resp.status != 200


# -- path, route, method, size ----------------------------------------------------------


class TestBadPath:
    @pytest.mark.parametrize(
        "target",
        ["/..", "/api/users/../../..", "/api/users/..%2f..%2fadmin", "/api/users%2F7",
         "/api/users/7%00", "/api/users%5c7", "/api/users/..;/x", "/api/%zz", "/%2e%2e/api/users"],
    )  # fmt: skip
    async def test_unsafe_path_is_400(self, gw, secret, target):
        resp = await raw_request(gw.url, "GET", target, [("Authorization", f"Bearer {secret}")])
        assert resp.status == 400
        body = resp.json()
        assert body["error"]["code"] == "bad_request"
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["details"]["reason"]
        assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]

    async def test_bad_path_is_checked_before_the_route(self, gw):
        resp = await raw_request(gw.url, "GET", "/nowhere/%2e%2e/%2e%2e")
        assert resp.status == 400


class TestRouteNotFound:
    @pytest.mark.parametrize("path", ["/nope", "/api/usersX", "/api", "/API/users", "/"])
    async def test_unmatched_path_is_404(self, gw, http, path):
        async with http.get(gw.url + path) as resp:
            await error_of(resp, 404, "route_not_found", "invalid_request_error")

    async def test_404_needs_no_key(self, gw, http):
        async with http.get(gw.url + "/nope", headers={"Authorization": "Basic x"}) as resp:
            assert resp.status == 404
            assert "WWW-Authenticate" not in resp.headers


class TestMethodNotAllowed:
    @pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS"])
    async def test_405_with_allow(self, gw, http, secret, method):
        async with http.request(method, gw.url + "/api/users/1", headers=bearer(secret)) as resp:
            error = await error_of(resp, 405, "method_not_allowed", "invalid_request_error")
            allow = resp.headers["Allow"]
        assert [m.strip() for m in allow.split(",")] == ["GET", "HEAD", "POST"]
        assert error["details"]["allowed"] == ["GET", "HEAD", "POST"]

    async def test_405_comes_before_the_key_check(self, gw, http):
        async with http.delete(gw.url + "/api/users/1") as resp:
            assert resp.status == 405

    async def test_head_follows_get(self, gw, http, secret):
        async with http.head(gw.url + "/api/users/1", headers=bearer(secret)) as resp:
            assert resp.status == 200


class TestPayloadTooLarge:
    async def test_content_length_over_limit(self, gw, http, secret):
        async with http.post(
            gw.url + "/api/users", data=b"x" * 1001, headers=bearer(secret)
        ) as resp:
            error = await error_of(resp, 413, "payload_too_large", "invalid_request_error")
        assert error["details"]["max_body_bytes"] == 1000

    async def test_content_length_at_limit_passes(self, gw, http, secret):
        async with http.post(
            gw.url + "/api/users", data=b"x" * 1000, headers=bearer(secret)
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["body_bytes"] == 1000

    async def test_413_comes_before_the_key_check(self, gw, http):
        async with http.post(gw.url + "/api/users", data=b"x" * 5000) as resp:
            assert resp.status == 413

    async def test_chunked_body_over_limit(self, gw, http, secret):
        async def body():
            for _ in range(10):
                yield b"y" * 500

        async with http.post(gw.url + "/upload", data=body(), headers=bearer(secret)) as resp:
            await error_of(resp, 413, "payload_too_large", "invalid_request_error")

    async def test_chunked_body_under_limit_passes(self, gw, http, secret):
        async def body():
            for _ in range(3):
                yield b"y" * 300

        async with http.post(gw.url + "/upload", data=body(), headers=bearer(secret)) as resp:
            assert resp.status == 200
            assert (await resp.json())["received_bytes"] == 900


class TestOversizedRequests:
    async def test_over_long_url_is_414(self, start_gateway, base_config, upstream, http):
        gw = await start_gateway(
            base_config(server={"max_url_bytes": 300}, routes=routes(upstream))
        )
        async with http.get(gw.url + "/public/" + "a" * 400) as resp:
            await error_of(resp, 414, "uri_too_long", "invalid_request_error")

    async def test_too_many_headers_is_431(self, start_gateway, base_config, upstream):
        gw = await start_gateway(
            base_config(server={"max_header_count": 10}, routes=routes(upstream))
        )
        resp = await raw_request(gw.url, "GET", "/public/x", [(f"X-H{i}", "v") for i in range(20)])
        assert resp.status == 431
        assert resp.json()["error"]["type"] == "invalid_request_error"


# -- the order of the checks ------------------------------------------------------------


class TestOrder:
    async def test_401_before_403(self, start_gateway, base_config, upstream, http):
        gw = await start_gateway(base_config(routes=routes(upstream, permissions={"*": "admin"})))
        async with http.get(gw.url + "/api/users") as resp:
            assert resp.status == 401

    async def test_every_answer_carries_a_request_id(self, gw, http, secret):
        for method, path, status in [
            ("GET", "/nope", 404),
            ("DELETE", "/api/users", 405),
            ("GET", "/api/users", 401),
            ("GET", "/public/x", 200),
        ]:
            async with http.request(method, gw.url + path) as resp:
                assert resp.status == status
                assert resp.headers["X-Request-Id"].startswith("req_")


# -- X-Request-Id -----------------------------------------------------------------------


class TestRequestId:
    @pytest.mark.parametrize("given", ["abc", "A1.b2_c3-d4", "x" * 128, "0", "req_123"])
    async def test_valid_id_is_kept_and_forwarded(self, gw, http, secret, given):
        async with http.get(
            gw.url + "/api/users", headers={"X-Request-Id": given, **bearer(secret)}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"] == given
            seen = seen_headers(await resp.json())
        assert seen["x-request-id"] == given

    @pytest.mark.parametrize(
        "given", ["x" * 129, "has space", "a/b", "a:b", "ünï", "a,b", "<script>"]
    )
    async def test_invalid_id_is_replaced_and_the_upstream_gets_the_replacement(
        self, gw, http, secret, given
    ):
        async with http.get(
            gw.url + "/api/users", headers={"X-Request-Id": given, **bearer(secret)}
        ) as resp:
            assert resp.status == 200
            answered = resp.headers["X-Request-Id"]
            seen = seen_headers(await resp.json())
        assert answered != given and answered.startswith("req_")
        assert seen["x-request-id"] == answered

    async def test_empty_id_is_replaced(self, gw):
        resp = await raw_request(gw.url, "GET", "/public/x", [("X-Request-Id", "")])
        assert resp.headers["X-Request-Id"].startswith("req_")

    async def test_error_meta_equals_the_kept_id(self, gw, http):
        async with http.get(gw.url + "/api/users", headers={"X-Request-Id": "trace-42"}) as resp:
            assert resp.status == 401
            assert resp.headers["X-Request-Id"] == "trace-42"
            assert (await resp.json())["meta"]["request_id"] == "trace-42"

    async def test_error_meta_equals_the_generated_id(self, gw, http):
        async with http.get(gw.url + "/nope", headers={"X-Request-Id": "bad id"}) as resp:
            body = await resp.json()
        assert body["meta"]["request_id"] == resp.headers["X-Request-Id"] != "bad id"

    async def test_generated_ids_are_unique(self, gw, http):
        ids = set()
        for _ in range(20):
            async with http.get(gw.url + "/public/x") as resp:
                ids.add(resp.headers["X-Request-Id"])
        assert len(ids) == 20

    async def test_upstream_cannot_override_the_request_id(self, gw, http):
        target = gw.url + "/raw/respond?header=X-Request-Id:from-upstream"
        async with http.get(target, headers={"X-Request-Id": "mine"}) as resp:
            assert resp.status == 200
            assert resp.headers.getall("X-Request-Id") == ["mine"]

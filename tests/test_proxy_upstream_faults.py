"""Upstream faults (SPEC §4, §5): a slow upstream is 504, a refused or reset one 502."""

from __future__ import annotations

import time

import pytest
from conftest import bearer, free_port, new_account, new_key, upstream_url


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    up = upstream_url(upstream)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return await start_gateway(
        base_config(
            routes=[
                {"name": "quick", "match": "/quick", "upstream": up, "strip_prefix": True,
                 "timeout": "300ms"},
                {"name": "gone", "match": "/gone", "upstream": closed},
                {"name": "gone-test", "match": "/gonetest", "upstream": up, "test_upstream": closed},
                {"name": "open", "match": "/open", "upstream": closed, "auth": "none"},
            ]
        )
    )  # fmt: skip


@pytest.fixture
async def account(gw):
    return await new_account(gw.service)


@pytest.fixture
async def secret(gw, account):
    return (await new_key(gw.service, account))[1]


async def error_of(resp, status: int, code: str) -> dict:
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["type"] == "api_error"
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]
    return body["error"]


class TestTimeout:
    async def test_slow_upstream_is_504_after_the_route_timeout(self, gw, secret, http):
        started = time.monotonic()
        async with http.get(gw.url + "/quick/slow?seconds=3", headers=bearer(secret)) as resp:
            await error_of(resp, 504, "upstream_timeout")
        elapsed = time.monotonic() - started
        assert 0.25 < elapsed < 1.5

    async def test_upstream_within_the_timeout_passes(self, gw, secret, http):
        async with http.get(gw.url + "/quick/slow?seconds=0.05", headers=bearer(secret)) as resp:
            assert resp.status == 200

    async def test_timeout_bounds_the_headers_not_a_long_stream(self, gw, secret, http):
        # 4 events 0.25 s apart: a stream of about 1 s behind a 300 ms timeout.
        async with http.get(
            gw.url + "/quick/stream?count=4&interval=0.25", headers=bearer(secret)
        ) as resp:
            assert resp.status == 200
            body = await resp.read()
        assert body.count(b"data: ") == 4


class TestUnavailable:
    async def test_refused_connection_is_502(self, gw, secret, http):
        async with http.get(gw.url + "/gone/x", headers=bearer(secret)) as resp:
            await error_of(resp, 502, "upstream_unavailable")

    async def test_refused_post_is_502(self, gw, secret, http):
        async with http.post(gw.url + "/gone/x", data=b"payload", headers=bearer(secret)) as resp:
            await error_of(resp, 502, "upstream_unavailable")

    async def test_refused_on_an_auth_none_route(self, gw, http):
        async with http.get(gw.url + "/open/x") as resp:
            await error_of(resp, 502, "upstream_unavailable")

    async def test_test_keys_fail_on_their_own_upstream(self, gw, account, http):
        _, live = await new_key(gw.service, account)
        _, test = await new_key(gw.service, account, mode="test")
        async with http.get(gw.url + "/gonetest/x", headers=bearer(live)) as resp:
            assert resp.status == 200
        async with http.get(gw.url + "/gonetest/x", headers=bearer(test)) as resp:
            await error_of(resp, 502, "upstream_unavailable")

    @pytest.mark.parametrize("method", ["GET", "POST"])
    async def test_reset_before_answering_is_502(self, gw, secret, http, method):
        async with http.request(
            method, gw.url + "/quick/reset", headers=bearer(secret), data=b"x"
        ) as resp:
            await error_of(resp, 502, "upstream_unavailable")

    async def test_the_gateway_keeps_serving_after_faults(self, gw, secret, http):
        for path in ("/gone/x", "/quick/reset", "/quick/slow?seconds=2"):
            async with http.get(gw.url + path, headers=bearer(secret)) as resp:
                assert resp.status in (502, 504)
        async with http.get(gw.url + "/quick/echo", headers=bearer(secret)) as resp:
            assert resp.status == 200

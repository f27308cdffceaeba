"""The admin port (SPEC §8): /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import bearer, free_port, new_account, new_key, upstream_url
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_admin_app


def routes(upstream):
    return [
        {"name": "api", "match": "/api", "upstream": upstream_url(upstream),
         "permissions": {"GET": "read", "*": "write"}},
        {"name": "other", "match": "/other", "upstream": upstream_url(upstream)},
    ]  # fmt: skip


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(base_config(routes=routes(upstream)))


@pytest.fixture
async def admin(gw):
    server = TestServer(create_admin_app(lambda: gw.runtime), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def scrape(http, admin_url: str) -> dict[tuple[str, tuple], float]:
    async with http.get(admin_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class TestHealth:
    async def test_healthz(self, admin, http):
        async with http.get(admin + "/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"

    async def test_readyz_when_the_store_answers(self, admin, http):
        async with http.get(admin + "/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"

    async def test_readyz_is_503_while_redis_does_not_answer(
        self, gateway_process, base_config, upstream
    ):
        closed = free_port()
        data = base_config(redis={"url": f"redis://127.0.0.1:{closed}/0"}, routes=routes(upstream))
        proc = gateway_process(data).start(wait=False)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 15
            while True:
                assert proc.proc.poll() is None, proc.log()
                try:
                    async with session.get(proc.admin_url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, proc.log()
                await asyncio.sleep(0.1)
            started = time.monotonic()
            async with session.get(proc.admin_url + "/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] != "ready"
            assert time.monotonic() - started < 5
            # Alive but not ready: the public port answers, the key store does not.
            async with session.get(
                proc.url + "/api/x", headers=bearer("sk_live_" + "0" * 38)
            ) as resp:
                assert resp.status == 401  # a malformed key needs no store
            async with session.get(proc.admin_url + "/metrics") as resp:
                text = await resp.text()
        assert "gateway_store_up 0.0" in text

    async def test_unknown_admin_path_is_404(self, admin, http):
        async with http.get(admin + "/nope") as resp:
            assert resp.status == 404


class TestMetrics:
    async def test_requests_by_route_and_outcome_and_denials_by_code(self, gw, admin, http):
        account = await new_account(gw.service)
        _, reader = await new_key(gw.service, account, permissions=["read"])
        before = await scrape(http, admin)
        calls = [
            ("GET", "/api/x", bearer(reader)),  # ok
            ("GET", "/api/y", bearer(reader)),  # ok
            ("POST", "/api/x", bearer(reader)),  # insufficient_permissions
            ("GET", "/api/x", {}),  # missing_api_key
            ("GET", "/api/x", bearer("sk_live_" + "1" * 38)),  # invalid_api_key
            ("GET", "/api/x", {"Authorization": "Basic eA=="}),  # invalid_authorization_header
            ("GET", "/other/x", bearer(reader)),  # ok on another route
            ("GET", "/nowhere", {}),  # route_not_found
        ]
        for method, path, headers in calls:
            async with http.request(method, gw.url + path, headers=headers) as resp:
                await resp.read()
        after = await scrape(http, admin)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        ok = {"outcome": "ok", "status": "2xx"}
        assert delta("gateway_requests_total", route="api", **ok) == 2
        assert delta("gateway_requests_total", route="other", **ok) == 1
        assert (
            delta("gateway_requests_total", route="api", outcome="insufficient_permissions",
                  status="4xx") == 1
        )  # fmt: skip
        assert (
            delta("gateway_requests_total", route="api", outcome="missing_api_key", status="4xx")
            == 1
        )
        assert (
            delta("gateway_requests_total", route="-", outcome="route_not_found", status="4xx") == 1
        )
        for code in ("missing_api_key", "invalid_api_key", "invalid_authorization_header",
                     "insufficient_permissions"):  # fmt: skip
            assert delta("gateway_auth_denials_total", route="api", code=code) == 1, code
        # Only refusals of a key are denials: not a route that does not exist.
        denials = [k for k in after if k[0] == "gateway_auth_denials_total"]
        assert {dict(k[1])["code"] for k in denials} <= {
            "missing_api_key", "invalid_api_key", "invalid_authorization_header",
            "insufficient_permissions", "revoked_api_key", "expired_api_key",
            "ip_not_allowed", "referrer_not_allowed", "endpoint_not_allowed",
        }  # fmt: skip
        assert delta("gateway_request_duration_seconds_count", route="api") == 6
        assert delta("gateway_request_duration_seconds_bucket", route="api", le="+Inf") == 6
        buckets = [k for k in after if k[0] == "gateway_request_duration_seconds_bucket"]
        assert len({dict(k[1])["le"] for k in buckets}) > 5

    async def test_cache_hits_and_misses(self, gw, admin, http):
        account = await new_account(gw.service)
        _, secret = await new_key(gw.service, account, permissions=["read"])
        before = await scrape(http, admin)
        for _ in range(5):
            async with http.get(gw.url + "/api/x", headers=bearer(secret)) as resp:
                assert resp.status == 200
        after = await scrape(http, admin)
        misses = value(after, "gateway_key_cache_misses_total") - value(
            before, "gateway_key_cache_misses_total"
        )
        hits = value(after, "gateway_key_cache_hits_total") - value(
            before, "gateway_key_cache_hits_total"
        )
        assert (misses, hits) == (1, 4)
        assert value(after, "gateway_key_cache_entries") >= 1

    async def test_upstream_errors_are_counted(self, start_gateway, base_config, http):
        gw = await start_gateway(
            base_config(
                routes=[
                    {
                        "name": "gone",
                        "match": "/gone",
                        "auth": "none",
                        "upstream": f"http://127.0.0.1:{free_port()}",
                    }
                ]
            )  # fmt: skip
        )
        server = TestServer(create_admin_app(lambda: gw.runtime), host="127.0.0.1")
        await server.start_server()
        try:
            async with http.get(gw.url + "/gone/x") as resp:
                assert resp.status == 502
            samples = await scrape(http, f"http://127.0.0.1:{server.port}")
        finally:
            await server.close()
        assert (
            value(
                samples,
                "gateway_requests_total",
                route="gone",
                outcome="upstream_unavailable",
                status="5xx",
            )
            == 1
        )
        assert value(samples, "gateway_upstream_errors_total", route="gone", kind="refused") == 1

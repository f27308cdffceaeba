"""Upstream faults, caused for real, through a real ``gateway serve`` process.

A killed upstream (connection refused) answers 502 ``upstream_unavailable``;
an upstream that resets mid-response closes the client's connection rather
than presenting a cut body as complete; a slow one answers 504
``upstream_timeout`` at the route's ``timeout``; a client that goes away
cancels the upstream request; a route's circuit breaker skips a failing
upstream for its cool-down, answering 503 at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import pytest
from conftest import bearer, new_account, new_key, service_for
from faultkit import FaultUpstream
from realparts import ServiceProcess, free_port

from gateway.config import parse_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def fault_upstream():
    upstream = await FaultUpstream().start()
    yield upstream
    await upstream.close()


@pytest.fixture
async def proxy(gateway_process, base_config, redis_client):
    """Start a gateway with ``routes``; returns (process, service)."""

    async def start(routes: list[dict[str, Any]]):
        data = base_config(routes=routes)
        gw = gateway_process(data)
        await asyncio.to_thread(gw.start)
        return gw, service_for(redis_client, parse_config(data))

    return start


async def get(http: aiohttp.ClientSession, url: str, secret: str, **kw: Any):
    started = time.monotonic()
    async with http.get(url, headers={**bearer(secret), "Connection": "close"}, **kw) as resp:
        body = await resp.read()
        return resp.status, body, resp.headers, time.monotonic() - started


def demo_upstream() -> ServiceProcess:
    """The demo upstream as a process of its own, to be killed."""
    return ServiceProcess(
        "demo-upstream",
        lambda port: [sys.executable, "-m", "gateway.demo.upstream", "--port", str(port)],
        ready_path="/anything",
    )


async def test_killed_upstream_answers_502_upstream_unavailable(proxy, http):
    upstream = await asyncio.to_thread(demo_upstream().start)
    try:
        gw, service = await proxy([{"name": "api", "match": "/api", "upstream": upstream.url}])
        _, secret = await new_key(service, await new_account(service))
        # Keep-alive: the gateway's pool now holds a connection to the upstream.
        async with aiohttp.ClientSession() as keepalive:
            for _ in range(3):
                async with keepalive.get(gw.url + "/api/x", headers=bearer(secret)) as resp:
                    assert resp.status == 200
        upstream.kill()
        for method in ("GET", "POST"):
            started = time.monotonic()
            async with http.request(
                method,
                gw.url + "/api/x",
                headers=bearer(secret),
                data=b"{}" if method == "POST" else None,
            ) as resp:
                body = await resp.json()
                assert resp.status == 502
            assert body["error"]["code"] == "upstream_unavailable"
            assert body["error"]["type"] == "api_error"
            assert time.monotonic() - started < 1.0
    finally:
        upstream.close()


async def test_reset_mid_response_closes_the_client_connection(proxy, fault_upstream, http):
    gw, service = await proxy([{"name": "api", "match": "/", "upstream": fault_upstream.url}])
    _, secret = await new_key(service, await new_account(service))

    # Chunked: the status and the first chunks were already sent; the cut shows as a
    # connection closed before the last chunk, never as a complete body.
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(http, gw.url + "/cut-chunked", secret)
    # A large Content-Length body streamed, then cut: fewer bytes than announced, then closed.
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(http, gw.url + "/cut-length?n=200000", secret)
    # A small body streams as it comes too (SPEC §5): a cut one is never presented as whole.
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(http, gw.url + "/cut-length?n=2000", secret)
    # The gateway itself is fine afterwards.
    status, _, _, _ = await get(http, gw.url + "/ok", secret)
    assert status == 200


async def test_slow_upstream_answers_504_at_the_route_timeout(proxy, fault_upstream, http):
    gw, service = await proxy(
        [{"name": "api", "match": "/", "upstream": fault_upstream.url, "timeout": "700ms"}]
    )
    _, secret = await new_key(service, await new_account(service))
    status, body, _, took = await get(http, gw.url + "/slow?s=5", secret)
    assert status == 504
    assert b"upstream_timeout" in body
    assert 0.6 <= took < 2.5
    status, _, _, _ = await get(http, gw.url + "/slow?s=0.1", secret)
    assert status == 200


async def test_client_disconnect_cancels_the_upstream_request(proxy, fault_upstream):
    gw, service = await proxy([{"name": "api", "match": "/", "upstream": fault_upstream.url}])
    _, secret = await new_key(service, await new_account(service))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        f"GET /hang HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
    )
    await writer.drain()
    for _ in range(100):
        if fault_upstream.seen and fault_upstream.seen[-1].disconnected is not None:
            break
        await asyncio.sleep(0.02)
    seen = fault_upstream.seen[-1]
    assert seen.path == "/hang" and seen.disconnected is not None
    assert not seen.disconnected.is_set()
    gone = time.monotonic()
    writer.close()  # the client goes away
    await asyncio.wait_for(seen.disconnected.wait(), 2)
    assert seen.disconnected_at is not None and seen.disconnected_at - gone < 1.0


async def test_circuit_breaker_skips_a_failing_upstream_then_probes(proxy, http):
    port = free_port()  # nothing listens yet: refused
    gw, service = await proxy(
        [
            {
                "name": "api",
                "match": "/",
                "upstream": f"http://127.0.0.1:{port}",
                "circuit_breaker": {"failures": 3, "cooldown": "1s"},
            }
        ]
    )
    _, secret = await new_key(service, await new_account(service))
    for _ in range(3):
        assert (await get(http, gw.url + "/ok", secret))[0] == 502
    status, body, headers, took = await get(http, gw.url + "/ok", secret)
    assert status == 503
    assert b"service_unavailable" in body
    assert int(headers["Retry-After"]) >= 1
    assert took < 0.5
    # After the cool-down one probe goes through; it fails, so the circuit opens again.
    await asyncio.sleep(1.1)
    assert (await get(http, gw.url + "/ok", secret))[0] == 502
    assert (await get(http, gw.url + "/ok", secret))[0] == 503
    # The upstream comes back: the next probe succeeds and closes the circuit.
    upstream = await FaultUpstream().start(port)
    try:
        await asyncio.sleep(1.1)
        for _ in range(5):
            assert (await get(http, gw.url + "/ok", secret))[0] == 200
        assert len(upstream.seen) == 5
    finally:
        await upstream.close()

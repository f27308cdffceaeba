"""WebSockets and long-lived connections (SPEC §13), through a real gateway to a real
WebSocket upstream on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from conftest import bearer, gateways, new_account, new_key, service_for, upstream_url
from ws_upstream import WsUpstream

from gateway.config import parse_config
from gateway.keys.service import CLI

pytestmark = pytest.mark.integration


@pytest.fixture
async def ws_upstream() -> AsyncIterator[WsUpstream]:
    upstream = WsUpstream()
    await upstream.start()
    yield upstream
    assert upstream.server is not None
    await upstream.server.close()


def routes(ws_upstream: WsUpstream, **extra) -> list[dict]:
    assert ws_upstream.server is not None
    url = f"http://127.0.0.1:{ws_upstream.server.port}"
    return [
        {"name": "live", "match": "/live", "upstream": url, "websocket": True, **extra},
        {"name": "plain", "match": "/plain", "upstream": url},
    ]


@pytest.fixture
async def gw(start_gateway, base_config, ws_upstream):
    return await start_gateway(base_config(routes=routes(ws_upstream)))


@pytest.fixture
async def key(gw):
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, permissions=["read"])
    return key_id, secret


def ws_url(gw, path: str) -> str:
    return gw.url.replace("http://", "ws://") + path


async def test_a_key_in_authorization_opens_a_relayed_socket_with_identity_headers(
    gw, http, key, ws_upstream
):
    key_id, secret = key
    async with http.ws_connect(ws_url(gw, "/live/feed?x=1"), headers=bearer(secret)) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive(timeout=5)).data == b"\x00\x01"
    seen = ws_upstream.handshakes[0]
    assert seen["path"] == "/live/feed?x=1"
    assert seen["headers"]["X-Gateway-Key-Id"] == key_id
    assert "Authorization" not in seen["headers"]


async def test_the_handshake_carries_the_trace_context_upstream(gw, http, key, ws_upstream):
    _, secret = key
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**bearer(secret), "traceparent": f"00-{trace}-{parent}-01", "tracestate": "a=1"}
    async with http.ws_connect(ws_url(gw, "/live/feed"), headers=headers) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    seen = ws_upstream.handshakes[0]["headers"]
    version, trace_id, span_id, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", trace, "01") and span_id != parent
    assert seen["tracestate"] == "a=1"


async def test_the_key_as_a_subprotocol_is_removed_before_the_upstream(gw, http, key, ws_upstream):
    _, secret = key
    async with http.ws_connect(
        ws_url(gw, "/live/feed"), protocols=(f"bearer.{secret}", "chat")
    ) as ws:
        assert ws.protocol == "chat"  # what the upstream selected
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    offered = ws_upstream.handshakes[0]["headers"]["Sec-WebSocket-Protocol"]
    assert secret not in offered and "bearer." not in offered
    assert offered == "chat"


async def test_no_key_or_both_forms_are_refused_before_the_upstream(gw, http, key, ws_upstream):
    _, secret = key
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(gw, "/live/feed"))
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(
            ws_url(gw, "/live/feed"), headers=bearer(secret), protocols=(f"bearer.{secret}",)
        )
    assert refused.value.status == 401
    assert ws_upstream.handshakes == []


async def test_close_codes_pass_through_both_ways(gw, http, key, ws_upstream):
    _, secret = key
    async with http.ws_connect(ws_url(gw, "/live/a"), headers=bearer(secret)) as ws:
        await ws.send_str("close:4001")
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4001
    ws = await http.ws_connect(ws_url(gw, "/live/b"), headers=bearer(secret))
    await ws.close(code=4002)
    for _ in range(50):
        if ws_upstream.closed_with:
            break
        await asyncio.sleep(0.05)
    assert ws_upstream.closed_with == [4002]


async def test_a_revoked_key_closes_its_sockets_with_1008_within_a_second(gw, http, key):
    key_id, secret = key
    async with http.ws_connect(ws_url(gw, "/live/x"), headers=bearer(secret)) as ws:
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "echo:ping"
        started = time.monotonic()
        await gw.service.revoke_key(CLI, key_id)
        message = await ws.receive(timeout=5)
        took = time.monotonic() - started
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008
    assert took < 1.0


async def test_a_revocation_on_another_replica_cuts_sockets_and_streams_here(
    base_config, ws_upstream, upstream, http, redis_client, caplog
):
    config = base_config(
        routes=[
            *routes(ws_upstream),
            {
                "name": "sse",
                "match": "/sse",
                "upstream": upstream_url(upstream),
                "strip_prefix": True,
            },
        ]  # fmt: skip
    )
    async with gateways() as start:
        here, there = await start(config), await start(config)
        account = await new_account(here.service)
        key_id, secret = await new_key(here.service, account)
        ws = await http.ws_connect(ws_url(here, "/live/x"), headers=bearer(secret))
        await ws.send_str("a")
        assert (await ws.receive(timeout=5)).data == "echo:a"
        stream = await http.get(here.url + "/sse/stream?count=1000&interval=0.05",
                                headers=bearer(secret))  # fmt: skip
        assert stream.status == 200
        await stream.content.readany()  # the stream is flowing
        started = time.monotonic()
        await there.service.revoke_key(CLI, key_id)  # on the other replica
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            while time.monotonic() - started < 5:
                if not await stream.content.readany():
                    break
            raise aiohttp.ClientPayloadError("the stream ended on its own")
        assert time.monotonic() - started < 1.5
        stream.close()
        await ws.close()
        # the gateway cut the stream: not an upstream failure, no warning, no breaker count
        errors = here.runtime.metrics.registry.get_sample_value(
            "gateway_upstream_errors_total", {"route": "sse", "kind": "broken"}
        )
        assert errors is None
        assert not [r for r in caplog.records if "broke off" in r.getMessage()]
        async with http.get(here.url + "/sse/stream?count=1", headers=bearer(secret)) as resp:
            assert resp.status == 401  # and the key itself is refused from now on


async def test_other_upgrades_and_routes_without_websocket_go_as_plain_http(gw, http, key):
    _, secret = key
    headers = {**bearer(secret), "Connection": "Upgrade", "Upgrade": "h2c"}
    async with http.get(gw.url + "/live/x", headers=headers) as resp:
        body = await resp.json()
        assert body["plain"] is True and "Upgrade" not in body["headers"]
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(ws_url(gw, "/plain/x"), headers=bearer(secret))


async def test_a_silent_socket_is_closed_at_the_idle_timeout(
    start_gateway, base_config, ws_upstream, http
):
    gw = await start_gateway(
        base_config(routes=routes(ws_upstream, websocket_idle_timeout="500ms"))
    )
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    async with http.ws_connect(ws_url(gw, "/live/x"), headers=bearer(secret)) as ws:
        message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001


async def test_the_open_socket_gauge_counts_by_route(gw, http, key):
    _, secret = key
    registry = gw.runtime.metrics.registry

    def gauge() -> float | None:
        return registry.get_sample_value("gateway_websocket_connections", {"route": "live"})

    async with http.ws_connect(ws_url(gw, "/live/x"), headers=bearer(secret)) as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
        assert gauge() == 1
    for _ in range(50):
        if gauge() == 0:
            break
        await asyncio.sleep(0.02)
    assert gauge() == 0


async def test_a_metered_key_spends_the_routes_cost_once_per_socket(
    start_gateway, base_config, http, ws_upstream
):
    """SPEC §16 on §13: the handshake is the request; messages on the socket spend nothing."""
    gw = await start_gateway(base_config(routes=routes(ws_upstream, cost=2)))
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, credits={"remaining": 5})
    async with http.ws_connect(ws_url(gw, "/live/feed"), headers=bearer(secret)) as ws:
        for n in range(10):
            await ws.send_str(f"m{n}")
            assert (await ws.receive(timeout=5)).data == f"echo:m{n}"
    assert (await gw.service.balances.credits(account, "live", key_id)).remaining == 3
    async with http.ws_connect(ws_url(gw, "/live/feed"), headers=bearer(secret)) as ws:
        await ws.send_str("again")
        assert (await ws.receive(timeout=5)).data == "echo:again"
    assert (await gw.service.balances.credits(account, "live", key_id)).remaining == 1
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(gw, "/live/feed"), headers=bearer(secret))
    assert refused.value.status == 429
    assert refused.value.headers is not None
    assert refused.value.headers.get("X-Request-Id")
    assert len(ws_upstream.handshakes) == 2  # the refused one never reached the upstream
    assert (await gw.service.balances.credits(account, "live", key_id)).remaining == 1


@pytest.mark.parametrize("how", ["patched", "rotated"])
async def test_an_expiry_given_after_the_socket_opened_closes_it_when_it_comes(gw, http, key, how):
    """SPEC §13: the key's expiry cuts its sockets, also one set (or moved) while they are open."""
    key_id, secret = key
    async with http.ws_connect(ws_url(gw, "/live/x"), headers=bearer(secret)) as ws:
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "echo:ping"
        if how == "patched":
            expires = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            await gw.service.update_key(CLI, key_id, {"expires_at": expires})
        else:
            await gw.service.rotate_key(CLI, key_id, grace_period="1s")
        started = time.monotonic()
        await ws.send_str("still")
        assert (await ws.receive(timeout=5)).data == "echo:still"  # open until the expiry
        message = await ws.receive(timeout=5)
        took = time.monotonic() - started
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008
    assert took < 2.5


async def test_a_key_offered_as_a_subprotocol_never_reaches_an_open_routes_upstream(
    start_gateway, base_config, http, ws_upstream
):
    """SPEC §4 and §13: ``auth: none`` routes never forward credentials, in any form."""
    gw = await start_gateway(base_config(routes=routes(ws_upstream, auth="none")))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    async with http.ws_connect(
        ws_url(gw, "/live/open"), protocols=(f"bearer.{secret}", "chat")
    ) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    [seen] = ws_upstream.handshakes
    assert seen["headers"]["Sec-WebSocket-Protocol"] == "chat"
    assert all(secret not in value for value in seen["headers"].values())


async def test_a_key_in_an_unanswered_subprotocol_offer_is_never_logged(
    gateway_process, base_config, redis_client, http, ws_upstream
):
    """aiohttp logs the subprotocols a client offered when the upstream takes none of them:
    the gateway's log masks the key in that line, as in every other (SPEC §13)."""
    data = base_config(routes=routes(ws_upstream))
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    _, secret = await new_key(service, account, permissions=["read"])
    proc = gateway_process(data).start()
    ws_url_ = proc.url.replace("http://", "ws://") + "/live/x"
    async with http.ws_connect(ws_url_, protocols=(f"bearer.{secret}", "other")) as ws:
        assert ws.protocol is None  # the upstream speaks only "chat"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    assert proc.stop() == 0
    log = proc.log()
    assert "don't overlap" in log or "don’t overlap" in log, log  # the line aiohttp writes
    assert secret not in log and secret[8:40] not in log
    assert "bearer.sk_***" in log


async def test_the_upstreams_refusal_comes_back_with_its_headers_and_no_version_anywhere(
    gw, http, key
):
    _, secret = key
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(gw, "/live/refuse"), headers=bearer(secret))
    headers = refused.value.headers
    assert refused.value.status == 403
    assert headers is not None and headers["X-Why"] == "nope"
    assert headers["X-Request-Id"].startswith("req_")
    assert headers["Server"] == "up/1"  # the upstream's answer, as it sent it (SPEC §5)
    async with http.ws_connect(ws_url(gw, "/live/ok"), headers=bearer(secret)) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    # the 101 itself, read raw: no software version named
    async with http.get(
        ws_url(gw, "/live/raw").replace("ws://", "http://"),
        headers={
            **bearer(secret),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    ) as resp:
        assert resp.status == 101
        assert "aiohttp" not in resp.headers.get("Server", "")
        assert "Python" not in resp.headers.get("Server", "")

"""Graceful shutdown of a real ``gateway serve`` process on real signals.

On SIGTERM (or SIGINT) the listening socket closes at once, ``/readyz`` turns
503 while the admin port stays up, requests in flight (a server-sent event
stream, a slow chunked upload) finish within ``server.drain_timeout``, the
usage counts are written, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from conftest import bearer, new_account, new_key, service_for, upstream_url

from gateway.config import parse_config
from gateway.usage import UsageReader

pytestmark = pytest.mark.integration


@pytest.fixture
async def draining_gateway(gateway_process, base_config, upstream, redis_client):
    async def start(drain_timeout: str = "10s"):
        data = base_config(
            server={"drain_timeout": drain_timeout},
            routes=[{"name": "api", "match": "/", "upstream": upstream_url(upstream)}],
        )
        gw = gateway_process(data)
        await asyncio.to_thread(gw.start)
        service = service_for(redis_client, parse_config(data))
        key_id, secret = await new_key(service, await new_account(service))
        return gw, key_id, secret

    return start


async def read_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    events = []
    async for line in resp.content:
        if line.startswith(b"data:"):
            events.append(line)
    return events


async def slow_upload(port: int, secret: str, chunks: int, size: int, interval: float) -> bytes:
    """A chunked POST sent a piece at a time; the raw answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
    )
    for _ in range(chunks):
        writer.write(b"%x\r\n" % size + b"u" * size + b"\r\n")
        await writer.drain()
        await asyncio.sleep(interval)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    return answer


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_in_flight_requests_flushes_usage_and_exits_0(
    draining_gateway, redis_client, key_prefix, signum
):
    gw, key_id, secret = await draining_gateway()
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.get(gw.url + "/echo", headers=bearer(secret)) as resp:
                assert resp.status == 200
        stream = await http.get(gw.url + "/stream?count=12&interval=0.2", headers=bearer(secret))
        assert stream.status == 200
        first = await stream.content.readline()
        assert first.startswith(b"id: 0")
        upload = asyncio.create_task(slow_upload(gw.port, secret, 10, 1000, 0.2))
        await asyncio.sleep(0.3)  # both in flight

        gw.signal(signum)
        signalled = time.monotonic()
        await asyncio.sleep(0.2)
        async with http.get(gw.admin_url + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        assert await refused(gw.port), "the public port still accepts connections"

        events = await read_events(stream)  # ends cleanly: no payload error
        assert len(events) == 12  # every event, to the last one
        assert events[-1] == b'data: {"n": 11}\n'
        answer = await upload
        assert answer.startswith(b"HTTP/1.1 200")
        assert b'"received_bytes": 10000' in answer

    code = await asyncio.to_thread(gw.proc.wait, 15)
    assert code == 0
    assert time.monotonic() - signalled < 8
    # 5 requests + the stream + the upload, written by the final flush at the latest.
    days = await UsageReader(redis_client, key_prefix).days(key_id, 2)
    assert sum(d["allowed"] for d in days) == 7
    assert "drain ended" not in gw.log()


async def test_drain_timeout_cuts_what_is_still_running(draining_gateway):
    gw, _, secret = await draining_gateway(drain_timeout="1s")
    async with aiohttp.ClientSession() as http:
        stream = await http.get(gw.url + "/stream?count=100&interval=0.1", headers=bearer(secret))
        await stream.content.readline()
        gw.signal(signal.SIGTERM)
        signalled = time.monotonic()
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_events(stream)  # cut, and seen to be cut (no final chunk)
        cut_after = time.monotonic() - signalled
    assert 0.9 <= cut_after < 4.0
    assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    assert "drain ended with 1 connection(s) still busy" in gw.log()


async def test_idle_keepalive_connections_do_not_hold_the_drain(draining_gateway):
    gw, _, secret = await draining_gateway(drain_timeout="20s")
    async with aiohttp.ClientSession() as http:  # keeps its connection open
        async with http.get(gw.url + "/echo", headers=bearer(secret)) as resp:
            assert resp.status == 200
        gw.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        assert time.monotonic() - signalled < 5


async def test_a_second_signal_cuts_the_drain_short(draining_gateway):
    gw, _, secret = await draining_gateway(drain_timeout="30s")
    async with aiohttp.ClientSession() as http:
        stream = await http.get(gw.url + "/stream?count=300&interval=0.1", headers=bearer(secret))
        await stream.content.readline()
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        gw.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        assert time.monotonic() - signalled < 5
        stream.close()

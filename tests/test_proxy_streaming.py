"""Bodies stream both ways (SPEC §5): large and chunked uploads, server-sent events.

"Without buffering" is shown by handshakes: the test upstream signals the
first bytes it receives (or the test signals the first event it reads), and
the other side only goes on after that signal. A gateway that buffered a whole
body would deadlock there and the test would time out.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import bearer, new_account, new_key, upstream_url

MB = 1024 * 1024
BIG = bytes(range(256)) * (20 * MB // 256)


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(
        base_config(
            server={"max_body_bytes": 32 * MB},
            routes=[
                {
                    "name": "up",
                    "match": "/up",
                    "upstream": upstream_url(upstream),
                    "strip_prefix": True,
                    "timeout": "5s",
                }
            ],  # fmt: skip
        )
    )


@pytest.fixture
async def secret(gw):
    account = await new_account(gw.service)
    return (await new_key(gw.service, account))[1]


class Handshake:
    """An in-process upstream whose handlers wait on events the test controls."""

    def __init__(self) -> None:
        self.first_bytes = asyncio.Event()
        self.first_event_read = asyncio.Event()
        self.received = 0
        self.digest = hashlib.sha256()

    async def upload(self, request: web.Request) -> web.Response:
        async for chunk in request.content.iter_any():
            self.received += len(chunk)
            self.digest.update(chunk)
            self.first_bytes.set()
        return web.json_response(
            {"received_bytes": self.received, "sha256": self.digest.hexdigest()}
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 0\ndata: first\n\n")
        await asyncio.wait_for(self.first_event_read.wait(), 10)
        await response.write(b"id: 1\ndata: second\n\n")
        await response.write_eof()
        return response

    async def big(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(BIG)
        await response.prepare(request)
        await response.write(BIG[:MB])
        await asyncio.wait_for(self.first_event_read.wait(), 10)
        for start in range(MB, len(BIG), MB):
            await response.write(BIG[start : start + MB])
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MB)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/events", self.events)
        app.router.add_get("/big", self.big)
        return app


@pytest.fixture
async def handshake() -> AsyncIterator[tuple[Handshake, TestServer]]:
    hs = Handshake()
    server = TestServer(hs.app(), host="127.0.0.1")
    await server.start_server()
    yield hs, server
    await server.close()


@pytest.fixture
async def hs_gw(start_gateway, base_config, handshake):
    _, server = handshake
    return await start_gateway(
        base_config(
            server={"max_body_bytes": 32 * MB},
            routes=[
                {
                    "name": "hs",
                    "match": "/hs",
                    "upstream": upstream_url(server),
                    "strip_prefix": True,
                    "timeout": "10s",
                }
            ],  # fmt: skip
        )
    )


@pytest.fixture
async def hs_secret(hs_gw):
    account = await new_account(hs_gw.service)
    return (await new_key(hs_gw.service, account))[1]


class TestUploads:
    async def test_20_mb_upload_with_content_length(self, gw, secret, http):
        body = bytes(range(256)) * (20 * MB // 256)
        async with http.post(gw.url + "/up/upload", data=body, headers=bearer(secret)) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert result["received_bytes"] == 20 * MB

    async def test_chunked_upload(self, gw, secret, http):
        async def chunks():
            for i in range(40):
                yield bytes([i % 256]) * 64 * 1024

        async with http.post(gw.url + "/up/upload", data=chunks(), headers=bearer(secret)) as resp:
            assert resp.status == 200
            assert (await resp.json())["received_bytes"] == 40 * 64 * 1024

    async def test_upload_reaches_the_upstream_before_the_client_finishes(
        self, hs_gw, hs_secret, handshake, http
    ):
        hs, _ = handshake
        digest = hashlib.sha256()

        async def body():
            part = b"a" * MB
            digest.update(part)
            yield part
            # The rest is only sent once the upstream has seen the first part.
            await asyncio.wait_for(hs.first_bytes.wait(), 10)
            for i in range(19):
                part = bytes([i]) * MB
                digest.update(part)
                yield part

        async with http.post(
            hs_gw.url + "/hs/upload", data=body(), headers=bearer(hs_secret)
        ) as resp:
            assert resp.status == 200
            result = await resp.json()
        assert result == {"received_bytes": 20 * MB, "sha256": digest.hexdigest()}

    async def test_upload_with_content_length_streams_too(self, hs_gw, hs_secret, handshake):
        """The same handshake with a declared length, sent over a raw socket."""
        hs, _ = handshake
        host, port = hs_gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        size = 20 * MB
        head = (
            f"POST /hs/upload HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {hs_secret}\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + b"b" * MB)
        await writer.drain()
        await asyncio.wait_for(hs.first_bytes.wait(), 10)
        for _ in range(19):
            writer.write(b"b" * MB)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert f'"received_bytes": {size}'.encode() in answer


class TestServerSentEvents:
    async def test_first_event_arrives_before_the_stream_ends(
        self, hs_gw, hs_secret, handshake, http
    ):
        hs, _ = handshake
        async with http.get(hs_gw.url + "/hs/events", headers=bearer(hs_secret)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert first == b"id: 0\ndata: first\n\n"
            hs.first_event_read.set()  # only now does the upstream send the rest
            rest = await asyncio.wait_for(resp.content.read(), 5)
        assert rest == b"id: 1\ndata: second\n\n"

    async def test_demo_stream_events_arrive_as_they_are_sent(self, gw, secret, http):
        started = time.monotonic()
        arrivals = []
        async with http.get(
            gw.url + "/up/stream?count=4&interval=0.25", headers=bearer(secret)
        ) as resp:
            assert resp.status == 200
            while True:
                event = await resp.content.readuntil(b"\n\n")
                if not event:
                    break
                arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 4
        assert arrivals[0] < 0.5  # long before the whole stream (about 1 s)
        assert arrivals[-1] - arrivals[0] > 0.5


class TestDownloads:
    async def test_large_response_with_content_length_passes_whole(
        self, hs_gw, hs_secret, handshake, http
    ):
        async with http.get(hs_gw.url + "/hs/big", headers=bearer(hs_secret)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(BIG))
            first = await asyncio.wait_for(resp.content.readexactly(MB), 5)
            handshake[0].first_event_read.set()  # only now does the upstream send the rest
            rest = await asyncio.wait_for(resp.content.read(), 10)
        assert hashlib.sha256(first + rest).digest() == hashlib.sha256(BIG).digest()

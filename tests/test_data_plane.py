"""The data plane as a client and an upstream see it, over real sockets (SPEC §4, §5, §6).

Requests are written byte for byte (``100-continue``, odd request targets,
stalled bodies, HTTP/1.0); the upstream is either the demo upstream, a small
asyncio server here that records every byte it receives and answers exactly
the bytes a test asks for, or (where installed) httpbin run as a real process.
Every read is bounded by a timeout and every listener is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from conftest import new_account, new_key, upstream_url
from multidict import CIMultiDict
from realparts import ServiceProcess

from gateway.keys.format import checksum
from gateway.request_id import RequestIds

READ_TIMEOUT = 10.0
UPSTREAM_IDLE = 30.0  # the recording upstream's bound on any one read
CLIENT_HOST = "api.example.test:8443"  # the Host a client uses, never the upstream's


# -- a raw client ------------------------------------------------------------------------


@dataclass
class Head:
    status: int
    version: str
    headers: CIMultiDict[str]
    raw: bytes


class Client:
    """One client connection: the bytes given are the bytes sent, every read bounded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> Client:
        host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self, timeout: float = READ_TIMEOUT) -> Head:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status = status_line.split(" ", 2)[:2]
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        return Head(int(status), version, headers, raw)

    async def body(self, head: Head, timeout: float = READ_TIMEOUT) -> bytes:
        """The body framed as ``head`` says: Content-Length, chunked, or up to the close."""
        if 100 <= head.status < 200 or head.status in (204, 304):
            return b""
        if head.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return await asyncio.wait_for(self._chunked(), timeout)
        length = head.headers.get("Content-Length")
        if length is not None:
            return await asyncio.wait_for(self.reader.readexactly(int(length)), timeout)
        return await self.until_close(timeout)

    async def _chunked(self) -> bytes:
        out = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return out
            out += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def response(self, timeout: float = READ_TIMEOUT) -> tuple[Head, bytes]:
        head = await self.head(timeout)
        return head, await self.body(head, timeout)

    async def until_close(self, timeout: float = READ_TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.reader.read(), timeout)

    def close(self) -> None:
        self.writer.close()


def request_bytes(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    host: str | None = CLIENT_HOST,
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(url: str, data: bytes, timeout: float = READ_TIMEOUT) -> tuple[Head, bytes]:
    """Send ``data`` on a new connection; the first answer, head and body."""
    client = await Client.connect(url)
    try:
        await client.send(data)
        return await client.response(timeout)
    finally:
        client.close()


def envelope(body: bytes) -> dict[str, Any]:
    """The SPEC §4 error envelope, checked for shape."""
    data = json.loads(body)
    error = data["error"]
    assert set(error) >= {"type", "code", "message", "details"}, data
    assert isinstance(data["meta"]["request_id"], str), data
    return data


def assert_envelope(head: Head, body: bytes, status: int, *codes: str) -> dict[str, Any]:
    assert head.status == status, (head.raw, body)
    assert head.headers.get("Content-Type", "").startswith("application/json"), head.raw
    data = envelope(body)
    assert data["error"]["code"] in codes, data
    assert data["meta"]["request_id"] == head.headers.get("X-Request-Id"), (head.raw, data)
    return data


def assert_versionless_server(headers: CIMultiDict[str]) -> None:
    for server in headers.getall("Server", []):
        assert not re.search(r"\d", server), f"Server names a version: {server!r}"
        assert "python" not in server.lower(), f"Server names Python: {server!r}"


# -- a recording upstream ----------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream read it off the wire."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


Answer = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to a request; returns whether the connection may carry another."""


def plain(body: bytes = b"ok", extra: bytes = b"") -> Answer:
    """200 with a Content-Length and no other header (no Content-Type, no Server)."""

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
        )
        await writer.drain()
        return True

    return answer


def chunked(pieces: list[bytes], gap: float) -> Answer:
    """200, chunked, each piece its own chunk ``gap`` seconds apart; no other header."""

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            await writer.drain()
            await asyncio.sleep(gap)
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return answer


def close_delimited(pieces: list[bytes], gap: float) -> Answer:
    """200 with neither Content-Length nor chunked: the body ends when the connection does."""

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for piece in pieces:
            await writer.drain()
            await asyncio.sleep(gap)
            writer.write(piece)
        await writer.drain()
        return False

    return answer


@dataclass
class Drip:
    """200 with ``Content-Length`` whose body is sent one byte every ``gap`` seconds."""

    body: bytes = b"abcd"
    gap: float = 1.0
    sent_at: list[float] = field(default_factory=list)

    async def __call__(self, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body))
        await writer.drain()
        for i in range(len(self.body)):
            if i:
                await asyncio.sleep(self.gap)
            writer.write(self.body[i : i + 1])
            await writer.drain()
            self.sent_at.append(time.monotonic())
        return True


class RecordingUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that keeps every byte and request it receives.

    ``requests`` are the whole requests read (framed by Content-Length or
    chunked encoding, as RFC 9112 reads them); ``cut`` the requests whose
    connection closed before their end; ``answer`` writes each answer.
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.cut: list[bytes] = []
        self.raw = bytearray()
        self.answer: Answer = plain()
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> RecordingUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _read(self, awaitable: Awaitable[bytes]) -> bytes:
        data = await asyncio.wait_for(awaitable, UPSTREAM_IDLE)
        self.raw += data
        return data

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        taken = b""
        try:
            while True:
                taken = b""
                taken = await self._read(reader.readuntil(b"\r\n\r\n"))
                line, *lines = taken[:-4].decode("latin-1").split("\r\n")
                method, target, version = line.split(" ", 2)
                headers = [
                    (name.strip(), value.strip())
                    for name, _, value in (h.partition(":") for h in lines)
                ]
                seen = Seen(method, target, version, headers, b"")
                if any(v.lower() == "chunked" for v in seen.values("Transfer-Encoding")):
                    body = b""
                    while True:
                        size_line = await self._read(reader.readuntil(b"\r\n"))
                        taken += size_line
                        size = int(size_line.split(b";")[0], 16)
                        if size == 0:
                            while (end := await self._read(reader.readuntil(b"\r\n"))) != b"\r\n":
                                taken += end
                            break
                        data = await self._read(reader.readexactly(size + 2))
                        taken += data
                        body += data[:-2]
                    seen.body = body
                elif seen.values("Content-Length"):
                    length = int(seen.values("Content-Length")[0])
                    seen.body = await self._read(reader.readexactly(length))
                self.requests.append(seen)
                if not await self.answer(seen, writer):
                    break
        except asyncio.IncompleteReadError as exc:
            self.raw += exc.partial
            if taken or exc.partial:
                self.cut.append(taken + exc.partial)
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            if taken:
                self.cut.append(taken)
        finally:
            writer.close()

    async def settle(self, seconds: float = 0.5) -> None:
        """Give stray bytes (a second request hidden in a body, say) time to arrive."""
        await asyncio.sleep(seconds)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingUpstream]:
    up = await RecordingUpstream().start()
    yield up
    await up.close()


def routes(recorder: RecordingUpstream, demo_url: str) -> list[dict[str, Any]]:
    rec = recorder.url
    return [
        {"name": "admin", "match": "/admin", "upstream": rec},
        {"name": "v1", "match": "/v1", "upstream": rec},
        {"name": "echo", "match": "/echo", "upstream": demo_url},
        {"name": "redirect", "match": "/redirect", "upstream": demo_url},
        {"name": "svc", "match": "/svc", "upstream": demo_url, "strip_prefix": True},
        {"name": "public", "match": "/", "upstream": rec, "auth": "none"},
    ]


@pytest.fixture
async def gw(start_gateway, base_config, recorder, upstream):
    return await start_gateway(base_config(routes=routes(recorder, upstream_url(upstream))))


@pytest.fixture
async def account(gw) -> str:
    return await new_account(gw.service)


@pytest.fixture
async def key(gw, account) -> tuple[str, str]:
    return await new_key(gw.service, account)


def auth(secret: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {secret}")


def key_shaped(mode: str = "live") -> str:
    """A string in the key format with a valid checksum (``sk_live_`` and 38 characters)."""
    head = f"sk_{mode}_" + "Q7x" * 10 + "Zz"
    return head + checksum(head)


def access_lines(gw, capsys) -> list[dict[str, Any]]:
    """The gateway's access-log lines printed so far (as tests/test_accesslog.py reads them)."""
    gw.runtime.access_log.flush()
    out = capsys.readouterr().out
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "http.request.method" in record:
                lines.append(record)
    return lines


# -- 1. Expect: 100-continue ------------------------------------------------------------


class TestExpectContinue:
    @pytest.mark.parametrize("who", ["no key", "unknown key", "restricted key"])
    async def test_a_refused_request_gets_its_error_and_no_100(self, gw, account, recorder, who):
        headers = [("Expect", "100-continue"), ("Content-Length", "11")]
        status, code = 401, "missing_api_key"
        if who == "unknown key":
            headers.append(auth(key_shaped()))
            code = "invalid_api_key"
        elif who == "restricted key":
            _, secret = await new_key(gw.service, account, allowed_endpoints=["GET /v1/allowed/*"])
            headers.append(auth(secret))
            status, code = 403, "endpoint_not_allowed"
        client = await Client.connect(gw.url)
        try:
            await client.send(request_bytes("POST", "/v1/upload", headers))  # the body is withheld
            head, body = await client.response(timeout=5)
        finally:
            client.close()
        assert b"100 Continue" not in head.raw
        assert_envelope(head, body, status, code)
        await recorder.settle(0.2)
        assert recorder.requests == [] and recorder.cut == []

    async def test_a_passing_request_gets_100_then_its_body_goes_upstream_whole(
        self, gw, key, recorder
    ):
        body = b"hello world"
        headers = [auth(key[1]), ("Expect", "100-continue"), ("Content-Length", str(len(body)))]
        client = await Client.connect(gw.url)
        try:
            await client.send(request_bytes("POST", "/v1/upload", headers))
            interim = await client.head(timeout=5)  # no body sent until this arrives
            assert interim.status == 100, interim.raw
            assert interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
            await client.send(body)
            head, answer = await client.response()
        finally:
            client.close()
        assert head.status == 200 and answer == b"ok", (head.raw, answer)
        [seen] = recorder.requests
        assert (seen.method, seen.target, seen.body) == ("POST", "/v1/upload", body)
        assert seen.values("Content-Length") == [str(len(body))]


# -- 2. body idle timeout ---------------------------------------------------------------


class TestBodyIdleTimeout:
    async def test_a_stalled_body_gets_408_and_the_connection_closes(
        self, start_gateway, base_config, recorder, upstream
    ):
        gw = await start_gateway(
            base_config(
                server={"body_idle_timeout": "1s"},
                routes=routes(recorder, upstream_url(upstream)),
            )
        )
        client = await Client.connect(gw.url)
        try:
            began = time.monotonic()
            head_bytes = request_bytes("POST", "/public/upload", [("Content-Length", "100")])
            await client.send(head_bytes + b"0123456789")  # 10 of 100 bytes, then nothing
            head, body = await client.response(timeout=8)
            answered = time.monotonic() - began
            answered_at = time.monotonic()
            rest = await client.until_close(timeout=15)  # the connection closes
            closed_after = time.monotonic() - answered_at
        finally:
            client.close()
        data = assert_envelope(head, body, 408, "request_timeout")
        assert data["error"]["type"] == "invalid_request_error"
        assert 0.8 <= answered < 6, answered
        assert head.headers.get("Connection", "").lower() == "close", head.raw
        assert rest == b""
        # closed by the gateway, not held open reading a body it has given up on
        assert closed_after < 3, f"connection closed {closed_after:.1f}s after the 408"
        await recorder.settle(0.3)
        assert recorder.requests == []  # the upstream never got a whole request


# -- 3. request ids ---------------------------------------------------------------------


class TestRequestIds:
    @pytest.mark.parametrize("mode", ["live", "test"])
    async def test_a_key_shaped_id_is_replaced_on_a_proxied_request(
        self, gw, account, recorder, mode
    ):
        _, secret = await new_key(gw.service, account, mode=mode)
        rid = secret  # the worst case: the caller's own key sent as the id
        assert len(rid) == len(f"sk_{mode}_") + 38
        head, body = await exchange(
            gw.url, request_bytes("GET", "/v1/x", [auth(secret), ("X-Request-Id", rid)])
        )
        assert head.status == 200, (head.raw, body)
        answered = head.headers.getall("X-Request-Id")
        assert len(answered) == 1 and answered[0].startswith("req_"), head.raw
        assert secret.encode() not in head.raw + body
        [seen] = recorder.requests
        assert seen.values("X-Request-Id") == answered
        assert all(secret not in value for _, value in seen.headers), seen.headers

    async def test_a_key_shaped_id_is_replaced_on_an_error(self, gw):
        rid = key_shaped()
        head, body = await exchange(gw.url, request_bytes("GET", "/v1/x", [("X-Request-Id", rid)]))
        data = assert_envelope(head, body, 401, "missing_api_key")
        assert data["meta"]["request_id"].startswith("req_")
        assert rid.encode() not in head.raw + body

    async def test_a_safe_id_is_kept_both_ways(self, gw, key, recorder):
        rid = "trace-01.AB_cd"
        head, _ = await exchange(
            gw.url, request_bytes("GET", "/v1/x", [auth(key[1]), ("X-Request-Id", rid)])
        )
        assert head.headers.getall("X-Request-Id") == [rid]
        [seen] = recorder.requests
        assert seen.values("X-Request-Id") == [rid]
        head, body = await exchange(gw.url, request_bytes("GET", "/v1/x", [("X-Request-Id", rid)]))
        assert assert_envelope(head, body, 401, "missing_api_key")["meta"]["request_id"] == rid


def test_a_forked_worker_never_repeats_its_parents_request_ids():
    ids = RequestIds()
    parent = {ids.next() for _ in range(3)}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out without running the parent's cleanup
        try:
            os.write(write, " ".join(ids.next() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(child) == 3 and not child & parent
    assert {ids.next() for _ in range(3)}.isdisjoint(child)


# -- 4. Server -------------------------------------------------------------------------


OWN_ANSWERS = {
    "401": (b"GET /admin/x HTTP/1.1\r\nHost: h\r\n\r\n", 401),
    "404": (b"GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n", 404),
    "management-verify": (b"GET /v1/auth/verify HTTP/1.1\r\nHost: h\r\n{auth}\r\n", 200),
    "management-account": (b"GET /v1/account HTTP/1.1\r\nHost: h\r\n{auth}\r\n", 200),
    "management-401": (b"GET /v1/auth/verify HTTP/1.1\r\nHost: h\r\n\r\n", 401),
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400),
    "malformed": (b"GET /admin/x HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n", 400),
}


class TestServerHeader:
    @pytest.mark.parametrize("answer", list(OWN_ANSWERS))
    async def test_the_gateways_own_answers_name_no_version(
        self, start_gateway, base_config, recorder, answer
    ):
        gw = await start_gateway(
            base_config(routes=[{"name": "admin", "match": "/admin", "upstream": recorder.url}])
        )
        _, secret = await new_key(gw.service, await new_account(gw.service))
        data, status = OWN_ANSWERS[answer]
        data = data.replace(b"{auth}", f"Authorization: Bearer {secret}\r\n".encode())
        head, body = await exchange(gw.url, data)
        assert head.status == status, (head.raw, body)
        assert_versionless_server(head.headers)
        assert recorder.requests == []

    @pytest.mark.parametrize("shape", ["whole", "streamed"])
    async def test_a_proxied_answer_without_server_gets_none_added(self, gw, recorder, shape):
        recorder.answer = plain(b"hello") if shape == "whole" else chunked([b"he", b"llo"], 0.2)
        head, body = await exchange(gw.url, request_bytes("GET", "/public/x"))
        assert head.status == 200 and body == b"hello", (head.raw, body)
        assert "Server" not in head.headers, head.raw


class TestChunkedTrailers:
    async def test_a_trailer_never_becomes_a_header_of_the_next_request(
        self, gw, account, recorder
    ):
        """aiohttp's parser hands the last trailer of a chunked body to the next request on
        the connection; the gateway closes the connection after a chunked body instead."""
        _, secret = await new_key(gw.service, account)
        client = await Client.connect(gw.url)
        try:
            await client.send(
                b"POST /public/up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Trailer: a\r\n"
                + f"Authorization: Bearer {secret}\r\n\r\n".encode()
                + b"GET /admin/x HTTP/1.1\r\nHost: h\r\n\r\n"
            )
            head = await client.head()
            assert head.status == 200, head.raw
            await client.body(head)
            assert head.headers.get("Connection", "").lower() == "close", head.raw
            assert await client.until_close() == b""  # no answer to the second request
        finally:
            client.close()
        await recorder.settle(0.2)
        assert [seen.target for seen in recorder.requests] == ["/public/up"]
        [seen] = recorder.requests
        assert seen.body == b"hello"

    async def test_a_body_of_known_length_keeps_the_connection(self, gw, recorder):
        client = await Client.connect(gw.url)
        try:
            for n in range(2):
                await client.send(
                    request_bytes("POST", f"/public/{n}", [("Content-Length", "5")], b"hello")
                )
                head = await client.head()
                assert head.status == 200 and await client.body(head) is not None
        finally:
            client.close()
        assert [seen.target for seen in recorder.requests] == ["/public/0", "/public/1"]


class TestKeySubprotocolOnPlainRequests:
    @pytest.mark.parametrize(
        ("offered", "forwarded"),
        [("chat, bearer.{key}", ["chat"]), ("bearer.{key}", []), ("chat", ["chat"])],
    )
    async def test_a_key_offered_as_a_subprotocol_never_goes_upstream(
        self, gw, account, recorder, offered, forwarded
    ):
        _, secret = await new_key(gw.service, account)
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", offered.format(key=secret)),
        ]
        for target, extra in (("/public/x", []), ("/admin/x", [auth(secret)])):
            recorder.requests.clear()
            head, body = await exchange(gw.url, request_bytes("GET", target, headers + extra))
            assert head.status == 200, (head.raw, body)  # a plain request: no route has WebSockets
            [seen] = recorder.requests
            assert seen.values("Sec-WebSocket-Protocol") == forwarded
            assert all(secret not in value for _, value in seen.headers)


# -- 5. odd request-target forms ---------------------------------------------------------


ODD_FORMS = [
    ("CONNECT", "example.com:443", "example.com:443"),
    ("OPTIONS", "*", CLIENT_HOST),
    ("GET", "http://x/y", "x"),
]


class TestOddTargetForms:
    @pytest.mark.parametrize(("method", "target", "host"), ODD_FORMS)
    async def test_answered_in_the_envelope_logged_and_never_forwarded(
        self, gw, recorder, capsys, method, target, host
    ):
        head, body = await exchange(gw.url, request_bytes(method, target, host=host))
        data = assert_envelope(head, body, 400, "bad_request")
        assert data["error"]["type"] == "invalid_request_error"
        assert_versionless_server(head.headers)
        await recorder.settle(0.2)
        assert recorder.requests == [] and recorder.cut == []
        logged = [
            x for x in access_lines(gw, capsys) if x["request_id"] == head.headers["X-Request-Id"]
        ]
        assert len(logged) == 1, logged
        assert logged[0]["http.response.status_code"] == 400, logged
        assert logged[0]["http.request.method"] == method, logged
        assert logged[0]["code"] == "bad_request", logged


# -- 6. strict request targets -----------------------------------------------------------


class TestStrictTargets:
    @pytest.mark.parametrize(
        "target",
        ["/a#b", "/a#/../b", "/a\x01b", "/a\x7fb", "/a\tb", "/caf\xc3\xa9", "/caf\xe9"],
        ids=["fragment", "fragment-dots", "ctl-01", "del", "tab", "utf8", "latin1"],
    )
    async def test_refused_with_bad_request_and_never_forwarded(self, gw, recorder, target):
        head, body = await exchange(gw.url, request_bytes("GET", target))
        await recorder.settle(0.2)
        assert recorder.requests == [] and recorder.cut == []
        assert_envelope(head, body, 400, "bad_request")

    async def test_a_raw_space_is_refused_in_the_envelope(self, gw, recorder):
        head, body = await exchange(gw.url, request_bytes("GET", "/a b"))
        assert_envelope(head, body, 400, "bad_request", "invalid_request")
        await recorder.settle(0.2)
        assert recorder.requests == [] and recorder.cut == []

    async def test_a_fragment_never_hides_a_path_from_a_restriction(self, gw, account, recorder):
        _, secret = await new_key(gw.service, account, allowed_endpoints=["GET /v1/allowed/*"])
        head, body = await exchange(
            gw.url, request_bytes("GET", "/v1/secret#/../allowed/x", [auth(secret)])
        )
        assert_envelope(head, body, 400, "bad_request")
        await recorder.settle(0.2)
        assert recorder.requests == [] and recorder.cut == []
        head, _ = await exchange(gw.url, request_bytes("GET", "/v1/allowed/x", [auth(secret)]))
        assert head.status == 200  # the key itself works where it is allowed
        assert [s.target for s in recorder.requests] == ["/v1/allowed/x"]


# -- 7. ';' parameters -----------------------------------------------------------------


class TestSemicolonParameters:
    @pytest.mark.parametrize(
        "target", ["/admin;x/secret", "/;x/admin/secret", "/;/admin/secret", "/;a/;b/admin;c/x"]
    )
    async def test_parameters_do_not_move_a_path_off_its_route(self, gw, recorder, target):
        head, body = await exchange(gw.url, request_bytes("GET", target))
        assert_envelope(head, body, 401, "missing_api_key")  # judged as /admin/...
        await recorder.settle(0.2)
        assert recorder.requests == []

    async def test_an_encoded_semicolon_is_neither_decoded_nor_cut(self, gw, recorder):
        head, body = await exchange(gw.url, request_bytes("GET", "/admin%3Bx/secret"))
        assert head.status == 200, (head.raw, body)  # the public route: not /admin
        [seen] = recorder.requests
        assert seen.target == "/admin%3Bx/secret"

    @pytest.mark.parametrize(
        ("target", "allowed"),
        [
            ("/v1/files;x/a", True),
            ("/v1/files/a;v=2", True),
            ("/v1/files;jsessionid=1/a;b", True),
            ("/v1/private;x/a", False),
            ("/v1/files/a;x/b", False),
            ("/v1/files/a;/../../private/b", False),
        ],
    )
    async def test_endpoint_restrictions_are_judged_without_parameters(
        self, gw, account, recorder, target, allowed
    ):
        _, secret = await new_key(gw.service, account, allowed_endpoints=["GET /v1/files/*"])
        head, body = await exchange(gw.url, request_bytes("GET", target, [auth(secret)]))
        if allowed:
            assert head.status == 200, (head.raw, body)
            [seen] = recorder.requests
            assert seen.target == target  # parameters are forwarded as received
        else:
            assert_envelope(head, body, 403, "endpoint_not_allowed")
            await recorder.settle(0.2)
            assert recorder.requests == []


# -- 8. an encoded line feed ------------------------------------------------------------


class TestEncodedLineFeed:
    @pytest.mark.parametrize(
        "target", ["/x%0Ay", "/x%0a", "/x%0D%0ASet-Cookie:%20a=b", "/admin/x%0Ay"]
    )
    async def test_answered_in_the_envelope_or_forwarded_still_encoded(self, gw, recorder, target):
        head, body = await exchange(gw.url, request_bytes("GET", target))
        assert "Set-Cookie" not in head.headers, head.raw
        if recorder.requests:
            [seen] = recorder.requests
            assert head.status == 200, (head.raw, body)
            assert "\n" not in seen.target and "\r" not in seen.target
            assert seen.target.upper() == target.upper()  # %0A kept, percent-encoded
        else:
            assert head.headers.get("Content-Type", "").startswith("application/json"), head.raw
            envelope(body)
            if target.startswith("/admin"):
                assert head.status == 401


# -- 9. fidelity ------------------------------------------------------------------------


async def http10(url: str, target: str, timeout: float = READ_TIMEOUT) -> tuple[Head, bytes]:
    """``GET target HTTP/1.0``; the answer's head and everything after it up to the close."""
    client = await Client.connect(url)
    try:
        await client.send(request_bytes("GET", target, version="HTTP/1.0"))
        head = await client.head(timeout)
        return head, await client.until_close(timeout)
    finally:
        client.close()


class TestFidelity:
    @pytest.mark.parametrize("shape", ["chunked", "close-delimited"])
    async def test_http10_client_gets_a_body_of_unknown_length_ended_by_close(
        self, gw, recorder, shape
    ):
        pieces = [b"first,", b"second,", b"third"]
        recorder.answer = (chunked if shape == "chunked" else close_delimited)(pieces, 0.2)
        head, rest = await http10(gw.url, "/public/stream")
        assert head.status == 200, (head.raw, rest)
        assert "chunked" not in head.headers.get("Transfer-Encoding", "").lower(), head.raw
        assert rest == b"".join(pieces)  # whole, raw, ended by the close

    async def test_http10_client_gets_the_demo_event_stream(self, gw, key):
        client = await Client.connect(gw.url)
        try:
            await client.send(
                request_bytes(
                    "GET", "/svc/stream?count=3&interval=0.1", [auth(key[1])], version="HTTP/1.0"
                )
            )
            head = await client.head()
            rest = await client.until_close()
        finally:
            client.close()
        assert head.status == 200, (head.raw, rest)
        assert "chunked" not in head.headers.get("Transfer-Encoding", "").lower(), head.raw
        assert rest.count(b"data: ") == 3 and rest.endswith(b"\n\n"), rest

    async def test_a_dripped_body_arrives_as_it_is_sent(self, gw, recorder):
        drip = Drip(b"abcd", gap=1.0)
        recorder.answer = drip
        client = await Client.connect(gw.url)
        try:
            await client.send(request_bytes("GET", "/public/drip"))
            head = await client.head(timeout=5)
            first = await asyncio.wait_for(client.reader.readexactly(1), 5)
            first_at = time.monotonic()
            rest = await asyncio.wait_for(client.reader.readexactly(3), 10)
        finally:
            client.close()
        assert head.status == 200 and head.headers.get("Content-Length") == "4", head.raw
        assert first + rest == b"abcd"
        assert len(drip.sent_at) == 4
        assert first_at < drip.sent_at[-1] - 1.5, (first_at - drip.sent_at[0], drip.sent_at)

    async def test_location_to_the_upstream_origin_becomes_the_clients(self, gw, key, upstream):
        to = quote(f"{upstream_url(upstream)}/next", safe="")
        head, _ = await exchange(gw.url, request_bytes("GET", f"/redirect?to={to}", [auth(key[1])]))
        assert head.status == 302, head.raw
        assert head.headers.getall("Location") == [f"http://{CLIENT_HOST}/next"]

    @pytest.mark.parametrize(
        ("to", "expected"),
        [("/next", "/svc/next"), ("{origin}/next", f"http://{CLIENT_HOST}/svc/next")],
    )
    async def test_location_on_a_strip_prefix_route_gets_the_prefix_back(
        self, gw, key, upstream, to, expected
    ):
        to = quote(to.format(origin=upstream_url(upstream)), safe="")
        head, _ = await exchange(
            gw.url, request_bytes("GET", f"/svc/redirect?to={to}", [auth(key[1])])
        )
        assert head.status == 302, head.raw
        assert head.headers.getall("Location") == [expected]

    async def test_another_hosts_location_is_left_alone(self, gw, key):
        to = quote("https://elsewhere.example/next", safe="")
        head, _ = await exchange(
            gw.url, request_bytes("GET", f"/svc/redirect?to={to}", [auth(key[1])])
        )
        assert head.headers.getall("Location") == ["https://elsewhere.example/next"]

    @pytest.mark.parametrize("shape", ["whole", "streamed"])
    async def test_no_content_type_is_added(self, gw, recorder, shape):
        recorder.answer = plain(b"hello") if shape == "whole" else chunked([b"he", b"llo"], 0.2)
        head, body = await exchange(gw.url, request_bytes("GET", "/public/x"))
        assert head.status == 200 and body == b"hello", (head.raw, body)
        assert "Content-Type" not in head.headers, head.raw


# -- 10. framing -----------------------------------------------------------------------


class TestFraming:
    async def test_connection_cannot_unframe_a_body_that_is_a_request(self, gw, recorder):
        inner = request_bytes("GET", "/smuggled", host="victim.example")
        data = request_bytes(
            "POST",
            "/public/frame",
            [("Connection", "keep-alive, Content-Length"), ("Content-Length", str(len(inner)))],
            inner,
        )
        head, body = await exchange(gw.url, data)
        assert head.status == 200 and body == b"ok", (head.raw, body)
        await recorder.settle()
        assert [(s.method, s.target) for s in recorder.requests] == [("POST", "/public/frame")]
        [seen] = recorder.requests
        assert seen.values("Content-Length") == [str(len(inner))]
        assert seen.values("Transfer-Encoding") == []
        assert seen.body == inner
        assert recorder.cut == []

    @pytest.mark.parametrize("route", ["/public/h", "/admin/h"])
    async def test_underscore_spellings_never_reach_the_upstream(self, gw, key, recorder, route):
        key_id, secret = key
        headers = [
            ("Transfer_Encoding", "chunked"),
            ("Content_Length", "5"),
            ("X-Gateway_Key-Id", "key_forged"),
            ("X_Gateway-Key-Id", "key_forged"),
            ("X_Gateway_Account_Id", "acct_forged"),
        ]
        if route.startswith("/admin"):
            headers.append(auth(secret))
        head, body = await exchange(gw.url, request_bytes("GET", route, headers))
        assert head.status == 200, (head.raw, body)
        [seen] = recorder.requests
        names = [name for name, _ in seen.headers]
        assert not [n for n in names if "_" in n], names
        assert all("forged" not in value for _, value in seen.headers), seen.headers
        assert seen.values("Transfer-Encoding") == [] and seen.values("Content-Length") == []
        assert seen.body == b""
        expected = [key_id] if route.startswith("/admin") else []
        assert seen.values("X-Gateway-Key-Id") == expected


# -- 11. a real third-party upstream: httpbin ---------------------------------------------


@pytest.fixture(scope="module")
def httpbin_url() -> Iterator[str]:
    """httpbin (Flask) served by werkzeug as a separate process on 127.0.0.1."""
    if importlib.util.find_spec("httpbin") is None:
        pytest.fail("httpbin is not installed: run scripts/setup.sh (the test extra holds it)")
    code = (
        "import sys\n"
        "from werkzeug.serving import run_simple\n"
        "from httpbin import app\n"
        "run_simple('127.0.0.1', int(sys.argv[1]), app, threaded=True)\n"
    )
    server = ServiceProcess(
        "httpbin", lambda port: [sys.executable, "-c", code, str(port)], ready_path="/get"
    ).start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
async def hb(start_gateway, base_config, httpbin_url):
    return await start_gateway(
        base_config(
            routes=[
                {"name": "hb", "match": "/hb", "upstream": httpbin_url, "strip_prefix": True},
                {"name": "to", "match": "/redirect-to", "upstream": httpbin_url, "auth": "none"},
                {
                    "name": "hbpub",
                    "match": "/pub",
                    "upstream": httpbin_url,
                    "auth": "none",
                    "strip_prefix": True,
                },
            ]  # fmt: skip
        )
    )


@pytest.fixture
async def hb_key(hb) -> str:
    return (await new_key(hb.service, await new_account(hb.service)))[1]


class TestHttpbin:
    async def test_http10_client_gets_a_streamed_answer_whole(self, hb):
        head, rest = await http10(hb.url, "/pub/stream/3")
        assert head.status == 200, (head.raw, rest)
        assert "chunked" not in head.headers.get("Transfer-Encoding", "").lower(), head.raw
        lines = [json.loads(line) for line in rest.splitlines()]
        assert [line["id"] for line in lines] == [0, 1, 2]

    async def test_http10_client_gets_a_drip_whole(self, hb):
        head, rest = await http10(hb.url, "/pub/drip?numbytes=4&duration=1&delay=0")
        assert head.status == 200, (head.raw, rest)
        assert rest == b"****"

    async def test_a_drip_arrives_as_it_is_sent(self, hb, hb_key):
        client = await Client.connect(hb.url)
        try:
            await client.send(
                request_bytes(
                    "GET", "/hb/drip?numbytes=4&duration=4&delay=0&code=200", [auth(hb_key)]
                )
            )
            head = await client.head(timeout=5)
            await asyncio.wait_for(client.reader.readexactly(1), 5)
            first_at = time.monotonic()
            await asyncio.wait_for(client.reader.readexactly(3), 10)
            last_at = time.monotonic()
        finally:
            client.close()
        assert head.status == 200 and head.headers.get("Content-Length") == "4", head.raw
        assert last_at - first_at > 2.0, last_at - first_at  # not held back until the end

    async def test_redirect_to_the_upstream_comes_back_on_the_clients_origin(self, hb, httpbin_url):
        to = quote(f"{httpbin_url}/next", safe="")
        head, _ = await exchange(hb.url, request_bytes("GET", f"/redirect-to?url={to}"))
        assert head.status == 302, head.raw
        assert head.headers.getall("Location") == [f"http://{CLIENT_HOST}/next"]

    @pytest.mark.parametrize(
        ("to", "expected"),
        [("/next", "/hb/next"), ("{origin}/next", f"http://{CLIENT_HOST}/hb/next")],
    )
    async def test_redirect_on_a_strip_prefix_route_gets_the_prefix_back(
        self, hb, hb_key, httpbin_url, to, expected
    ):
        to = quote(to.format(origin=httpbin_url), safe="")
        head, _ = await exchange(
            hb.url, request_bytes("GET", f"/hb/redirect-to?url={to}", [auth(hb_key)])
        )
        assert head.status == 302, head.raw
        assert head.headers.getall("Location") == [expected]

    async def test_response_headers_come_back_as_sent(self, hb, hb_key, httpbin_url):
        location = quote(f"{httpbin_url}/elsewhere", safe="")
        target = f"/hb/response-headers?X-Thing=one&X-Thing=two&Location={location}"
        head, body = await exchange(hb.url, request_bytes("GET", target, [auth(hb_key)]))
        assert head.status == 200, (head.raw, body)
        assert head.headers.getall("X-Thing") == ["one", "two"]
        assert head.headers.getall("Location") == [f"http://{CLIENT_HOST}/hb/elsewhere"]
        assert head.headers.getall("Content-Type") == ["application/json"]
        assert json.loads(body)["X-Thing"] == ["one", "two"]

"""A request-smuggling scanner run against a real ``gateway serve`` on loopback.

Modelled on the mutation list of defparam/smuggler (CL.TE, TE.CL and TE.TE with
an obfuscated ``Transfer-Encoding``) and extended with what SPEC §4-§5 name:
look-alike framing names (``Transfer_Encoding``, ``Content_Length``), two or
malformed ``Content-Length`` values, odd chunk sizes, framing headers named in
``Connection``, ``Expect: 100-continue`` with a refused key, chunked trailers
and bodies that are themselves requests. Every smuggled request goes to
``/admin`` (an ``auth: required`` route) without a key and with a forged
``X-Gateway-Key-Id``, so it must never reach the upstream whatever the gateway
makes of the bytes.

The upstream is a raw-socket asyncio server that parses, byte for byte, every
request the gateway sends it on a keep-alive connection, records it, and
answers each with a small 200 echoing the ``X-Request-Id`` it read. For each
mutation the raw bytes go to the gateway on one connection, and then a second
client sends ordinary requests on another. The test asserts, as a user sees it:

- the upstream receives only whole requests a client sent (never a request line
  from inside a body, never ``/admin`` without the valid key's identity, never
  an ``X-Gateway-*`` header or a look-alike framing header the gateway did not
  set, always one unambiguous framing);
- the client gets at most one answer per request it sent, each a 2xx answering
  its own request or a 4xx in the gateway's JSON envelope, or a closed connection;
- the second client gets the answers to its own requests, never another's.

Run it alone with ``.venv/bin/python -m pytest tests/test_smuggling.py -v``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import GatewayProcess, drop_prefix, free_port, service_for, write_config

from gateway.config import parse_config
from gateway.keys.service import CLI

pytestmark = pytest.mark.integration

ANSWER_DEADLINE = 6.0  # the longest wait for a mutation's answers
IDLE_AFTER_ANSWERS = 0.5  # silence awaited after the expected answers, for extra ones
GATEWAY_HEADERS = frozenset(
    {
        "x-gateway-key-id",
        "x-gateway-key-name",
        "x-gateway-key-mode",
        "x-gateway-account-id",
        "x-gateway-permissions",
        "x-gateway-key-metadata",
    }
)
FRAMING_AND_HOP = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")


# -- the upstream: a raw-socket HTTP/1.1 server that records every request -------------


@dataclass
class Received:
    """One request as the upstream parsed it from the bytes the gateway sent."""

    conn: int
    raw: bytes = b""
    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]

    @property
    def request_id(self) -> str | None:
        ids = self.values("x-request-id")
        return ids[0] if len(ids) == 1 else None

    def __str__(self) -> str:
        raw = self.raw if len(self.raw) <= 600 else self.raw[:600] + b"..."
        return f"conn {self.conn}: {raw!r}"


class _Buffer:
    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader
        self.data = b""
        self.taken = b""  # consumed bytes of the request being read

    async def _more(self) -> bool:
        chunk = await self.reader.read(65536)
        self.data += chunk
        return bool(chunk)

    async def line(self) -> bytes | None:
        """Up to and including the next LF (a lenient backend also ends lines with a bare LF)."""
        while b"\n" not in self.data:
            if not await self._more():
                return None
        end = self.data.index(b"\n") + 1
        out, self.data = self.data[:end], self.data[end:]
        self.taken += out
        return out

    async def exactly(self, n: int) -> bytes | None:
        while len(self.data) < n:
            if not await self._more():
                return None
        out, self.data = self.data[:n], self.data[n:]
        self.taken += out
        return out


_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) HTTP/1\.[01]$")


class RawUpstream:
    """Parses requests off keep-alive connections as a typical lenient backend would.

    TE ``chunked`` anywhere wins over ``Content-Length``; bare LF ends a line;
    anything else it cannot read as a request is recorded as a problem and
    answered 400 before the connection is closed. What the gateway should never
    send (two framings, a look-alike framing name, obs-fold, a bare CR or LF)
    is recorded as a problem on the request.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._conns = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close_connections(self) -> None:
        """Close every connection the gateway holds to us; a request head left open is recorded."""
        self._call(self._close_connections())

    def reset(self) -> None:
        """Close every connection and forget what was received."""
        self.close_connections()
        self.received = []

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._close_connections()
        if self._server is not None:
            self._server.close()

    async def _close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        conn = self._conns
        self._writers.add(writer)
        buffer = _Buffer(reader)
        try:
            while True:
                request = await self._read_request(buffer, conn)
                if request is None:
                    return
                self.received.append(request)
                if any(p.startswith("unreadable") for p in request.problems):
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                rid = request.request_id or "-"
                body = json.dumps({"echo": rid, "target": request.target}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nX-Echo-Request-Id: %s\r\n\r\n%s"
                    % (len(body), rid.encode("latin-1", "replace"), body)
                )
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, buf: _Buffer, conn: int) -> Received | None:
        buf.taken = b""
        request = Received(conn)
        line = await buf.line()
        while line in (b"\r\n", b"\n"):  # empty lines before a request line are ignored
            line = await buf.line()
        if line is None:
            if buf.data or buf.taken:
                request.raw = buf.taken + buf.data
                request.problems.append("unreadable: bytes that end without a request head")
                return request
            return None
        head = [line]
        while True:
            line = await buf.line()
            if line is None:
                request.raw = buf.taken + buf.data
                request.problems.append("unreadable: a request head cut off")
                return request
            if line in (b"\r\n", b"\n"):
                break
            head.append(line)
        raw_head = b"".join(head)
        if raw_head.count(b"\n") != raw_head.count(b"\r\n"):
            request.problems.append("bare LF line end in the head")
        if raw_head.replace(b"\r\n", b"").count(b"\r"):
            request.problems.append("bare CR in the head")
        text = [h.decode("latin-1").rstrip("\r\n") for h in head]
        matched = _REQUEST_LINE.match(text[0])
        if not matched:
            request.raw = buf.taken
            request.problems.append(f"unreadable: not a request line: {text[0][:80]!r}")
            return request
        request.method, request.target = matched.group(1), matched.group(2)
        for line_text in text[1:]:
            if line_text[:1] in (" ", "\t") and request.headers:
                request.problems.append("obs-fold continuation line")
                name, value = request.headers.pop()
                request.headers.append((name, value + " " + line_text.strip()))
                continue
            name, colon, value = line_text.partition(":")
            if not colon:
                request.problems.append(f"header line without a colon: {line_text[:80]!r}")
                continue
            request.headers.append((name, value.strip(" \t")))
        self._check_names(request)
        if not await self._read_body(buf, request):
            request.problems.append("unreadable: a body that does not follow its framing")
        request.raw = buf.taken
        return request

    @staticmethod
    def _check_names(request: Received) -> None:
        for name, _ in request.headers:
            normal = _normal(name)
            if normal in FRAMING_AND_HOP and name.strip().lower() != normal:
                request.problems.append(f"look-alike framing/hop-by-hop header {name!r}")
            if name != name.strip() or " " in name or "\t" in name:
                request.problems.append(f"whitespace in header name {name!r}")

    @staticmethod
    async def _read_body(buf: _Buffer, request: Received) -> bool:
        te = request.values("transfer-encoding")
        cl = request.values("content-length")
        if te and cl:
            request.problems.append("both Transfer-Encoding and Content-Length")
        if len(te) > 1 or (te and te[0].strip().lower() != "chunked"):
            request.problems.append(f"Transfer-Encoding other than one 'chunked': {te}")
        if len(cl) > 1:
            request.problems.append(f"several Content-Length: {cl}")
        if cl and not cl[0].isdigit():
            request.problems.append(f"Content-Length not digits: {cl[0]!r}")
        if any("chunked" in v.lower() for v in te):
            body = b""
            while True:
                size_line = await buf.line()
                if size_line is None:
                    return False
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    return False
                if size == 0:
                    break
                data = await buf.exactly(size)
                end = await buf.line()
                if data is None or end not in (b"\r\n", b"\n"):
                    return False
                body += data
            while True:  # trailer section
                line = await buf.line()
                if line is None:
                    return False
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                request.trailers.append((name, value.strip()))
            request.body = body
            return True
        if cl:
            digits = cl[0].strip().lstrip("+")
            if not digits.isdigit():
                return False
            data = await buf.exactly(int(digits))
            if data is None:
                return False
            request.body = data
        return True


# -- the client side: raw bytes out, answers parsed back ---------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def __str__(self) -> str:
        return f"{self.status} {self.body[:160]!r}"


def _dechunk(data: bytes) -> tuple[bytes, int] | None:
    """(body, bytes used) for a complete chunked body at the start of ``data``."""
    body, pos = b"", 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(data[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", pos)
            while trailer_end > pos:  # skip trailer lines
                pos = trailer_end + 2
                trailer_end = data.find(b"\r\n", pos)
            return (body, pos + 2) if trailer_end == pos else None
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


def parse_answers(data: bytes, closed: bool) -> tuple[list[Answer], bytes, str | None]:
    """The complete answers at the start of ``data``, what is left, and an error if any."""
    answers: list[Answer] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].decode("latin-1").split("\r\n")
        matched = re.match(r"^HTTP/1\.[01] (\d{3})(?: .*)?$", lines[0])
        if not matched:
            return answers, data, f"unreadable answer: {data[:120]!r}"
        headers = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in lines[1:])]
        answer = Answer(int(matched.group(1)), headers, b"")
        rest = data[end + 4 :]
        length = answer.header("content-length")
        if answer.status < 200 or answer.status in (204, 304):
            used = 0
        elif (answer.header("transfer-encoding") or "").lower() == "chunked":
            try:
                done = _dechunk(rest)
            except ValueError:
                return answers, data, f"unreadable chunked answer: {rest[:120]!r}"
            if done is None:
                break
            answer.body, used = done
        elif length is not None:
            if not length.isdigit():
                return answers, data, f"answer with Content-Length {length!r}"
            if len(rest) < int(length):
                break
            answer.body, used = rest[: int(length)], int(length)
        elif closed:
            answer.body, used = rest, len(rest)
        else:
            break
        answers.append(answer)
        data = rest[used:]
    return answers, data, None


class Client:
    """One raw connection to the gateway; every read bounded by a timeout."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.data = b""
        self.closed = False
        self.send_failed = False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.send_failed = True

    def _recv(self, timeout: float) -> bool:
        """Read once; False on a timeout."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.01))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.data += chunk
        return True

    def answers(self) -> tuple[list[Answer], str | None]:
        answers, _, error = parse_answers(self.data, self.closed)
        return answers, error

    def read(self, expected: int, deadline: float, idle: float) -> None:
        """Read until closed, or ``expected`` final answers then ``idle`` s of silence, or the deadline."""
        quiet_since = time.monotonic()
        while not self.closed:
            now = time.monotonic()
            if now >= deadline:
                return
            final = [a for a in self.answers()[0] if a.status >= 200]
            if len(final) >= expected and now - quiet_since >= idle:
                return
            wait = min(deadline - now, idle if len(final) >= expected else 0.2)
            if self._recv(wait):
                quiet_since = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the mutations -------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a mutation's bytes are built from."""

    secret: str
    tag: str
    outer: list[str] = field(default_factory=list)  # request ids of the requests the client sent

    def rid(self) -> str:
        rid = f"smug-{self.tag}-{len(self.outer)}"
        self.outer.append(rid)
        return rid

    @property
    def inner_id(self) -> str:
        return f"inner-{self.tag}"

    def inner(self) -> bytes:
        """The smuggled request: /admin with no key and a forged identity."""
        return (
            b"GET /admin/smuggled HTTP/1.1\r\nHost: gw.test\r\nX-Gateway-Key-Id: spoof\r\n"
            b"X-Gateway-Account-Id: acct_spoof\r\nX-Request-Id: %s\r\n\r\n" % self.inner_id.encode()
        )

    def inner_prefix(self) -> bytes:
        """The smuggled request's head left open, for the next request on the connection to end."""
        return (
            b"GET /admin/smuggled HTTP/1.1\r\nX-Gateway-Key-Id: spoof\r\n"
            b"X-Request-Id: %s\r\nX-Ignore: " % self.inner_id.encode()
        )


def request(
    ctx: Ctx,
    method: str,
    target: str,
    headers: list[str],
    body: bytes = b"",
    eol: str = "\r\n",
) -> bytes:
    """A request head with ``headers`` verbatim right after the request line, as smuggler.py sends its gadgets."""
    lines = [f"{method} {target} HTTP/1.1", *headers, "Host: gw.test", f"X-Request-Id: {ctx.rid()}"]
    return (eol.join(lines) + eol + eol).encode("latin-1") + body


def chunk(data: bytes, size: str | None = None, eol: bytes = b"\r\n") -> bytes:
    size_text = (size or f"{len(data):x}").encode()
    return size_text + eol + data + eol + b"0" + eol + eol


def cl_te(gadget: str) -> Callable[[Ctx], list[bytes]]:
    """CL.TE: a Content-Length covering ``0\\r\\n\\r\\n`` and the smuggled request, and a TE gadget."""

    def build(ctx: Ctx) -> list[bytes]:
        body = b"0\r\n\r\n" + ctx.inner()
        return [request(ctx, "POST", "/public", [gadget, f"Content-Length: {len(body)}"], body)]

    return build


def te_cl(gadget: str) -> Callable[[Ctx], list[bytes]]:
    """TE.CL: a Content-Length covering only the chunk-size line; the smuggled request is the chunk."""

    def build(ctx: Ctx) -> list[bytes]:
        inner = ctx.inner()
        size_line = f"{len(inner):x}\r\n".encode()
        body = size_line + inner + b"\r\n0\r\n\r\n"
        return [
            request(ctx, "POST", "/public", [gadget, f"Content-Length: {len(size_line)}"], body)
        ]

    return build


def body_request(
    method: str, target: str, framing: Callable[[int], list[str]], *, key: bool = False
) -> Callable[[Ctx], list[bytes]]:
    """A request whose body is the smuggled request, framed by ``framing(len(body))``."""

    def build(ctx: Ctx) -> list[bytes]:
        inner = ctx.inner()
        auth = [f"Authorization: Bearer {ctx.secret}"] if key else []
        return [request(ctx, method, target, [*auth, *framing(len(inner))], inner)]

    return build


def chunked_request(
    size: Callable[[int], str] | None = None, eol: bytes = b"\r\n", target: str = "/public"
) -> Callable[[Ctx], list[bytes]]:
    """A chunked request whose one chunk is the smuggled request, its size line written by ``size``."""

    def build(ctx: Ctx) -> list[bytes]:
        inner = ctx.inner()
        size_text = size(len(inner)) if size else None
        body = chunk(inner, size_text, eol)
        return [request(ctx, "POST", target, ["Transfer-Encoding: chunked"], body)]

    return build


def chunked_trailers(trailers: bytes) -> Callable[[Ctx], list[bytes]]:
    """A keyed chunked request whose trailer section holds ``trailers``."""

    def build(ctx: Ctx) -> list[bytes]:
        body = b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"
        headers = [
            f"Authorization: Bearer {ctx.secret}",
            "Transfer-Encoding: chunked",
            "Trailer: X-Gateway-Key-Id",
        ]
        return [request(ctx, "POST", "/admin/upload", headers, body)]

    return build


def connection_content_length_open_prefix(ctx: Ctx) -> list[bytes]:
    prefix = ctx.inner_prefix()
    headers = ["Connection: Content-Length", f"Content-Length: {len(prefix)}"]
    return [request(ctx, "POST", "/public", headers, prefix)]


def bare_lf_request(ctx: Ctx) -> list[bytes]:
    inner = ctx.inner()
    return [request(ctx, "POST", "/public", [f"Content-Length: {len(inner)}"], inner, eol="\n")]


def expect_refused(pipelined: bool) -> Callable[[Ctx], list[bytes]]:
    """``Expect: 100-continue`` with a key that is refused; the body is the smuggled request."""

    def build(ctx: Ctx) -> list[bytes]:
        inner = ctx.inner()
        headers = [
            "Authorization: Bearer sk_live_notarealkey0000000000000000",
            "Expect: 100-continue",
            f"Content-Length: {len(inner)}",
        ]
        head = request(ctx, "POST", "/admin/upload", headers)
        return [head + inner] if pipelined else [head, inner]

    return build


def spoofed_identity(target: str, key: bool) -> Callable[[Ctx], list[bytes]]:
    def build(ctx: Ctx) -> list[bytes]:
        headers = [
            "X-Gateway-Key-Id: spoof",
            "X_Gateway_Key_Id: spoof",
            "X-Gateway_Key-Id: spoof",
            "x-gateway-account-id: acct_spoof",
            "X-GATEWAY-PERMISSIONS: admin",
            "Connection: X-Gateway-Key-Id",
        ]
        if key:
            headers.insert(0, f"Authorization: Bearer {ctx.secret}")
        return [request(ctx, "GET", target, headers)]

    return build


def pipelined_control(ctx: Ctx) -> list[bytes]:
    return [request(ctx, "GET", "/public/one", []) + request(ctx, "GET", "/public/two", [])]


@dataclass(frozen=True)
class Mutation:
    name: str
    build: Callable[[Ctx], list[bytes]]
    sent: int = 1  # whole requests in the bytes, as RFC 9112 reads them
    no_continue: bool = False  # a 100 Continue must not be sent


TE_GADGETS = {
    "plain": "Transfer-Encoding: chunked",
    "space-before-colon": "Transfer-Encoding : chunked",
    "tab-value": "Transfer-Encoding:\tchunked",
    "tab-around-colon": "Transfer-Encoding\t:\tchunked",
    "xchunked": "Transfer-Encoding: xchunked",
    "chunked-identity": "Transfer-Encoding: chunked, identity",
    "duplicate-te": "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
    "duplicate-chunked": "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    "obs-fold-value": "Transfer-Encoding:\r\n chunked",
    "obs-fold-hidden": "X-Pad: x\r\n Transfer-Encoding: chunked",
    "leading-space-line": " Transfer-Encoding: chunked",
    "bare-lf": "X-Pad: x\nTransfer-Encoding: chunked",
    "bare-cr": "X-Pad: x\rTransfer-Encoding: chunked",
    "underscore-name": "Transfer_Encoding: chunked",
    "space-in-name": "Transfer Encoding: chunked",
    "quoted-value": 'Transfer-Encoding: "chunked"',
    "vertical-tab": "Transfer-Encoding:\x0bchunked",
    "cr-suffix": "Transfer-Encoding: chunked\r",
    "uppercase": "TRANSFER-ENCODING: CHUNKED",
    "content-encoding": "Content-Encoding: chunked",
}
TE_CL_GADGETS = ["plain", "tab-value", "xchunked", "chunked-identity", "duplicate-te",
                 "duplicate-chunked", "obs-fold-value", "bare-lf", "uppercase"]  # fmt: skip

MUTATIONS = [
    *(Mutation(f"cl-te-{name}", cl_te(gadget)) for name, gadget in TE_GADGETS.items()),
    *(Mutation(f"te-cl-{name}", te_cl(TE_GADGETS[name])) for name in TE_CL_GADGETS),
    Mutation("cl-two-values", body_request("POST", "/public", lambda n: ["Content-Length: 0", f"Content-Length: {n}"])),
    Mutation("cl-list", body_request("POST", "/public", lambda n: [f"Content-Length: 0, {n}"])),
    Mutation("cl-plus-sign", body_request("POST", "/public", lambda n: [f"Content-Length: +{n}"])),
    Mutation("cl-space-before-colon", body_request("POST", "/public", lambda n: [f"Content-Length : {n}"])),
    Mutation("cl-obs-fold", body_request("POST", "/public", lambda n: [f"Content-Length:\r\n {n}"])),
    # Content_Length is no framing: a POST without a body, then the /admin request (refused).
    Mutation("cl-underscore-name", body_request("POST", "/public", lambda n: [f"Content_Length: {n}"]), sent=2),
    Mutation("cl0-get-with-body", body_request("GET", "/public", lambda n: [f"Content-Length: {n}"])),
    Mutation("body-is-a-request", body_request("POST", "/public", lambda n: [f"Content-Length: {n}"])),
    Mutation("bare-lf-request", bare_lf_request),
    Mutation("chunk-leading-zeros", chunked_request(lambda n: f"000{n:x}")),
    Mutation("chunk-extension", chunked_request(lambda n: f"{n:x};name=value")),
    Mutation("chunk-0x-prefix", chunked_request(lambda n: f"0x{n:x}")),
    Mutation("chunk-size-overflow", chunked_request(lambda n: f"1{'0' * 16}{n:x}")),
    Mutation("chunk-size-trailing-space", chunked_request(lambda n: f"{n:x} ")),
    Mutation("chunk-size-too-small", chunked_request(lambda n: "5")),
    Mutation("chunk-bare-lf", chunked_request(eol=b"\n")),
    Mutation("trailer-spoofed-identity", chunked_trailers(b"X-Gateway-Key-Id: spoof\r\nX_Gateway_Account_Id: spoof\r\n")),
    Mutation("trailer-content-length", chunked_trailers(b"Content-Length: 5\r\n")),
    Mutation("connection-content-length", body_request("POST", "/public", lambda n: ["Connection: Content-Length", f"Content-Length: {n}"])),
    Mutation("connection-keep-alive-content-length", body_request("POST", "/public", lambda n: ["Connection: keep-alive, Content-Length", f"Content-Length: {n}"])),
    Mutation("connection-close-content-length", body_request("POST", "/public", lambda n: ["Connection: close, Content-Length", f"Content-Length: {n}"])),
    Mutation("connection-content-length-open-prefix", connection_content_length_open_prefix),
    Mutation("connection-content-length-keyed", body_request("POST", "/admin/upload", lambda n: ["Connection: Content-Length", f"Content-Length: {n}"], key=True)),
    Mutation("connection-transfer-encoding", lambda ctx: [request(ctx, "POST", "/public", ["Connection: Transfer-Encoding", "Transfer-Encoding: chunked"], chunk(ctx.inner()))]),
    Mutation("expect-100-refused-key", expect_refused(pipelined=False), no_continue=True),
    Mutation("expect-100-refused-key-pipelined", expect_refused(pipelined=True), no_continue=True),
    Mutation("spoofed-identity-public", spoofed_identity("/public", key=False)),
    Mutation("spoofed-identity-keyed", spoofed_identity("/admin/me", key=True)),
    Mutation("pipelined-control", pipelined_control, sent=2),
]  # fmt: skip


# -- the scan ------------------------------------------------------------------------------


@dataclass
class Scan:
    gw: GatewayProcess
    upstream: RawUpstream
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def scan(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scan]:
    tmp: Path = tmp_path_factory.mktemp("smuggling")
    prefix = f"gwtest:{uuid.uuid4().hex[:12]}:"
    with RawUpstream() as upstream:
        port, admin_port = free_port(), free_port()
        data = {
            "server": {"host": "127.0.0.1", "port": port, "header_read_timeout": "2s"},
            "admin": {"host": "127.0.0.1", "port": admin_port},
            "redis": {"url": redis_url, "key_prefix": prefix},
            "routes": [
                {"name": "public", "match": "/public", "upstream": upstream.url, "auth": "none"},
                {"name": "admin", "match": "/admin", "upstream": upstream.url, "auth": "required"},
            ],
        }
        path = write_config(tmp / "gw.yaml", data)
        key_id, secret = asyncio.run(_make_key(redis_url, parse_config(data)))
        gw = GatewayProcess(path, port, admin_port, tmp / "gw.log").start()
        try:
            yield Scan(gw, upstream, key_id, secret)
        finally:
            gw.stop()
            asyncio.run(drop_prefix(redis_url, prefix))


async def _make_key(redis_url: str, config: Any) -> tuple[str, str]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        service = service_for(client, config)
        account = (await service.create_account(name="Smuggling", email=None, plan="default")).id
        record, secret = await service.create_key(CLI, account, {"name": "scanner"})
        return record.id, secret
    finally:
        await client.aclose()


def check_answers(
    who: str,
    answers: list[Answer],
    own: list[str],
    problems: list[str],
    *,
    no_continue: bool = False,
) -> list[Answer]:
    """Each answer a 2xx answering one of ``own`` or a 4xx in the JSON envelope; the final ones."""
    final = []
    for answer in answers:
        if answer.status < 200:
            if answer.status != 100 or no_continue:
                problems.append(f"{who}: interim answer {answer.status}")
            continue
        final.append(answer)
        if 200 <= answer.status < 300:
            echo = answer.header("x-echo-request-id")
            if echo not in own:
                problems.append(
                    f"{who}: got the upstream's answer to {echo!r}, not to its own {own}"
                )
        elif 400 <= answer.status < 500:
            try:
                envelope = json.loads(answer.body)
                error = envelope["error"]
                assert isinstance(error["code"], str) and isinstance(error["type"], str)
                assert envelope["meta"]["request_id"] == answer.header("x-request-id")
            except (ValueError, KeyError, TypeError, AssertionError):
                problems.append(f"{who}: {answer.status} not in the JSON error envelope: {answer}")
        else:
            problems.append(f"{who}: status {answer.status}: {answer}")
    return final


def check_upstream(scan: Scan, allowed: set[str], problems: list[str]) -> None:
    """Only whole requests a client sent, framed once, with no identity but the gateway's."""
    seen: dict[str, int] = {}
    for r in scan.upstream.received:
        for problem in r.problems:
            problems.append(f"upstream: {problem} in {r}")
        rid = r.request_id
        if rid not in allowed:
            problems.append(f"upstream: a request no client sent whole (X-Request-Id {rid!r}): {r}")
        elif seen.get(rid):
            problems.append(f"upstream: {rid} received twice")
        if rid:
            seen[rid] = seen.get(rid, 0) + 1
        if "smuggled" in r.target:
            problems.append(f"upstream: a request line from inside a body: {r}")
        gateway_named = [(n, v) for n, v in r.headers if _normal(n).startswith("x-gateway-")]
        for name, value in gateway_named:
            if name.lower() not in GATEWAY_HEADERS:
                problems.append(f"upstream: header {name!r}: {value!r} the gateway does not set")
        names = [n.lower() for n, _ in gateway_named]
        if len(names) != len(set(names)):
            problems.append(f"upstream: an X-Gateway-* header twice: {gateway_named}")
        for name, value in r.trailers:
            if _normal(name).startswith("x-gateway-") or _normal(name) in FRAMING_AND_HOP:
                problems.append(f"upstream: trailer {name!r}: {value!r} passed on")
        if r.target.startswith("/admin"):
            if r.values("x-gateway-key-id") != [scan.key_id]:
                problems.append(f"upstream: /admin without the valid key's identity: {r}")
        elif gateway_named:
            problems.append(
                f"upstream: X-Gateway-* headers on an auth: none route: {gateway_named}"
            )


def victim(scan: Scan, tag: str, problems: list[str]) -> list[str]:
    """A second client's ordinary keep-alive requests; each must get its own answer."""
    ids = []
    client = Client(scan.gw.port)
    try:
        for n in range(2):
            rid = f"victim-{tag}-{n}"
            ids.append(rid)
            client.send(
                f"GET /public/victim?n={n} HTTP/1.1\r\nHost: gw.test\r\nX-Request-Id: {rid}\r\n\r\n".encode()
            )
            client.read(n + 1, time.monotonic() + ANSWER_DEADLINE, 0.0)
            answers, error = client.answers()
            if error:
                problems.append(f"second client: {error}")
            if len(answers) != n + 1:
                problems.append(f"second client: {len(answers)} answers after request {n + 1}")
                break
            answer = answers[n]
            if answer.status != 200 or answer.header("x-echo-request-id") != rid:
                problems.append(
                    f"second client: request {rid} got {answer.status} answering "
                    f"{answer.header('x-echo-request-id')!r}: {answer}"
                )
        client.read(len(ids) + 1, time.monotonic() + 0.3, 0.3)
        extra = client.answers()[0][len(ids) :]
        if extra:
            problems.append(f"second client: answers it never asked for: {[str(a) for a in extra]}")
    finally:
        client.close()
    return ids


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_smuggles_nothing(scan: Scan, mutation: Mutation) -> None:
    scan.upstream.reset()  # no connection a previous mutation may have left out of step
    time.sleep(0.1)
    ctx = Ctx(scan.secret, f"{mutation.name}-{uuid.uuid4().hex[:6]}")
    steps = mutation.build(ctx)
    problems: list[str] = []

    client = Client(scan.gw.port)
    try:
        deadline = time.monotonic() + ANSWER_DEADLINE
        for i, data in enumerate(steps):
            if i:  # a client waiting for 100 Continue (or an answer) before its body
                client.read(1, min(deadline, time.monotonic() + 1.0), 0.0)
            client.send(data)
        client.read(mutation.sent, deadline, IDLE_AFTER_ANSWERS)
        answers, error = client.answers()
        if error:
            problems.append(f"client: {error}")
        final = check_answers(
            "client", answers, ctx.outer, problems, no_continue=mutation.no_continue
        )
        if len(final) > mutation.sent:
            problems.append(
                f"client: {len(final)} answers to {mutation.sent} request(s): {[str(a) for a in final]}"
            )
        if not final and not client.closed:
            problems.append(
                f"client: no answer within {ANSWER_DEADLINE}s and the connection left open"
            )
    finally:
        client.close()

    victim_ids = victim(scan, ctx.tag, problems)
    time.sleep(0.1)  # anything still on its way to the upstream
    scan.upstream.close_connections()
    check_upstream(scan, {*ctx.outer, *victim_ids}, problems)
    for r in scan.upstream.received:
        if r.request_id in ctx.outer and not any(
            a.header("x-echo-request-id") == r.request_id for a in final
        ):
            problems.append(
                f"upstream answered {r.request_id} but its sender never got that answer"
            )

    sent = b"".join(steps)
    assert not problems, "\n".join(
        [
            *problems,
            f"sent: {sent!r}",
            f"client got: {[str(a) for a in answers]} (closed: {client.closed})",
            "upstream received:",
            *(f"  {r}" for r in scan.upstream.received),
        ]
    )

"""The upstream leg: a keep-alive pool of HTTP/1.1 connections, parsed with httptools.

Most of a plain aiohttp proxy's time goes to aiohttp's client (PERF.md), so
the gateway speaks to upstreams over plain asyncio connections and parses the
answers with httptools (llhttp, the parser uvicorn and Node.js use) through
its public callback API. llhttp is strict: a response with both
``Content-Length`` and ``Transfer-Encoding``, a bad chunk size or a bare LF
is an error, never a guess.

One exchange at a time per connection, and a connection is reused only when
the exchange ended cleanly: the whole request written, the whole response
read, keep-alive allowed by both sides, and not one byte more received. A
byte arriving while no exchange is open closes the connection, so an answer
can only ever go to the request it answers.

Backpressure both ways: the request body is written with the connection's
``pause_writing``/``resume_writing`` flow control; the response body is
buffered up to :data:`HIGH_WATER` bytes, then the socket stops being read
until the client has taken it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # response bytes buffered before reading from the upstream pauses
LOW_WATER = 64 * 1024
CONNECT_TIMEOUT = 10.0  # at most; the route's timeout bounds it too
KEEPALIVE_TIMEOUT = 30.0  # an idle upstream connection older than this is closed


class UpstreamError(Exception):
    """The exchange failed; ``kind`` says how (``refused``, ``reset``, ``timeout``, ``error``)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Origin:
    """One upstream ``scheme://host:port``: how to reach it, its Host header, its idle connections."""

    __slots__ = ("host", "port", "tls", "host_header", "idle")

    def __init__(self, origin: str):
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) upstream: {origin!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if self.port == default else f"{host}:{self.port}").encode()
        self.idle: list[tuple[UpstreamConnection, float]] = []


class Response:
    """An upstream answer: status, reason, raw headers and the body as it arrives."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "has_length",
        "chunked",
        "_chunks",
        "_buffered",
        "_waiter",
        "complete",
        "error",
        "_connection",
    )

    def __init__(self, connection: UpstreamConnection, status: int, reason: bytes, headers: list):
        self.status = status
        self.reason = reason
        self.headers: list[tuple[bytes, bytes]] = headers
        self.has_length = False
        self.chunked = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.error: UpstreamError | None = None
        self._connection = connection

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def finish(self, error: UpstreamError | None = None) -> None:
        if error is not None and self.error is None and not self.complete:
            self.error = error
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_all(self) -> bytes | None:
        """The whole body if it has all arrived (the usual case for a small answer)."""
        if not self.complete or self.error is not None:
            return None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data

    async def next_chunk(self) -> bytes:
        """The next bytes of the body; ``b""`` at its end. Raises :class:`UpstreamError` if cut."""
        while True:
            chunks = self._chunks
            if chunks:
                if len(chunks) > 1:
                    data = b"".join(chunks)
                    chunks.clear()
                else:
                    data = chunks.popleft()
                buffered = self._buffered
                self._buffered = 0
                if buffered > LOW_WATER:
                    self._connection.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, carrying one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin):
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reusable = False
        # the exchange in hand
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._head_only = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._sent_any = False  # any byte received for this exchange
        self._writable: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self.deadline = 0.0
        # the loop it runs on, asked once: on Python 3.11 each get_running_loop() is a getpid()
        self.loop = asyncio.get_running_loop()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._response is None:
            self.close()  # nobody asked: never let it reach a later exchange
            return
        self._sent_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("error", "the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("error", f"malformed response: {exc}"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.reusable = False
        response = self._response
        if response is not None and not response.complete:
            if not response.has_length and not response.chunked:
                response.finish()  # a body delimited by the end of the connection
            else:
                response.finish(UpstreamError("reset", "connection lost mid-body"))
        elif self._head is not None and not self._head.done():
            kind = "reset" if not self._sent_any else "error"
            self._head.set_exception(UpstreamError(kind, "connection closed before the answer"))
        self._release_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_writer()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._status = status
        if 100 <= status < 200:
            return  # an interim answer: not passed on (the gateway sent its own 100 Continue)
        response = Response(self, status, self._reason, self._headers)
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                response.has_length = True
            elif lower == b"transfer-encoding":
                response.chunked = value.strip().lower().endswith(b"chunked")
        if not self.parser.should_keep_alive():
            self.reusable = False
        self._response = response
        head = self._head
        self._head = None
        self.pool.deadlines.discard(self)
        if self._head_only or status in (204, 304):
            # No body follows. (llhttp does not know the request was a HEAD: the
            # connection is not reused after one, so its parser is never confused.)
            if self._head_only:
                self.reusable = False
            response.complete = True
            self._response = None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None:
            response.feed(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            return
        response = self._response
        self._response = None
        if response is not None:
            response.finish()

    # -- flow control

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self.transport is None:
            raise UpstreamError("reset", "connection lost while sending the body")
        if self._write_paused:
            self._writable = self.loop.create_future()
            await self._writable
            if self.transport is None:
                raise UpstreamError("reset", "connection lost while sending the body")

    def _release_writer(self) -> None:
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._writable = None

    # -- one exchange

    def begin(self, head: bytes, head_only: bool, deadline: float) -> asyncio.Future[Response]:
        """Write a request head; the future of the response head."""
        transport = self.transport
        if transport is None:
            raise UpstreamError("reset", "connection closed")
        self._head = self.loop.create_future()
        self._head_only = head_only
        self._sent_any = False
        self.deadline = deadline
        self.pool.deadlines.add(self)
        transport.write(head)
        return self._head

    def timed_out(self) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(UpstreamError("timeout"))
        self.reusable = False

    def _fail(self, error: UpstreamError) -> None:
        self.reusable = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._response is not None:
            self._response.finish(error)
        self.close()

    def abandon(self, error: UpstreamError) -> None:
        """The client side gave up (stalled body, gone away): fail what waits and close."""
        self._fail(error)

    def finished(self, response: Response | None) -> None:
        """The exchange is over: back to the pool if it ended cleanly, else closed."""
        self.pool.deadlines.discard(self)
        clean = (
            self.reusable
            and response is not None
            and response.complete
            and response.error is None
            and self._response is None
            and self._head is None
        )
        self._head = None
        self._response = None
        if clean:
            self.pool.release(self)
        else:
            self.close()

    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Deadlines:
    """Response-head deadlines of the exchanges in flight, with one timer for all.

    A timer per request costs more than the request's own bookkeeping; here the
    timer moves only when a deadline earlier than every other arrives (rare: a
    route's timeout is the same for each of its requests).
    """

    def __init__(self) -> None:
        self._due: set[UpstreamConnection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def add(self, connection: UpstreamConnection) -> None:
        self._due.add(connection)
        if connection.deadline < self._at:
            self._arm(connection.deadline)

    def discard(self, connection: UpstreamConnection) -> None:
        self._due.discard(connection)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._at = float("inf")
        now = asyncio.get_running_loop().time() + 0.001  # timers may fire a hair early
        expired = [c for c in self._due if c.deadline <= now]
        for connection in expired:
            self._due.discard(connection)
            connection.timed_out()
        if self._due:
            self._arm(min(c.deadline for c in self._due))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()


class UpstreamPool:
    """Keep-alive connections per upstream origin, most recently used first."""

    def __init__(self, keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self._origins: dict[str, Origin] = {}
        self._keepalive = keepalive_timeout
        self._ssl: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self.deadlines = Deadlines()
        self.closed = False

    def origin(self, origin: str) -> Origin:
        found = self._origins.get(origin)
        if found is None:
            found = self._origins[origin] = Origin(origin)
        return found

    def take(self, origin: Origin) -> UpstreamConnection | None:
        """An idle connection to ``origin`` still open, if there is one."""
        idle = origin.idle
        while idle:
            connection, _ = idle.pop()
            if connection.reusable and connection.is_open():
                return connection
            connection.close()
        return None

    async def connect(self, origin: Origin, timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        if origin.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self, origin)  # noqa: E731
        try:
            async with asyncio.timeout(min(timeout, CONNECT_TIMEOUT)):
                _, connection = await loop.create_connection(
                    factory,
                    origin.host,
                    origin.port,
                    ssl=self._ssl if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            raise UpstreamError("timeout", "connecting") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise UpstreamError("refused", str(exc)) from exc
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        if self.closed or not connection.is_open():
            connection.close()
            return
        connection.origin.idle.append((connection, time.monotonic()))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        oldest = time.monotonic() - self._keepalive
        waiting = False
        for origin in self._origins.values():
            keep = []
            for connection, since in origin.idle:
                if since > oldest and connection.is_open():
                    keep.append((connection, since))
                else:
                    connection.close()
            origin.idle[:] = keep
            waiting = waiting or bool(keep)
        if waiting and not self.closed:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def close(self) -> None:
        self.closed = True
        self.deadlines.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for origin in self._origins.values():
            for connection, _ in origin.idle:
                connection.close()
            origin.idle.clear()

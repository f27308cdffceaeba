"""Forwarding one request to its upstream and streaming the answer back (SPEC §5).

The upstream side does not go through ``aiohttp.ClientSession.request``: most
of a plain aiohttp proxy's time is spent building the client's request and
response objects (see PERF.md and bench/README.md). Instead each worker keeps
its own keep-alive pool of upstream connections, writes the request head
itself and reads the answer with aiohttp's own client protocol
(``ResponseHandler``, the C HTTP parser), so parsing stays exactly as strict as
aiohttp's: chunked and EOF-delimited bodies, malformed answers refused, flow
control both ways. The ``ClientSession`` returned by :func:`new_session` owns
the pool and closes it with itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import time
import weakref
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..denials import Denial
from .headers import downstream_response_headers

log = logging.getLogger("gateway.proxy")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SMALL_BODY = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})
CONNECT_TIMEOUT = 10.0  # at most; the route's timeout bounds it too
KEEPALIVE_TIMEOUT = 30.0  # an idle upstream connection older than this is closed
READ_BUFSIZE = 2**16
MAX_LINE_SIZE = 8190  # what aiohttp's client accepts by default
MAX_FIELD_SIZE = 8190


class PayloadTooLarge(Exception):
    """A chunked request body grew past ``server.max_body_bytes``."""


class UpstreamFailure(Exception):
    """The upstream could not answer; ``denial`` says how to tell the client."""

    def __init__(self, denial: Denial, kind: str):
        super().__init__(kind)
        self.denial = denial
        self.kind = kind


class UpstreamBrokeOff(Exception):
    """The upstream broke off a response already being streamed; the client connection
    has been closed, so a cut body is never presented as complete. ``response`` is what
    the client had been sent."""

    def __init__(self, response: web.StreamResponse):
        super().__init__("upstream broke off the response")
        self.response = response


class _HeaderTimeout(Exception):
    """The route's timeout passed before the upstream's response headers."""


class _ConnectFailed(Exception):
    """No connection to the upstream could be opened (refused, DNS, TLS)."""


# -- the connection pool ---------------------------------------------------------


class _UpstreamProtocol(ResponseHandler):
    """aiohttp's client protocol, its response parser kept from one exchange to the next."""

    head_only: bool | None = None  # what the parser was last set up for (None: not yet)

    def expect_response(self, head_only: bool) -> None:
        """Ready the parser for the answer to a request (``head_only``: to a HEAD)."""
        if self.head_only is head_only and self._parser is not None:
            return  # the parser of the last exchange, at the start of a message again
        self.set_response_params(
            skip_payload=head_only,
            read_until_eof=True,
            auto_decompress=False,
            read_bufsize=READ_BUFSIZE,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
        )
        self.head_only = head_only


class _Deadlines:
    """Route timeouts of the exchanges in flight, with one timer for all of them.

    A timer per request costs more than the request's own bookkeeping; here
    the timer is moved only when a deadline earlier than every other arrives
    (rare: a route's timeout is the same for each of its requests).
    """

    def __init__(self) -> None:
        self._due: dict[_UpstreamProtocol, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def add(self, protocol: _UpstreamProtocol, deadline: float) -> None:
        self._due[protocol] = deadline
        if deadline < self._at:
            self._arm(deadline)

    def discard(self, protocol: _UpstreamProtocol) -> None:
        self._due.pop(protocol, None)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._at = float("inf")
        now = asyncio.get_running_loop().time() + 0.001  # timers may fire a hair early
        expired = [protocol for protocol, deadline in self._due.items() if deadline <= now]
        for protocol in expired:
            del self._due[protocol]
            protocol.set_exception(_HeaderTimeout())
        if self._due:
            self._arm(min(self._due.values()))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()


class _Origin:
    """One upstream ``scheme://host:port``: how to connect, its Host header, its idle connections."""

    __slots__ = ("host", "port", "ssl", "host_header", "authorization", "idle")

    def __init__(self, origin: str):
        url = URL(origin)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) upstream: {origin!r}")
        self.host = url.raw_host
        self.port = url.port
        self.ssl = url.scheme == "https"
        self.host_header = url.host_port_subcomponent
        self.authorization = (
            aiohttp.BasicAuth(url.user or "", url.password or "").encode() if url.user else None
        )
        self.idle: list[tuple[_UpstreamProtocol, float]] = []


class UpstreamPool:
    """Keep-alive connections per upstream origin, most recently used first."""

    def __init__(self, keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self._origins: dict[str, _Origin] = {}
        self._keepalive = keepalive_timeout
        self._ssl: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self.deadlines = _Deadlines()
        self.closed = False

    def origin(self, origin: str) -> _Origin:
        found = self._origins.get(origin)
        if found is None:
            found = self._origins[origin] = _Origin(origin)
        return found

    def take(self, origin: _Origin) -> _UpstreamProtocol | None:
        """An idle connection to ``origin`` still open, if there is one."""
        idle = origin.idle
        while idle:
            protocol, _ = idle.pop()
            if protocol.is_connected() and not protocol.should_close:
                return protocol
            protocol.close()
        return None

    async def connect(self, origin: _Origin, timeout: float) -> _UpstreamProtocol:
        """A new connection to ``origin``."""
        loop = asyncio.get_running_loop()
        if origin.ssl and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(min(timeout, CONNECT_TIMEOUT)):
                _, protocol = await loop.create_connection(
                    lambda: _UpstreamProtocol(loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl if origin.ssl else None,
                    server_hostname=origin.host if origin.ssl else None,
                )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise _ConnectFailed(str(exc)) from exc
        return protocol

    def release(self, origin: _Origin, protocol: _UpstreamProtocol) -> None:
        if self.closed or protocol.should_close or not protocol.is_connected():
            protocol.close()
            return
        now = time.monotonic()
        origin.idle.append((protocol, now))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        deadline = time.monotonic() - self._keepalive
        waiting = False
        for origin in self._origins.values():
            keep = []
            for protocol, since in origin.idle:
                if since > deadline and protocol.is_connected():
                    keep.append((protocol, since))
                else:
                    protocol.close()
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
            for protocol, _ in origin.idle:
                protocol.close()
            origin.idle.clear()


class _ProxyConnector(aiohttp.TCPConnector):
    """aiohttp's connector for anything else that uses the session, plus the proxy's pool."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.upstreams = UpstreamPool()

    def close(self, *args, **kwargs):
        self.upstreams.close()
        return super().close(*args, **kwargs)


_foreign_pools: weakref.WeakKeyDictionary[aiohttp.ClientSession, UpstreamPool] = (
    weakref.WeakKeyDictionary()
)


def _pool_of(session: aiohttp.ClientSession) -> UpstreamPool:
    connector = session.connector
    if isinstance(connector, _ProxyConnector):
        return connector.upstreams
    # A session made elsewhere cannot close a pool of ours: connections are not kept.
    pool = _foreign_pools.get(session)
    if pool is None:
        pool = _foreign_pools[session] = UpstreamPool()
        pool.closed = True
    return pool


def new_session() -> aiohttp.ClientSession:
    """One pooled client per worker: keep-alive, no redirects, bodies passed as they are."""
    connector = _ProxyConnector(
        limit=0,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=CONNECT_TIMEOUT, sock_read=None
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        requote_redirect_url=False,
    )


# -- one exchange ------------------------------------------------------------------


def _request_head(
    method: str,
    target: str,
    origin: _Origin,
    headers: CIMultiDict[str],
    chunked: bool,
    empty_body: bool,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if origin.authorization is not None and "Authorization" not in headers:
        lines.append(f"Authorization: {origin.authorization}\r\n")
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif empty_body and method not in _BODYLESS_METHODS and "Content-Length" not in headers:
        lines.append("Content-Length: 0\r\n")  # as aiohttp's client: a POST says it is empty
    lines.append("\r\n")
    head = "".join(lines)
    # Every line ends in exactly one CRLF: no value can smuggle a header or a request.
    expected = len(lines) + 1
    if head.count("\n") != expected or head.count("\r") != expected:
        raise ValueError("newline or carriage return in the request line or a header")
    return head.encode("utf-8", "surrogateescape")


async def _bounded(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge()
        yield chunk


async def _send_body(protocol: ResponseHandler, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue
        transport = protocol.transport
        if transport is None:
            raise ClientConnectionResetError("upstream connection lost while sending the body")
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        if protocol.writing_paused:
            await protocol._drain_helper()
    if chunked:
        transport = protocol.transport
        if transport is None:
            raise ClientConnectionResetError("upstream connection lost while sending the body")
        transport.write(b"0\r\n\r\n")


def _body_failed(protocol: ResponseHandler, task: asyncio.Task[None]) -> None:
    """Sending the body failed: the exchange fails with it and the connection goes."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    if not isinstance(exc, PayloadTooLarge):
        wrapped = aiohttp.ClientPayloadError(f"request body not sent: {exc!r}")
        wrapped.__cause__ = exc
        exc = wrapped
    # Wakes a wait for the response head; a response already under way is left to finish.
    # Either way the connection is not reused (set_exception marks it should_close).
    protocol.set_exception(exc)


class _Exchange:
    """One request on one upstream connection, until its response body is read."""

    __slots__ = ("pool", "origin", "protocol", "writer", "reusable")

    def __init__(self, pool: UpstreamPool, origin: _Origin, protocol: _UpstreamProtocol):
        self.pool = pool
        self.origin = origin
        self.protocol = protocol
        self.writer: asyncio.Task[None] | None = None
        self.reusable = False

    async def send(
        self,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        deadline: float,
    ) -> tuple[RawResponseMessage, aiohttp.StreamReader]:
        """Write the request (the body in the background); the response head and payload."""
        protocol = self.protocol
        deadlines = self.pool.deadlines
        try:
            protocol.expect_response(method == "HEAD")
            deadlines.add(protocol, deadline)
            transport = protocol.transport
            if transport is None:
                raise aiohttp.ServerDisconnectedError()
            transport.write(head)
            if body is not None:
                loop = asyncio.get_running_loop()
                self.writer = loop.create_task(_send_body(protocol, body, chunked))
                self.writer.add_done_callback(lambda task: _body_failed(protocol, task))
            while True:
                message, payload = await protocol.read()
                code = message.code
                if code < 100 or code > 199 or code == 101:
                    break  # 1xx interim answers are not passed on (as aiohttp's client does)
            deadlines.discard(protocol)
            return message, payload
        except BaseException:
            deadlines.discard(protocol)
            self.finish()  # never reused: reusable is still False
            raise

    def finish(self) -> None:
        """Back to the pool when the whole exchange is over, else closed."""
        writer = self.writer
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered before reading the whole body
            self.reusable = False
        if self.reusable:
            self.pool.release(self.origin, self.protocol)
        else:
            self.protocol.close()


async def forward(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    *,
    url: str,
    headers: CIMultiDict[str],
    timeout: float,
    max_body: int,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send ``request`` to ``url`` and stream the answer to the client.

    Raises :class:`UpstreamFailure` or :class:`PayloadTooLarge` before anything
    was sent to the client; once streaming has begun a failure closes the
    client connection, so a cut body is never presented as complete.
    """
    method = request.method
    pool = _pool_of(session)
    slash = url.find("/", url.find("://") + 3)
    if slash < 0:
        origin_text, target = url, "/"
    else:
        origin_text, target = url[:slash], url[slash:]
    origin = pool.origin(origin_text)
    body = None
    chunked = False
    if request.body_exists:
        if request.content_length is not None:
            body = request.content.iter_any()
        else:
            chunked = True
            body = _bounded(request.content, max_body)
    try:
        head = _request_head(method, target, origin, headers, chunked, body is None)
    except ValueError:
        raise UpstreamFailure(Denial("upstream_unavailable"), "error") from None
    attempts = 2 if method in IDEMPOTENT and body is None else 1
    loop = asyncio.get_running_loop()
    for attempt in range(attempts):
        retry = attempt + 1 < attempts
        reused = False
        try:
            deadline = loop.time() + timeout
            protocol = pool.take(origin)
            if protocol is not None:
                reused = True
            else:
                protocol = await pool.connect(origin, timeout)
            exchange = _Exchange(pool, origin, protocol)
            message, payload = await exchange.send(method, head, body, chunked, deadline)
            break
        except PayloadTooLarge:
            raise
        except (_HeaderTimeout, TimeoutError):
            raise UpstreamFailure(Denial("upstream_timeout"), "timeout") from None
        except _ConnectFailed:
            raise UpstreamFailure(Denial("upstream_unavailable"), "refused") from None
        except aiohttp.ServerDisconnectedError:
            if retry:
                continue  # a pooled connection the upstream had just closed
            raise UpstreamFailure(Denial("upstream_unavailable"), "reset") from None
        except (aiohttp.ClientError, OSError, HttpProcessingError) as exc:
            if isinstance(exc.__cause__, PayloadTooLarge):
                raise PayloadTooLarge() from None
            if retry and reused and getattr(exc, "errno", None) in _RESET_ERRNOS:
                continue  # the same, seen as a reset
            raise UpstreamFailure(Denial("upstream_unavailable"), "error") from None
    try:
        return await _respond(request, exchange, message, payload, extra_headers)
    finally:
        exchange.finish()


_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE})


async def _respond(
    request: web.BaseRequest,
    exchange: _Exchange,
    message: RawResponseMessage,
    payload: aiohttp.StreamReader,
    extra: dict[str, str] | None,
) -> web.StreamResponse:
    status = message.code
    upstream_headers: CIMultiDictProxy[str] = message.headers
    length_text = upstream_headers.get("Content-Length")
    length = int(length_text) if length_text is not None else None
    bodiless = request.method == "HEAD" or status in NO_BODY_STATUSES or status < 200
    if (
        not bodiless
        and length is not None
        and length <= SMALL_BODY
        and "Transfer-Encoding" not in upstream_headers
    ):
        try:
            # Usually the whole body came with the head: take it without waiting.
            data = payload.read_nowait() if payload.is_eof() else await payload.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(Denial("upstream_unavailable"), "reset") from exc
        exchange.reusable = payload.is_eof()
        headers = downstream_response_headers(upstream_headers, keep_length=False)
        if extra:
            headers.update(extra)
        return web.Response(status=status, reason=message.reason, body=data, headers=headers)
    response = web.StreamResponse(status=status, reason=message.reason)
    response.headers.extend(downstream_response_headers(upstream_headers, keep_length=True))
    if extra:
        response.headers.update(extra)
    if length is None and not bodiless:
        response.enable_chunked_encoding()
    await response.prepare(request)
    if bodiless:
        exchange.reusable = True
        await response.write_eof()
        return response
    try:
        async for chunk in payload.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        if request.transport is not None:
            request.transport.abort()
        raise UpstreamBrokeOff(response) from exc
    exchange.reusable = payload.is_eof()
    await response.write_eof()
    return response

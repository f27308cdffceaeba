"""Forwarding one request to its upstream and streaming the answer back (SPEC §5).

The request head is written by the gateway from the client's raw headers
(:func:`.headers.upstream_head`) with the gateway's own framing: a
``Content-Length`` for a body of known length, else chunked encoding of the
bytes actually sent. The body streams as it arrives; a client whose body
stalls for ``body_idle_timeout`` gets 408 and the upstream exchange is
abandoned. The answer streams back as it arrives, each chunk as soon as it
comes; a body that all came with the head goes back in one write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ..compat.aiohttp import GatewayConnection, VerbatimBody, VerbatimResponse
from ..denials import Denial
from .headers import response_headers, varies_on
from .streams import OpenStreams, cut_code
from .upstream import Origin, Response, UpstreamConnection, UpstreamError, UpstreamPool

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "DELETE"})
NO_BODY_STATUSES = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class PayloadTooLarge(Exception):
    """A chunked request body grew past ``server.max_body_bytes``."""


class BodyStalled(Exception):
    """The client sent no body byte for ``server.body_idle_timeout``."""


class ClientGone(Exception):
    """The client's connection closed while its body was being read."""


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


class StreamCut(Exception):
    """A streamed response was cut by the gateway (its key was revoked or expired, or
    the gateway is shutting down), not by the upstream; ``code`` names why for the
    access log. The client connection has been closed."""

    def __init__(self, response: web.StreamResponse, code: str):
        super().__init__(code)
        self.response = response
        self.code = code


_UNAVAILABLE = Denial("upstream_unavailable")
_TIMEOUT = Denial("upstream_timeout")


@dataclass(slots=True)
class Exchange:
    """What :func:`forward` needs besides the request: all decided by the caller."""

    origin: Origin
    head: bytes  # the request head, framing included
    body: str  # "none", "length" or "chunked"
    timeout: float  # to the response head
    max_body: int
    body_idle_timeout: float
    extra_headers: dict[str, str] | None  # the gateway's own, replacing the upstream's
    replaced: frozenset[str]  # their names, lower case
    strip_cors: bool  # the route answers CORS itself: the upstream's Access-Control-* go
    relocate: Callable[[bytes], bytes] | None  # Location rewriting
    streams: OpenStreams | None = None  # where a streamed answer registers, to be cut
    key_hash: str | None = None  # the caller's key, whose revocation cuts the stream
    key_expires_at: float | None = None
    # Set by forward(): seconds from sending upstream to its response head (or failure),
    # and perf_counter() when the response head went to the client, if it was streamed.
    upstream_seconds: float | None = None
    headers_at: float | None = None
    body_sent: int = 0  # request body bytes forwarded (a chunked body: counted)
    body_relayed: int | None = None  # response body bytes relayed, for a streamed answer


async def forward(
    request: web.BaseRequest,
    connection: GatewayConnection | None,
    pool: UpstreamPool,
    exchange: Exchange,
) -> web.StreamResponse:
    """Send ``request`` upstream as ``exchange`` says and stream the answer to the client.

    Raises :class:`UpstreamFailure`, :class:`PayloadTooLarge`,
    :class:`BodyStalled` or :class:`ClientGone` before anything was sent to the
    client; once streaming has begun a failure closes the client connection, so
    a cut body is never presented as complete.
    """
    method = request.method
    head = exchange.head
    body_kind = exchange.body
    first_body = b""
    if body_kind != "none":
        content = request.content
        if body_kind == "length" and content.is_eof():
            first_body = content.read_nowait()  # a small body that came with the head
            body_kind = "none"
            if connection is not None:
                connection.body_read()
    elif connection is not None:
        connection.body_read()
    retries = 1 if method in IDEMPOTENT and body_kind == "none" else 0
    sent = time.perf_counter()
    while True:
        upstream = pool.take(exchange.origin)
        reused = upstream is not None
        try:
            if upstream is None:
                upstream = await pool.connect(exchange.origin, exchange.timeout)
            loop = upstream.loop
            waiting = upstream.begin(
                head + first_body if first_body else head,
                method == "HEAD",
                loop.time() + exchange.timeout,
            )
        except UpstreamError as error:
            exchange.upstream_seconds = time.perf_counter() - sent
            raise _failure(error) from None
        writer: asyncio.Task[None] | None = None
        if body_kind != "none":
            writer = loop.create_task(
                _send_body(request, connection, upstream, exchange, body_kind == "chunked")
            )
            writer.add_done_callback(lambda task, up=upstream: _writer_done(task, up))
        try:
            response = await waiting
        except UpstreamError as error:
            upstream.finished(None)
            if writer is not None:
                _raise_client_side(writer)
            if error.kind == "reset" and retries and reused:
                retries -= 1
                continue  # a pooled connection the upstream had just closed
            exchange.upstream_seconds = time.perf_counter() - sent
            raise _failure(error) from None
        except BaseException:
            upstream.finished(None)
            if writer is not None:
                writer.cancel()
            raise
        break
    exchange.upstream_seconds = time.perf_counter() - sent
    try:
        return await _respond(request, response, exchange, upstream)
    finally:
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered before taking the whole body
            upstream.reusable = False
        upstream.finished(response)


def _failure(error: UpstreamError) -> UpstreamFailure:
    if error.kind == "timeout":
        return UpstreamFailure(_TIMEOUT, "timeout")
    return UpstreamFailure(_UNAVAILABLE, error.kind)


def _raise_client_side(writer: asyncio.Task[None]) -> None:
    """If the exchange failed because of the client's body, say that instead."""
    if writer.done() and not writer.cancelled():
        exc = writer.exception()
        if isinstance(exc, PayloadTooLarge | BodyStalled | ClientGone):
            raise exc
    else:
        writer.cancel()


def _writer_done(task: asyncio.Task[None], upstream: UpstreamConnection) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        upstream.abandon(UpstreamError("error", f"request body not sent: {exc!r}"))


async def _send_body(
    request: web.BaseRequest,
    connection: GatewayConnection | None,
    upstream: UpstreamConnection,
    exchange: Exchange,
    chunked: bool,
) -> None:
    content = request.content
    idle = exchange.body_idle_timeout
    limit = exchange.max_body
    seen = 0
    while True:
        if content.is_eof() and not content.at_eof():
            chunk = content.read_nowait()
        else:
            try:
                async with asyncio.timeout(idle if idle > 0 else None):
                    chunk = await content.readany()
            except TimeoutError:
                raise BodyStalled() from None
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                raise ClientGone() from exc
            except Exception as exc:  # aiohttp's payload errors: the client broke off
                raise ClientGone() from exc
        if not chunk:
            if content.at_eof():
                break
            continue
        seen += len(chunk)
        if chunked and seen > limit:
            raise PayloadTooLarge()
        transport = upstream.transport
        if transport is None:
            raise UpstreamError("reset", "connection lost while sending the body")
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        await upstream.drain()
    exchange.body_sent = seen
    if connection is not None:
        connection.body_read()
    if chunked:
        transport = upstream.transport
        if transport is None:
            raise UpstreamError("reset", "connection lost while sending the body")
        transport.write(b"0\r\n\r\n")


class _StreamCut:
    """A streamed answer in flight: cut by closing both connections (the key was revoked)."""

    __slots__ = ("request", "upstream", "why")

    def __init__(self, request: web.BaseRequest, upstream: UpstreamConnection):
        self.request = request
        self.upstream = upstream
        self.why: str | None = None  # set once cut: the access log's code

    def cut(self, code: int, reason: str) -> None:
        self.why = cut_code(reason)
        self.upstream.abandon(UpstreamError("error", reason))
        if self.request.transport is not None:
            self.request.transport.abort()


async def _respond(
    request: web.BaseRequest, response: Response, exchange: Exchange, upstream: UpstreamConnection
) -> web.StreamResponse:
    status = response.status
    headers = response_headers(
        response.headers,
        replaced=exchange.replaced,
        strip_cors=exchange.strip_cors,
        relocate=exchange.relocate,
    )
    extra = exchange.extra_headers
    if extra:
        for name, value in extra.items():
            if name != "Vary" or not varies_on(headers, value):
                headers.append((name, value))  # (Vary: Origin once, beside the upstream's)
    reason = response.reason.decode("latin-1") or None
    bodiless = request.method == "HEAD" or status in NO_BODY_STATUSES
    if bodiless:
        for name, value in response.headers:
            if name.lower() == b"content-length":
                headers.append(("Content-Length", value.decode("latin-1")))
                break
        answer = VerbatimResponse(status=status, reason=reason, headers=headers)
        exchange.headers_at = time.perf_counter()
        await answer.prepare(request)
        await answer.write_eof()
        return answer
    whole = response.take_all()
    if whole is not None:
        return VerbatimBody(status=status, reason=reason, body=whole, headers=headers)
    answer = VerbatimResponse(status=status, reason=reason, headers=headers)
    if response.has_length:
        for name, value in response.headers:
            if name.lower() == b"content-length":
                answer.content_length = int(value)
                break
    exchange.headers_at = time.perf_counter()
    await answer.prepare(request)
    streams = exchange.streams
    handle = _StreamCut(request, upstream)
    if streams is not None:
        streams.add(handle, exchange.key_hash, exchange.key_expires_at)
    relayed = 0
    try:
        while True:
            chunk = await response.next_chunk()
            if not chunk:
                break
            relayed += len(chunk)
            exchange.body_relayed = relayed
            await answer.write(chunk)
    except UpstreamError as exc:
        if request.transport is not None:
            request.transport.abort()
        if handle.why is not None:
            raise StreamCut(answer, handle.why) from None
        raise UpstreamBrokeOff(answer) from exc
    except ConnectionError:
        upstream.reusable = False
        if handle.why is not None:
            raise StreamCut(answer, handle.why) from None
        return answer  # the client went away: nothing more to send
    finally:
        if streams is not None:
            streams.discard(handle, exchange.key_hash)
    await answer.write_eof()
    return answer

"""aiohttp below its documented API: the three seams the public port needs.

aiohttp stays the gateway's HTTP server, run as its documented low-level
``web.Server`` (a protocol factory for ``loop.create_server``) behind
``web.ServerRunner`` and ``web.TCPSite``. Three things it offers no public
hook for live here, and only here:

- :class:`GatewayConnection`, aiohttp's connection protocol
  (``web.RequestHandler``, built with its keyword arguments), adds a
  header-read timeout and drain bookkeeping by overriding the asyncio
  ``Protocol`` methods it implements, and answers the parser's own refusals
  (a request aiohttp cannot parse never reaches a handler) through the
  overridable ``handle_error``, reading the limit out of ``LineTooLong``.
- :class:`GatewayServer` is ``web.Server`` whose ``__call__`` builds a
  :class:`GatewayConnection` instead of a plain ``RequestHandler``.
- :class:`VerbatimResponse` is a ``web.StreamResponse`` that does not add the
  ``Content-Type`` and ``Server`` headers aiohttp sets by default when the
  upstream sent none (``StreamResponse._prepare_headers``).

``tests/test_compat_aiohttp.py`` checks each of these by name, and
``pyproject.toml`` caps aiohttp at the minor versions the suite has passed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, InvalidURLError, LineTooLong

__all__ = [
    "BadHttpMessage",
    "GatewayConnection",
    "GatewayServer",
    "InvalidURLError",
    "ParserRefusal",
    "VerbatimBody",
    "VerbatimResponse",
    "line_too_long_limit",
    "response_started",
]


class ParserRefusal(Protocol):
    """What the public port answers when aiohttp's parser refuses a request (or a handler fails)."""

    def __call__(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> web.StreamResponse | None: ...


def line_too_long_limit(exc: BaseException) -> int | None:
    """The limit a :class:`LineTooLong` was raised for (aiohttp passes it as the second argument)."""
    if isinstance(exc, LineTooLong) and len(exc.args) > 1 and isinstance(exc.args[1], int):
        return exc.args[1]
    return None


def response_started(request: web.BaseRequest) -> bool:
    """Whether any byte of a response to ``request`` has been written."""
    return request.writer.output_size > 0


class GatewayConnection(web.RequestHandler):
    """One client connection: aiohttp's protocol plus a header-read timeout and draining.

    The request handler tells the connection when a request begins
    (:meth:`request_began`), when its body has been read (:meth:`body_read`)
    and when it ends (:meth:`request_ended`); from that alone the connection
    knows since when bytes of a request head still incomplete have been
    arriving (:attr:`head_since`). The server's sweep closes a connection whose
    head is not complete within ``header_timeout()`` seconds of its first
    byte, so a slowloris client holds a socket for seconds, not forever.
    """

    def __init__(self, manager: GatewayServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._gateway = manager
        self.busy = False  # a request of this connection is being handled
        self.draining = False
        self._body_done = True
        self._pipelined = False  # bytes arrived after the body of the request in hand
        self.head_since: float | None = None  # when the current head's first byte came

    # -- what the request handler reports

    def request_began(self) -> None:
        self.busy = True
        self.head_since = None
        self._body_done = False
        self._pipelined = False

    def body_read(self) -> None:
        self._body_done = True

    def request_ended(self) -> None:
        self.busy = False
        if self._pipelined:  # possibly the start of the next head
            self.head_since = self._gateway.now()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.head_since = self._gateway.now()  # a connection that never sends counts too

    def data_received(self, data: bytes) -> None:
        if data:
            if not self.busy:
                if self.head_since is None:
                    self.head_since = self._gateway.now()
            elif self._body_done:
                self._pipelined = True
        super().data_received(data)

    def head_overdue(self, now: float, timeout: float) -> bool:
        since = self.head_since
        return since is not None and not self.busy and now - since > timeout

    # -- draining

    @property
    def idle(self) -> bool:
        """Waiting for a request that has not begun to arrive."""
        return not self.busy and self.head_since is None

    def begin_drain(self) -> None:
        """Close now if idle; else the request handler closes after the response in hand."""
        self.draining = True
        if self.idle:
            self.force_close()

    # -- the parser's refusals

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = self._gateway.refusal(request, status, exc)
        if response is None:
            return super().handle_error(request, status, exc, message)
        response.force_close()
        return response


SWEEP_INTERVAL = 0.5  # seconds between two looks for overdue request heads


class GatewayServer(web.Server):
    """``web.Server`` making :class:`GatewayConnection` connections.

    ``header_timeout`` is asked at each sweep (a reload may change it);
    ``refusal`` answers what aiohttp could not parse (or returns ``None`` for
    aiohttp's own answer). One timer for the whole server looks for request
    heads overdue, rather than a timer per request.
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        *,
        header_timeout: Callable[[], float],
        refusal: ParserRefusal,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        **options: Any,
    ):
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            **options,
        )
        self.header_timeout = header_timeout
        self.refusal = refusal
        self.options = options
        self.event_loop = asyncio.get_running_loop()
        self.now = self.event_loop.time
        self._sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> GatewayConnection:
        if self._sweep is None:
            self._sweep = self.event_loop.call_later(SWEEP_INTERVAL, self._sweep_heads)
        return GatewayConnection(self, loop=self.event_loop, **self.options)

    def _sweep_heads(self) -> None:
        self._sweep = None
        timeout = self.header_timeout()
        connections = self.connections
        if timeout > 0:
            now = self.now()
            for connection in connections:
                if isinstance(connection, GatewayConnection) and connection.head_overdue(
                    now, timeout
                ):
                    connection.force_close()
        if connections:
            self._sweep = self.event_loop.call_later(SWEEP_INTERVAL, self._sweep_heads)

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await super().shutdown(timeout)


class _Verbatim:
    """Mixed into aiohttp's responses: only the headers given, plus ``Date`` and framing."""

    headers: Any

    async def _prepare_headers(self) -> None:
        headers = self.headers
        had_type = "Content-Type" in headers
        had_server = "Server" in headers
        await super()._prepare_headers()  # type: ignore[misc]
        if not had_type:
            headers.popall("Content-Type", None)
        if not had_server:
            headers.popall("Server", None)


class VerbatimResponse(_Verbatim, web.StreamResponse):
    """A streamed response carrying only the headers it was given (plus ``Date`` and framing)."""


class VerbatimBody(_Verbatim, web.Response):
    """A whole-body response carrying only the headers it was given (plus ``Date`` and framing)."""

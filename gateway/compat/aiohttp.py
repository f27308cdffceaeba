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
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

__all__ = [
    "BadHttpMessage",
    "GatewayConnection",
    "GatewayServer",
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
    knows whether bytes that arrive belong to a request head still incomplete.
    A head that is not complete within ``header_timeout()`` seconds of its
    first byte closes the connection, so a slowloris client holds a socket for
    seconds, not forever.
    """

    def __init__(self, manager: GatewayServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._gateway = manager
        self.busy = False  # a request of this connection is being handled
        self.draining = False
        self._body_done = True
        self._pipelined = False  # bytes arrived after the body of the request in hand
        self._began = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._timer_began = 0

    # -- what the request handler reports

    def request_began(self) -> None:
        self.busy = True
        self._began += 1
        self._body_done = False
        self._pipelined = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def body_read(self) -> None:
        self._body_done = True

    def request_ended(self) -> None:
        self.busy = False
        if self._pipelined:  # possibly the start of the next head
            self._arm_head_timer()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if data:
            if not self.busy:
                if self._head_timer is None:
                    self._arm_head_timer()
            elif self._body_done:
                self._pipelined = True
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    # -- header-read timeout

    def _arm_head_timer(self) -> None:
        timeout = self._gateway.header_timeout()
        if timeout > 0 and self._head_timer is None:
            self._timer_began = self._began
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.busy or self._began != self._timer_began:
            return  # a request head arrived meanwhile
        self.force_close()

    # -- draining

    @property
    def idle(self) -> bool:
        """Waiting for a request that has not begun to arrive."""
        return not self.busy and self._head_timer is None

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


class GatewayServer(web.Server):
    """``web.Server`` making :class:`GatewayConnection` connections.

    ``header_timeout`` is asked on each new head (a reload may change it);
    ``refusal`` answers what aiohttp could not parse (or return ``None`` for
    aiohttp's own answer).
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

    def __call__(self) -> GatewayConnection:
        return GatewayConnection(self, loop=asyncio.get_running_loop(), **self.options)


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

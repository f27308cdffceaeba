"""Running the gateway: the public and admin listeners, signals, graceful shutdown.

Connections on the public port are served by :class:`GatewayRequestHandler`,
aiohttp's own protocol with three additions:

- a **header-read timeout**: a connection that has started a request head
  (or just connected) and not completed it within ``server.header_read_timeout``
  is closed, so a slowloris client holds a connection for seconds, not forever;
- the parser's own refusals (a request line or header over aiohttp's limits,
  too many headers, garbage) answer with the JSON error envelope: 414, 431 or
  400, never aiohttp's text/plain 400;
- a **drain** mode for shutdown (see :meth:`GatewayRunner.drain`).

On SIGTERM or SIGINT: ``/readyz`` turns 503 at once, the listening socket is
closed, idle keep-alive connections are closed, and in-flight requests (long
streams and uploads included) get up to ``server.drain_timeout`` to finish,
their responses carrying ``Connection: close``. Then the application's
``cleanup_ctx`` runs (usage buffers flush, the store closes) and the process
exits 0. A second signal during the drain cuts it short. The admin listener
stays up until the public side is done. SIGHUP reloads the configuration.

aiohttp's ``AppRunner.cleanup()`` alone is not enough: it marks every
connection closing before waiting, and a closing connection drops the bytes
still arriving, so an upload in flight at SIGTERM never completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .app import RUNTIME, create_admin_app, create_app
from .config.schema import Config, ServerConfig
from .denials import Denial, error_response

log = logging.getLogger("gateway")

PARSER_HEADROOM = 1024
"""aiohttp's parser limits sit this far above the gateway's own, so the gateway answers first."""


def parser_limits(server: ServerConfig) -> dict[str, int]:
    """aiohttp parser limits for ``server``: above the gateway's limits, but bounded.

    The request line and header limits differ by at least one byte so that a
    :class:`LineTooLong` from the parser tells which of the two overflowed.
    """
    url = server.max_url_bytes + PARSER_HEADROOM
    field = server.max_header_bytes + PARSER_HEADROOM
    if field == url:
        field += 1
    return {
        "max_line_size": url,
        "max_field_size": field,
        "max_headers": server.max_header_count + 16,
    }


async def expect_handler(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered as aiohttp does; any other expectation is ignored.

    (RFC 9110 §10.1.1 allows ignoring it; aiohttp's own handler answers a
    text/plain 417, or a 500 when the value is not UTF-8.)
    """
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response itself has not started


def ssl_context(config: Config) -> ssl.SSLContext | None:
    tls = config.server.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- the connection protocol ----------------------------------------------------


class GatewayRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol plus a header-read timeout, JSON parser errors and draining."""

    __slots__ = ("_head_timer", "_receiving_head", "_draining", "_header_timeout", "_url_limit")

    def __init__(self, manager: GatewayServer, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._receiving_head = False
        self._draining = False
        self._header_timeout = manager.header_timeout
        self._url_limit = manager.url_limit

    # header-read timeout

    def _arm_head_timer(self) -> None:
        timeout = self._header_timeout()
        if timeout > 0:
            self._head_timer = self._loop.call_later(timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return  # a request head arrived meanwhile
        log.debug(
            "closing a connection from %s: no complete request head after %ss",
            self.transport.get_extra_info("peername"), self._header_timeout(),
        )  # fmt: skip
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a whole head was parsed
            self._receiving_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif (
            data
            and self._head_timer is None
            and not self._request_in_progress
            and not self._messages
            and not self._force_close
        ):
            # The first bytes of a request head, between requests of a keep-alive
            # connection (or lingering body bytes of a request already answered).
            self._receiving_head = True
            self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    # draining

    @property
    def idle(self) -> bool:
        """Waiting for a request that has not begun to arrive."""
        return not (self._request_in_progress or self._messages or self._receiving_head)

    def begin_drain(self) -> None:
        """Close now if idle, else after the response in progress (with ``Connection: close``)."""
        self._draining = True
        if self.idle:
            self.force_close()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if self._draining:
            resp.force_close()
        return await super().finish_response(request, resp, start_time)

    # the parser's own refusals, in the gateway's error envelope

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and isinstance(exc, BadHttpMessage):
            if isinstance(exc, LineTooLong):
                limit = exc.args[1] if len(exc.args) > 1 else None
                code = (
                    "uri_too_long"
                    if limit == self._url_limit
                    else "request_header_fields_too_large"
                )
                denial = Denial(code)
            elif "Too many headers" in str(exc.message):
                denial = Denial("request_header_fields_too_large")
            else:
                denial = Denial("invalid_request", message="Malformed HTTP request")
            log.debug("refused a malformed request from %s: %s", request.remote, exc)
        elif status >= 500 and request.writer.output_size == 0:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            denial = Denial("internal_error")
        else:
            return super().handle_error(request, status, exc, message)
        from .handler import request_id_of

        response = error_response(denial, request_id_of(request))
        response.force_close()
        return response


class GatewayServer(web.Server):
    """aiohttp's low-level server, creating :class:`GatewayRequestHandler` connections."""

    header_timeout: Callable[[], float]
    url_limit: int

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: Callable[[], float],
        url_limit: int,
        **kwargs: Any,
    ):
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._url_limit = url_limit

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds a plain Server; give it our connection class.
        server.__class__ = GatewayServer
        server.header_timeout = self._header_timeout
        server.url_limit = self._url_limit
        return server

    async def drain(self, timeout: float, cut_short: asyncio.Event | None = None) -> int:
        """Stop accepting and let in-flight requests finish; the number still running after ``timeout``."""
        for site in list(self.sites):
            await site.stop()  # closes the listening socket
        await asyncio.sleep(0)  # let connections accepted just before start their request
        server = self.server
        if server is None:
            return 0
        for conn in server.connections:
            if isinstance(conn, GatewayRequestHandler):
                conn.begin_drain()
            else:  # pragma: no cover - every connection is ours
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while server.connections and loop.time() < deadline:
            if cut_short is not None and cut_short.is_set():
                break
            await asyncio.sleep(0.05)
        return len(server.connections)


# -- serving --------------------------------------------------------------------


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    reuse_port: bool = False,
    admin_socket: str | None = None,
    worker: int | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain and exit; the exit status.

    ``reuse_port`` lets several worker processes bind the same port; a worker
    serves its admin endpoints on the unix socket ``admin_socket`` for its
    supervisor instead of on ``admin.port``.
    """
    app = create_app(config, config_path=config_path)
    server = config.server
    runtime_holder: list[Any] = []

    def header_timeout() -> float:
        return runtime_holder[0].config.server.header_read_timeout if runtime_holder else 10.0

    runner = GatewayRunner(
        app,
        header_timeout=header_timeout,
        url_limit=parser_limits(server)["max_line_size"],
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=0.1,  # what is still running after drain() is cut off at once
        keepalive_timeout=75.0,  # aiohttp's default is an hour
    )
    await runner.setup()
    runtime = app[RUNTIME]
    runtime_holder.append(runtime)
    if worker is not None:
        runtime.extras["worker"] = worker
    site = web.TCPSite(
        runner,
        server.host,
        server.port,
        ssl_context=ssl_context(config),
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    admin_runner = None
    if admin_socket is not None or config.admin.enabled:
        admin_runner = web.AppRunner(create_admin_app(app), access_log=None, handle_signals=False)
        await admin_runner.setup()
        admin_site: web.BaseSite
        if admin_socket is not None:
            admin_site = web.UnixSite(admin_runner, admin_socket)
        else:
            admin_site = web.TCPSite(admin_runner, config.admin.host, config.admin.port)
        try:
            await admin_site.start()
        except OSError:
            await admin_runner.cleanup()
            await runner.cleanup()
            raise
    log.info(
        "gateway%s listening on %s:%s (admin %s), %d route(s)",
        f" worker {worker}" if worker is not None else "",
        server.host, server.port,
        admin_socket or f"{config.admin.host}:{config.admin.port}" if admin_runner else "off",
        len(config.routes),
    )  # fmt: skip

    stop = asyncio.Event()
    cut_short = asyncio.Event()

    def on_stop_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: cutting the drain short", signal.Signals(signum).name)
            cut_short.set()
        else:
            log.info("%s received", signal.Signals(signum).name)
            runtime.extras["draining"] = True  # /readyz answers 503 from now on
            stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    reload_hook = runtime.extras.get("reload")
    if reload_hook is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_hook)
    else:
        loop.add_signal_handler(
            signal.SIGHUP, log.warning, "SIGHUP ignored: no config file to reload"
        )
    try:
        await stop.wait()
        drain_timeout = runtime.config.server.drain_timeout
        log.info("shutting down: draining in-flight requests (up to %ss)", drain_timeout)
        left = await runner.drain(drain_timeout, cut_short)
        if left:
            log.warning("drain ended with %d connection(s) still busy: closing them", left)
        await runner.cleanup()  # on_shutdown, cleanup_ctx: usage flush, store close
        if admin_runner is not None:
            await admin_runner.cleanup()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    log.info("gateway stopped")
    return 0

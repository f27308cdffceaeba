"""Running the gateway: the public and admin listeners, signals, graceful shutdown.

Connections on the public port are aiohttp's own protocol with a
header-read timeout, JSON answers to the parser's refusals and a drain mode
(:mod:`gateway.compat.aiohttp`).

On SIGTERM or SIGINT: ``/readyz`` turns 503 at once, the listening socket is
closed, idle keep-alive connections are closed, and in-flight requests (long
streams and uploads included) get up to ``server.drain_timeout`` to finish,
their responses carrying ``Connection: close``. Then the application's
``cleanup_ctx`` runs (usage buffers flush, the store closes) and the process
exits 0. A second signal during the drain cuts it short. The admin listener
stays up until the public side is done. SIGHUP reloads the configuration.

aiohttp's ``ServerRunner.cleanup()`` alone is not enough: it marks every
connection closing before waiting, and a closing connection drops the bytes
still arriving, so an upload in flight at SIGTERM never completes; hence
:func:`drain` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl

from aiohttp import web

from .app import GatewayApp, create_admin_app
from .compat.aiohttp import GatewayConnection
from .config.schema import Config
from .proxy.streams import GOING_AWAY, SHUTTING_DOWN
from .proxy.websocket import WebSocketRelay
from .telemetry.logs import mask_secrets_in_logs

log = logging.getLogger("gateway")


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


async def drain(gateway: GatewayApp, timeout: float, cut_short: asyncio.Event | None = None) -> int:
    """Stop accepting and let in-flight requests finish; the number still running after ``timeout``."""
    await gateway.stop_listening()
    # Open WebSockets never end by themselves: close code 1001, "going away".
    gateway.runtime.streams.close_all(GOING_AWAY, SHUTTING_DOWN, WebSocketRelay)
    await asyncio.sleep(0)  # let connections accepted just before start their request
    server = gateway.server
    if server is None:
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for conn in server.connections:
            if isinstance(conn, GatewayConnection):
                conn.begin_drain()  # closes it once idle
            else:  # pragma: no cover - every connection is ours
                conn.close()
        if not server.connections or loop.time() >= deadline:
            break
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
    mask_secrets_in_logs(config.keys.prefix)
    gateway = GatewayApp(config, config_path=config_path, worker=worker)
    runtime = await gateway.start()
    server = config.server
    try:
        await gateway.listen(
            server.host, server.port, ssl_context=ssl_context(config), reuse_port=reuse_port or None
        )
    except OSError:
        await gateway.close()
        raise
    admin_runner = None
    if admin_socket is not None or config.admin.enabled:
        admin_runner = web.AppRunner(
            create_admin_app(lambda: runtime), access_log=None, handle_signals=False
        )
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
            await gateway.close()
            raise
    # Everything built so far (config, modules, clients) lives as long as the process:
    # out of the collector's sight, so a full collection does not walk it again and again.
    gc.collect()
    gc.freeze()
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
            runtime.draining = True  # /readyz answers 503 from now on
            stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    if runtime.reload is not None:
        loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    else:
        loop.add_signal_handler(
            signal.SIGHUP, log.warning, "SIGHUP ignored: no config file to reload"
        )
    try:
        await stop.wait()
        drain_timeout = runtime.config.server.drain_timeout
        log.info("shutting down: draining in-flight requests (up to %ss)", drain_timeout)
        left = await drain(gateway, drain_timeout, cut_short)
        if left:
            log.warning("drain ended with %d connection(s) still busy: closing them", left)
        await gateway.close()  # usage flush, store close
        if admin_runner is not None:
            await admin_runner.cleanup()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    log.info("gateway stopped")
    return 0

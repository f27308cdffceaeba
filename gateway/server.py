"""Running the gateway: the public and admin listeners, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from aiohttp import web

from .app import RUNTIME, create_admin_app, create_app
from .config.schema import Config

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


async def serve(config: Config, *, config_path: str | None = None, reuse_port: bool = False) -> int:
    """Serve until SIGTERM or SIGINT, then drain and exit; the exit status."""
    app = create_app(config, config_path=config_path)
    server = config.server
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=server.drain_timeout,
        max_field_size=65536,
        max_line_size=65536,
        max_headers=max(server.max_header_count * 2, 256),
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        server.host,
        server.port,
        ssl_context=ssl_context(config),
        reuse_port=reuse_port or None,
        backlog=1024,
    )
    await site.start()
    admin_runner = None
    if config.admin.enabled:
        admin_runner = web.AppRunner(create_admin_app(app), access_log=None, handle_signals=False)
        await admin_runner.setup()
        await web.TCPSite(
            admin_runner, config.admin.host, config.admin.port, reuse_port=reuse_port or None
        ).start()
    runtime = app[RUNTIME]
    log.info(
        "gateway listening on %s:%s (admin %s:%s), %d route(s)",
        server.host, server.port, config.admin.host, config.admin.port, len(config.routes),
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reload_hook = runtime.extras.get("reload")
    if reload_hook is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_hook)
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %ss)", server.drain_timeout)
    runtime.extras["draining"] = True
    await runner.cleanup()
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("gateway stopped")
    return 0

"""The public port's server and its runtime, opened and closed as one.

The public port runs on aiohttp's low-level ``web.Server`` (through
:class:`~gateway.compat.aiohttp.GatewayServer`): one handler,
:class:`~gateway.handler.PublicHandler`, sees every request. Its resources
open in order before the first request and close in reverse: the store
connection, the runtime (cache, pipeline, invalidation listener, access log,
usage recorder, reloader), and the upstream pool.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable

import aiohttp
from aiohttp import web

from . import __version__
from .alerts.detectors import AlertDetector
from .alerts.quota import QuotaAlerts
from .compat.aiohttp import GatewayServer
from .config.schema import Config
from .events.delivery import WebhookDispatcher
from .events.webhooks import WebhookStore
from .handler import PublicHandler, parser_limits
from .keys.audit import AuditLog
from .keys.cache import KeyCache
from .keys.invalidation import InvalidationListener
from .keys.service import KeyService
from .keys.store import KeyStore
from .management import local_routes
from .metering import Meter
from .ops.admin import admin_routes
from .ops.reload import ConfigReloader
from .pipeline import Pipeline
from .proxy.streams import OpenStreams
from .ratelimit import RateLimiter, RedisLimitStore
from .ratelimit.policy import plan_rate
from .request_id import RequestIds
from .runtime import Runtime, Snapshot
from .store.connection import StoreHandle, open_store
from .store.health import StoreMonitor
from .telemetry.accesslog import AccessLog
from .telemetry.metrics import Metrics
from .telemetry.tracing import Tracer
from .usage import UsageRecorder

log = logging.getLogger("gateway")

StoreFactory = Callable[[Config], StoreHandle]
KEEPALIVE_TIMEOUT = 75.0  # aiohttp's default is an hour
LINGERING_TIME = 1.0


class GatewayApp:
    """The gateway of one process: :meth:`start`, then :meth:`listen`, then :meth:`close`.

    Tests may pass a ``store_factory`` for another Redis.
    """

    def __init__(
        self,
        config: Config,
        *,
        store_factory: StoreFactory | None = None,
        metrics: Metrics | None = None,
        config_path: str | None = None,
        worker: int | None = None,
    ):
        self.config = config
        self._store_factory = store_factory or (lambda c: open_store(c.redis))
        self._metrics = metrics
        self._config_path = config_path
        self._worker = worker
        self._stack = contextlib.AsyncExitStack()
        self._runtime: Runtime | None = None
        self.server: GatewayServer | None = None
        self.runner: web.ServerRunner | None = None
        self.store: StoreHandle | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the gateway has not started")
        return self._runtime

    async def start(self) -> Runtime:
        """Open the store and build the runtime; undone by :meth:`close`."""
        try:
            self._runtime = await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self._runtime

    async def _open(self) -> Runtime:
        config = self.config
        stack = self._stack
        handle = self._store_factory(config)
        self.store = handle
        stack.push_async_callback(handle.close)
        store = KeyStore(handle.client, config.redis.key_prefix)
        metrics = self._metrics or Metrics()
        cache = KeyCache(
            lambda key_hash: runtime.load_key(key_hash),
            ttl=config.keys.cache_ttl,
            negative_ttl=config.keys.negative_cache_ttl,
            max_size=config.keys.cache_max_size,
            stale_if_error=config.keys.stale_if_error,
        )
        holder: list[Runtime] = []
        limiter = RateLimiter(
            RedisLimitStore(handle.client),
            prefix=config.redis.key_prefix,
            plan_rate=lambda plan: plan_rate(holder[0].snapshot.config, plan),
            on_store_error=config.rate_limits.on_store_error,
        )
        usage = UsageRecorder(handle.client, config.redis.key_prefix)
        service = KeyService(store, config, audit=AuditLog(handle.client, config.redis.key_prefix))
        alerts = None
        if config.alerts.enabled:
            alerts = AlertDetector(
                handle.client,
                config.redis.key_prefix,
                service.events,
                lambda: holder[0].snapshot.config.alerts,
                store=store,
                rotation_days=lambda: holder[0].snapshot.config.keys.rotation_days,
            )
        service.events.listeners.append(metrics.count_alert)
        meter = Meter(
            service.balances,
            on_store_error=lambda: holder[0].snapshot.config.metering.on_store_error,
            on_crossing=QuotaAlerts(service.events, lambda: holder[0].snapshot.config.alerts),
        )
        runtime = Runtime(
            snapshot=Snapshot.build(config),
            store=store,
            cache=cache,
            service=service,
            metrics=metrics,
            access_log=AccessLog(config.keys.prefix),
            pipeline=Pipeline(
                prefix=config.keys.prefix,
                cache=cache,
                limiter=limiter,
                usage=usage,
                alerts=alerts,
                meter=meter,
                quota_for=lambda plan: holder[0].snapshot.config.plan(plan).quota,
            ),
            limiter=limiter,
            usage=usage,
            streams=OpenStreams(lambda key_hash: runtime.load_key(key_hash)),
            request_ids=RequestIds(config.keys.prefix),
            config_path=self._config_path,
            worker=self._worker,
            meter=meter,
        )
        holder.append(runtime)
        if config.tracing.otlp_endpoint is not None:
            runtime.tracer = runtime.pipeline.tracer = Tracer(
                config.tracing.otlp_endpoint,
                config.tracing.service_name,
                config.tracing.sample_ratio,
                __version__,
            )
            stack.callback(runtime.tracer.shutdown)  # last: what the closing requests sent
        metrics.watch_cache(lambda: (cache.hits, cache.misses, cache.stale_served, len(cache)))
        health = handle.health
        monitor = StoreMonitor(
            store.ping, known_up=(lambda: health.up) if health is not None else None
        )
        await monitor.check()  # /readyz and gateway_store_up are right from the first request
        monitor.start()
        stack.push_async_callback(monitor.stop)
        runtime.store_monitor = monitor
        metrics.watch_store(lambda: monitor.up)
        runtime.snapshot = Snapshot.build(config, local_routes(runtime))
        stack.callback(runtime.pool.close)
        runtime.websocket_client = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        stack.push_async_callback(runtime.websocket_client.close)
        stack.callback(runtime.streams.close_all)
        pubsub = handle.open_pubsub(config.redis)  # sentinel: the master; cluster: one node
        stack.push_async_callback(pubsub.aclose)
        listener = InvalidationListener(
            pubsub,
            store.channel,
            cache,
            on_change=runtime.streams.changed,
            on_resync=runtime.streams.resync,
        )
        listener.start()
        stack.push_async_callback(listener.stop)
        monitor.on_down = listener.renew  # a hung master: its subscription hears nothing more
        runtime.invalidation = listener
        runtime.access_log.start()
        stack.push_async_callback(runtime.access_log.stop)
        if self._config_path:
            reloader = ConfigReloader(runtime, self._config_path, local_routes)
            runtime.reload = reloader.request  # SIGHUP
            runtime.reload_now = reloader.reload_with_result  # POST /reload
            reloader.start()  # and when the file changes
            stack.push_async_callback(reloader.stop)
        usage.start()
        stack.push_async_callback(usage.stop)  # writes the counts not yet written
        events = runtime.service.events
        stack.push_async_callback(events.drain)  # events raised in the background
        if alerts is not None:
            alerts.start()
            stack.push_async_callback(alerts.stop)  # folds the last counts (before drain)
            runtime.alerts = alerts
        if config.webhooks.enabled and isinstance(events.fan_out, WebhookStore):
            dispatcher = WebhookDispatcher(events.fan_out, config.webhooks)
            dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
            events.listeners.append(lambda event: dispatcher.wake())
            runtime.webhooks = dispatcher
        handler = PublicHandler(runtime)
        self.server = GatewayServer(
            handler,
            header_timeout=lambda: runtime.snapshot.config.server.header_read_timeout,
            refusal=handler.parser_refusal,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            # After a refusal whose body was not read (413, 408), read what still comes
            # for at most this long before closing, not aiohttp's 10 s.
            lingering_time=LINGERING_TIME,
            **parser_limits(config.server),
        )
        return runtime

    async def listen(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool | None = None,
    ) -> None:
        """Open the public listener."""
        assert self.server is not None, "start() first"
        if self.runner is None:
            self.runner = web.ServerRunner(self.server, handle_signals=False, shutdown_timeout=0.1)
            await self.runner.setup()
        site = web.TCPSite(
            self.runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port, backlog=1024
        )
        await site.start()

    @property
    def port(self) -> int:
        """The public listener's port (the one the system chose for port 0)."""
        assert self.runner is not None and self.runner.addresses, "listen() first"
        return self.runner.addresses[0][1]

    async def stop_listening(self) -> None:
        """Close the listening sockets; connections already accepted stay."""
        if self.runner is not None:
            for site in list(self.runner.sites):
                await site.stop()

    async def close(self) -> None:
        """Close the listener and every connection, then the resources in reverse order."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self._stack.aclose()


def create_admin_app(get_runtime: Callable[[], Runtime]) -> web.Application:
    admin = web.Application()
    admin.add_routes(admin_routes(get_runtime))
    return admin

"""The aiohttp applications: the public port (proxy + management) and the admin port.

Resources live in ``cleanup_ctx`` generators, opened in order before the
first request and closed in reverse: the store connection, the runtime
(cache, pipeline, invalidation listener, access log), and the upstream
client session.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .config.schema import Config
from .handler import PublicHandler
from .keys.audit import AuditLog
from .keys.cache import KeyCache
from .keys.invalidation import InvalidationListener
from .keys.service import KeyService
from .keys.store import KeyStore
from .ops.accesslog import AccessLog
from .ops.metrics import Metrics
from .ops.reload import ConfigReloader
from .pipeline import Pipeline
from .proxy.forward import new_session
from .ratelimit import RateLimiter, RedisLimitStore
from .ratelimit.policy import plan_rate
from .runtime import Runtime, Snapshot
from .store.connection import StoreHandle, open_store
from .usage import UsageRecorder

log = logging.getLogger("gateway")

RUNTIME = web.AppKey("runtime", Runtime)
STORE = web.AppKey("store", StoreHandle)
HANDLER = web.AppKey("handler", PublicHandler)

StoreFactory = Callable[[Config], StoreHandle]


def local_routes_for(runtime: Runtime) -> tuple:
    """The paths the gateway answers itself (management API, forward auth, dashboard)."""
    try:
        from .management import local_routes
    except ImportError:  # pragma: no cover - the management package is part of the gateway
        return ()
    return local_routes(runtime)


def create_app(
    config: Config,
    *,
    store_factory: StoreFactory | None = None,
    metrics: Metrics | None = None,
    config_path: str | None = None,
) -> web.Application:
    """The public application. Tests may pass a ``store_factory`` for another Redis."""
    from .server import expect_handler, parser_limits  # aiohttp settings of the public port

    app = web.Application(handler_args=parser_limits(config.server))

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        handle = (store_factory or (lambda c: open_store(c.redis)))(config)
        app[STORE] = handle
        yield
        await handle.close()

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        handle = app[STORE]
        store = KeyStore(handle.client, config.redis.key_prefix)
        runtime = Runtime(
            snapshot=Snapshot.build(config),
            store=store,
            cache=None,  # type: ignore[arg-type]  # set just below: the loader needs the runtime
            service=KeyService(
                store, config, audit=AuditLog(handle.client, config.redis.key_prefix)
            ),
            metrics=metrics or Metrics(),
            access_log=AccessLog(config.keys.prefix),
        )
        runtime.extras["config_path"] = config_path
        runtime.cache = KeyCache(
            runtime.load_key,
            ttl=config.keys.cache_ttl,
            negative_ttl=config.keys.negative_cache_ttl,
            max_size=config.keys.cache_max_size,
            stale_if_error=config.keys.stale_if_error,
        )
        runtime.metrics.watch_cache(
            lambda: (
                runtime.cache.hits,
                runtime.cache.misses,
                runtime.cache.stale_served,
                len(runtime.cache),
            )
        )
        limiter = RateLimiter(
            RedisLimitStore(handle.client),
            prefix=config.redis.key_prefix,
            plan_rate=lambda plan: plan_rate(runtime.snapshot.config, plan),
            on_store_error=config.rate_limits.on_store_error,
        )
        usage = UsageRecorder(handle.client, config.redis.key_prefix)
        runtime.extras["limiter"] = limiter
        runtime.extras["usage"] = usage
        runtime.pipeline = Pipeline(
            prefix=config.keys.prefix, cache=runtime.cache, limiter=limiter, usage=usage
        )
        runtime.snapshot = Snapshot.build(config, local_routes_for(runtime))
        pubsub = handle.open_pubsub(config.redis)  # sentinel: the master; cluster: one node
        listener = InvalidationListener(pubsub, store.channel, runtime.cache)
        listener.start()
        runtime.extras["invalidation"] = listener
        runtime.access_log.start()
        reloader = ConfigReloader(runtime, config_path, local_routes_for) if config_path else None
        if reloader is not None:
            runtime.extras["reload"] = reloader.request  # SIGHUP
            reloader.start()  # and when the file changes
        usage.start()
        app[RUNTIME] = runtime
        app[HANDLER] = PublicHandler(runtime)
        yield
        await usage.stop()  # writes the counts not yet written
        if reloader is not None:
            await reloader.stop()
        await listener.stop()
        await pubsub.aclose()
        await runtime.access_log.stop()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        session = new_session()
        app[RUNTIME].session = session
        yield
        await session.close()

    app.cleanup_ctx.extend([store_ctx, runtime_ctx, session_ctx])

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[HANDLER](request)

    app.router.add_route("*", "/{tail:.*}", handle, expect_handler=expect_handler)
    return app


def create_admin_app(public: web.Application) -> web.Application:
    from .ops.admin import admin_routes

    admin = web.Application()
    admin.add_routes(admin_routes(lambda: public[RUNTIME]))
    return admin

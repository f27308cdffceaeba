"""The admin port (SPEC §8): liveness, readiness, metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..runtime import Runtime


def readiness(runtime: Runtime) -> tuple[int, dict]:
    """``/readyz``'s status and body: each part named (config, draining, store, invalidation).

    Ready while not draining and the store answers, or while its outage is younger than
    ``keys.stale_if_error`` (cached keys still serve; see :mod:`gateway.store.health`).
    """
    stale_if_error = runtime.config.keys.stale_if_error
    monitor = runtime.store_monitor
    body: dict = {"config": "loaded", "draining": runtime.draining}
    serving = True
    if monitor is not None:
        body["store"] = "up" if monitor.up else "down"
        outage = monitor.outage_seconds()
        if outage is not None:
            body["store_down_seconds"] = round(outage, 1)
            body["stale_if_error_seconds"] = stale_if_error
        serving = monitor.serving(stale_if_error)
    if runtime.restart_required:
        body["restart_required"] = list(runtime.restart_required)
    listener = runtime.invalidation
    if listener is not None:  # cache invalidation from other replicas
        body["invalidation"] = "subscribed" if listener.connected.is_set() else "reconnecting"
    if runtime.draining:
        return 503, {"status": "draining", **body}
    if not serving:
        return 503, {"status": "unavailable", **body}
    return 200, {"status": "ready", **body}


def admin_routes(get_runtime: Callable[[], Runtime]) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status, body = readiness(get_runtime())
        return web.json_response(body, status=status)

    async def reload(request: web.Request) -> web.Response:
        """Reload the config file now; what was refused, or which changes need a restart."""
        runtime = get_runtime()
        if runtime.reload_now is None:
            return web.json_response(
                {"status": "refused", "errors": ["no config file to reload"]}, status=409
            )
        result = await runtime.reload_now("admin request")
        return web.json_response(result.answer(), status=200 if result.reloaded else 422)

    async def metrics(request: web.Request) -> web.Response:
        runtime = get_runtime()
        body = generate_latest(runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.post("/reload", reload),
    ]

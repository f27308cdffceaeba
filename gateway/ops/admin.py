"""The admin port (SPEC §8): liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..runtime import Runtime
from ..store.connection import StoreUnavailable


def admin_routes(get_runtime: Callable[[], Runtime]) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        runtime = get_runtime()
        if runtime.draining:
            return web.json_response({"status": "draining"}, status=503)
        try:
            async with asyncio.timeout(1.0):
                await runtime.store.ping()
        except (StoreUnavailable, TimeoutError) as exc:
            runtime.metrics.store_up.set(0)
            return web.json_response(
                {"status": "unavailable", "store": str(exc) or "timeout"}, status=503
            )
        runtime.metrics.store_up.set(1)
        body = {"status": "ready"}
        listener = runtime.invalidation
        if listener is not None:  # cache invalidation from other replicas
            body["invalidation"] = "subscribed" if listener.connected.is_set() else "reconnecting"
        return web.json_response(body)

    async def metrics(request: web.Request) -> web.Response:
        runtime = get_runtime()
        body = generate_latest(runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]

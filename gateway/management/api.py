"""The management endpoints of SPEC §7 under ``management.path_prefix``.

:data:`ENDPOINTS` is the one table of what is answered here: the dispatcher
routes by it and the OpenAPI document is checked against it. A call runs in
the order of SPEC §4: path, method, declared body size, then the caller's key
through the same pipeline as a proxied request (so the key's IP, referrer and
endpoint restrictions, its permission and the rate limits apply), then the
operation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ..denials import BACKEND_DOWN, Denial, error_response
from ..keys.service import (
    Forbidden,
    InvalidRequest,
    LastAdminKey,
    NotActive,
    NotFound,
    OperationError,
)
from ..pipeline import Attempt, attempt_for
from ..store.connection import StoreUnavailable
from . import events, identity, keys, webhooks
from .calls import BodyTooLarge, Call, body_limit
from .openapi import openapi_document

if TYPE_CHECKING:
    from ..pipeline import RequestContext
    from ..runtime import LocalHandler, Runtime

log = logging.getLogger("gateway.management")

ROUTE_NAME = "management"  # the route name the pipeline, limiter and usage see
ADMIN = "admin"
WEBHOOK = "webhook"  # satisfied by webhook and by admin (SPEC §2)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    template: str  # under the prefix; ``{id}`` stands for one path segment
    operation_id: str
    handler: Callable[[Call], Awaitable[web.StreamResponse]] | None
    permission: str | None = None  # beyond a valid key
    auth: bool = True
    body: bool = False

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = self.template.strip("/").split("/")
        if len(parts) != len(segments):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    return None
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/auth/verify", "verifyKey", identity.verify),
    Endpoint("GET", "/account", "getAccount", identity.account),
    Endpoint("GET", "/api-keys", "listKeys", keys.list_keys, ADMIN),
    Endpoint("POST", "/api-keys", "createKey", keys.create_key, ADMIN, body=True),
    Endpoint("GET", "/api-keys/{id}", "getKey", keys.get_key, ADMIN),
    Endpoint("PATCH", "/api-keys/{id}", "updateKey", keys.update_key, ADMIN, body=True),
    Endpoint("DELETE", "/api-keys/{id}", "revokeKey", keys.revoke_key, ADMIN),
    Endpoint("POST", "/api-keys/{id}/rotate", "rotateKey", keys.rotate_key, ADMIN, body=True),
    Endpoint("GET", "/api-keys/{id}/usage", "getKeyUsage", keys.key_usage, ADMIN),
    Endpoint("GET", "/events", "listEvents", events.list_events, WEBHOOK),
    Endpoint("GET", "/webhook-endpoints", "listWebhookEndpoints", webhooks.list_endpoints, WEBHOOK),
    Endpoint(
        "POST",
        "/webhook-endpoints",
        "createWebhookEndpoint",
        webhooks.create_endpoint,
        WEBHOOK,
        body=True,
    ),
    Endpoint(
        "GET", "/webhook-endpoints/{id}", "getWebhookEndpoint", webhooks.get_endpoint, WEBHOOK
    ),
    Endpoint(
        "PATCH",
        "/webhook-endpoints/{id}",
        "updateWebhookEndpoint",
        webhooks.update_endpoint,
        WEBHOOK,
        body=True,
    ),
    Endpoint(
        "DELETE",
        "/webhook-endpoints/{id}",
        "deleteWebhookEndpoint",
        webhooks.delete_endpoint,
        WEBHOOK,
    ),
    Endpoint(
        "POST", "/webhook-endpoints/{id}/test", "testWebhookEndpoint", webhooks.send_test, WEBHOOK
    ),
    Endpoint(
        "GET",
        "/webhook-endpoints/{id}/deliveries",
        "listWebhookDeliveries",
        webhooks.list_deliveries,
        WEBHOOK,
    ),
    Endpoint("GET", "/openapi.json", "getOpenAPI", None, auth=False),
)

# Where each local route starts: exact paths, and /api-keys with everything below it.
_MOUNTS = (("/auth/verify", False), ("/account", False), ("/openapi.json", False),
           ("/api-keys", True), ("/events", False), ("/webhook-endpoints", True))  # fmt: skip


def operation_error(exc: OperationError) -> Denial:
    """The service's refusals as the API answers them."""
    details = {"field": exc.field} if exc.field else {}
    if isinstance(exc, NotFound):
        where = {"field": exc.field} if exc.field not in (None, "id") else {}
        return Denial("resource_not_found", where, message=exc.message)
    if isinstance(exc, Forbidden):
        return Denial("insufficient_permissions", details, message=exc.message)
    if isinstance(exc, NotActive):
        return Denial("key_not_active", details, message=exc.message)
    if isinstance(exc, InvalidRequest):
        return Denial("invalid_request", details, message=exc.message)
    if isinstance(exc, LastAdminKey):
        return Denial("last_admin_key", details, message=exc.message)
    return Denial("invalid_request", details, message=exc.message)


class ManagementAPI:
    def __init__(self, runtime: Runtime, prefix: str):
        self.runtime = runtime
        self.prefix = prefix
        self._openapi: bytes | None = None

    def routes(self) -> list[tuple[str, bool, LocalHandler]]:
        return [(self.prefix + path, below, self.handle) for path, below in _MOUNTS]

    def resolve(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | Denial:
        rest = path[len(self.prefix) :]
        if rest.endswith("/") and len(rest) > 1:
            rest = rest[:-1]
        segments = rest.strip("/").split("/")
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for endpoint in ENDPOINTS:
            params = endpoint.match(segments)
            if params is None:
                continue
            if endpoint.method == wanted:
                return endpoint, params
            allowed.append(endpoint.method)
        if not allowed:
            return Denial("route_not_found")
        if "GET" in allowed:
            allowed.append("HEAD")
        allowed.sort()
        return Denial("method_not_allowed", {"allowed": allowed}, {"Allow": ", ".join(allowed)})

    async def handle(self, request: web.BaseRequest, ctx: RequestContext) -> web.StreamResponse:
        found = self.resolve(request.method, ctx.match_path)
        if isinstance(found, Denial):
            return self._refuse(found, ctx)
        endpoint, params = found
        if endpoint.handler is None:
            return self._openapi_answer(ctx)
        call = Call(request, ctx, self.runtime, params)
        extra: dict[str, str] = {}
        try:
            if endpoint.body:
                limit = body_limit(self.runtime)
                length = request.content_length
                if length is not None and length > limit:
                    raise BodyTooLarge(limit)
            if endpoint.auth:
                result = await self.runtime.pipeline.authenticate(
                    self._attempt(request, ctx, endpoint)
                )
                if isinstance(result, Denial):
                    return self._refuse(result, ctx)
                call.principal = ctx.principal = result
                if result.rate is not None:
                    extra = result.rate.headers()
            response = await endpoint.handler(call)
        except OperationError as exc:
            response = self._refuse(operation_error(exc), ctx)
        except BodyTooLarge as exc:
            response = self._refuse(Denial("payload_too_large", {"max_body_bytes": exc.limit}), ctx)
        except StoreUnavailable as exc:
            log.warning("key store unavailable during %s: %s", endpoint.operation_id, exc)
            response = self._refuse(BACKEND_DOWN, ctx)
        response.headers["X-Request-Id"] = ctx.request_id
        response.headers["Cache-Control"] = "no-store"
        for name, value in extra.items():
            response.headers.setdefault(name, value)
        return response

    def _attempt(
        self, request: web.BaseRequest, ctx: RequestContext, endpoint: Endpoint
    ) -> Attempt:
        return attempt_for(
            ctx,
            request.headers,
            self.runtime.snapshot.trusted_proxies,
            route_name=ROUTE_NAME,
            required_permission=endpoint.permission,
        )

    @staticmethod
    def _refuse(denial: Denial, ctx: RequestContext) -> web.Response:
        ctx.code = denial.code
        return error_response(denial, ctx.request_id)

    def _openapi_answer(self, ctx: RequestContext) -> web.Response:
        if self._openapi is None:
            self._openapi = json.dumps(openapi_document(self.prefix), indent=1).encode()
        response = web.Response(body=self._openapi, content_type="application/json")
        response.headers["X-Request-Id"] = ctx.request_id
        return response


def management_routes(runtime: Runtime, prefix: str) -> list[tuple[str, bool, LocalHandler]]:
    return ManagementAPI(runtime, prefix).routes()

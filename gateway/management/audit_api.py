"""``GET {prefix}/audit``: the caller's account's audit trail, newest first (admin keys).

Each event says who (``actor``: a key id, or ``cli`` for the operator) did
what (``action``: ``key.create``, ``key.update``, ``key.rotate``,
``key.revoke``, ``account.create``) to which key, and when (``at``). The
caller authenticates like every management call (same pipeline, so its
restrictions and rate limits apply) and needs ``admin``; it sees its own
account's events only, and a test-mode key only the events about test keys.

Query: ``limit`` (1-500, default 100).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from ..denials import BACKEND_DOWN, Denial, error_response
from ..pipeline import Attempt, attempt_for
from ..store.connection import StoreUnavailable

if TYPE_CHECKING:
    from ..pipeline import RequestContext
    from ..runtime import LocalHandler, Runtime

log = logging.getLogger("gateway.management.audit")

ROUTE_NAME = "management"
PERMISSION = "admin"
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
ALLOWED_METHODS = ("GET", "HEAD")


def _invalid(message: str, field: str) -> Denial:
    return Denial("invalid_request", {"field": field}, message=message)


def parse_limit(query: str) -> int | Denial:
    limit = DEFAULT_LIMIT
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "limit":
            return _invalid(f"unknown query parameter {name!r}", name)
        if name in seen:
            return _invalid("the query parameter 'limit' is given twice", name)
        seen.add(name)
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
            return _invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}", "limit")
        limit = int(value)
    return limit


class AuditAPI:
    def __init__(self, runtime: Runtime, prefix: str):
        self.runtime = runtime
        self.path = prefix + "/audit"

    async def __call__(self, request: web.BaseRequest, ctx: RequestContext) -> web.StreamResponse:
        if request.method not in ALLOWED_METHODS:
            allow = ", ".join(ALLOWED_METHODS)
            return self._refuse(
                Denial("method_not_allowed", {"allowed": list(ALLOWED_METHODS)}, {"Allow": allow}),
                ctx,
            )
        result = await self.runtime.pipeline.authenticate(self._attempt(request, ctx))
        if isinstance(result, Denial):
            return self._refuse(result, ctx)
        ctx.principal = result
        limit = parse_limit(ctx.query)
        if isinstance(limit, Denial):
            return self._refuse(limit, ctx)
        record = result.key.record
        try:
            events = await self._events(record.account_id, limit, test_only=record.mode == "test")
        except StoreUnavailable as exc:
            log.warning("key store unavailable while reading the audit trail: %s", exc)
            return self._refuse(BACKEND_DOWN, ctx)
        body = {"data": events, "meta": {"request_id": ctx.request_id, "limit": limit}}
        response = web.Response(
            body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json"
        )
        response.headers["X-Request-Id"] = ctx.request_id
        response.headers["Cache-Control"] = "no-store"
        if result.rate is not None:
            for name, value in result.rate.headers().items():
                response.headers.setdefault(name, value)
        return response

    async def _events(
        self, account_id: str, limit: int, *, test_only: bool
    ) -> list[dict[str, Any]]:
        audit = self.runtime.service.audit
        if audit is None:
            return []
        events = await audit.read(account_id=account_id, limit=limit)
        if not test_only:
            return events
        ids = {e["key_id"] for e in events if e.get("key_id")}
        records = await self.runtime.store.get_keys(sorted(ids))
        test_keys = {r.id for r in records if r.mode == "test"}
        return [e for e in events if e.get("key_id") in test_keys]

    def _attempt(self, request: web.BaseRequest, ctx: RequestContext) -> Attempt:
        return attempt_for(
            ctx,
            request.headers,
            self.runtime.snapshot.trusted_proxies,
            route_name=ROUTE_NAME,
            required_permission=PERMISSION,
        )

    @staticmethod
    def _refuse(denial: Denial, ctx: RequestContext) -> web.Response:
        ctx.code = denial.code
        return error_response(denial, ctx.request_id)


def audit_routes(runtime: Runtime, prefix: str) -> list[tuple[str, bool, LocalHandler]]:
    api = AuditAPI(runtime, prefix)
    return [(api.path, False, api)]

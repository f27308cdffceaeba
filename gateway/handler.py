"""The public port's request handler: SPEC §4's pipeline, then forward (or answer)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDictProxy

from .checks.https import is_https
from .checks.ip import client_ip, in_networks, parse_ip
from .denials import Denial, error_response
from .pipeline import Attempt, Principal
from .proxy.breaker import breaker_for, circuit_open
from .proxy.forward import PayloadTooLarge, UpstreamBrokeOff, UpstreamFailure, forward
from .proxy.headers import upstream_request_headers
from .proxy.paths import PathError, normalise_path
from .routing import Route
from .runtime import Runtime, Snapshot

log = logging.getLogger("gateway.handler")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
HTTPS_REQUIRED = Denial("https_required")
BAD_PATH = Denial("bad_request")
ROUTE_NOT_FOUND = Denial("route_not_found")
TOO_LARGE = Denial("payload_too_large")
URI_TOO_LONG = Denial("uri_too_long")
HEADERS_TOO_LARGE = Denial("request_header_fields_too_large")

LocalHandler = Callable[[web.BaseRequest, "RequestContext"], Awaitable[web.StreamResponse]]


class _RequestIds:
    """Generated request ids: a random per-process prefix and a counter (unique, cheap)."""

    def __init__(self) -> None:
        self._pid = 0
        self._prefix = ""
        self._seq = 0

    def next(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # a new process (fork): a new prefix
            self._pid, self._prefix, self._seq = pid, secrets.token_hex(6), 0
        self._seq += 1
        return f"req_{self._prefix}{self._seq:012x}"


_ids = _RequestIds()


def request_id_of(request: web.BaseRequest) -> str:
    given = request.headers.get("X-Request-Id")
    if given and _REQUEST_ID.match(given):
        return given
    return _ids.next()


class RequestContext:
    """What the pipeline learned about one request, shared with local handlers."""

    __slots__ = (
        "request_id",
        "path",
        "query",
        "peer_trusted",
        "https",
        "route",
        "principal",
        "code",
    )

    def __init__(self, request_id: str, path: str, query: str, peer_trusted: bool, https: bool):
        self.request_id = request_id
        self.path = path
        self.query = query
        self.peer_trusted = peer_trusted
        self.https = https
        self.route = None
        self.principal: Principal | None = None
        self.code: str | None = None


class PublicHandler:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        rt = self.runtime
        snapshot = rt.snapshot
        server = snapshot.config.server
        request_id = request_id_of(request)
        peer = request.remote
        route_name = "-"
        key_id = None
        code: str | None = None
        ctx: RequestContext | None = None
        try:
            denial, ctx = self._precheck(request, request_id, peer)
            if denial is None:
                assert ctx is not None
                local = snapshot.local_handler(ctx.path)
                if local is not None:
                    route_name = "management"
                    response = await local(request, ctx)
                    code = ctx.code
                    if ctx.principal is not None:
                        key_id = ctx.principal.key.id
                else:
                    response, route_name, key_id, code = await self._proxy(request, ctx, peer)
            else:
                response = error_response(denial, request_id)
                code = denial.code
        except web.HTTPException:
            raise
        except Exception:
            log.exception(
                "unexpected error handling %s %s", request.method, rt.access_log.mask(request_id)
            )
            denial = Denial("internal_error")
            response = error_response(denial, request_id)
            code = denial.code
        duration = time.perf_counter() - started
        rt.metrics.observe(route_name, code or "ok", duration, code)
        if server.access_log:
            rt.access_log.write(
                method=request.method,
                path=ctx.path if ctx is not None else "-",
                status=response.status,
                duration=duration,
                request_id=rt.access_log.mask(request_id),  # a client may send its key as the id
                client_ip=peer,
                key_id=key_id,
                route=route_name,
                code=code,
            )
        return response

    def _precheck(self, request: web.BaseRequest, request_id: str, peer: str | None):
        snapshot = self.runtime.snapshot
        server = snapshot.config.server
        raw = request.raw_path
        if len(raw) > server.max_url_bytes:
            return URI_TOO_LONG, None
        raw_headers = request.raw_headers
        if len(raw_headers) > server.max_header_count:
            return HEADERS_TOO_LARGE, None
        for name, value in raw_headers:
            if len(name) + len(value) > server.max_header_bytes:
                return HEADERS_TOO_LARGE, None
        trusted = snapshot.trusted_proxies
        peer_trusted = bool(trusted) and _trusted(peer, trusted)
        https = is_https(
            request.transport is not None
            and request.transport.get_extra_info("sslcontext") is not None,
            peer_trusted,
            request.headers.getall("X-Forwarded-Proto", []) if peer_trusted else [],
        )
        if server.require_https and not https:
            return HTTPS_REQUIRED, None
        raw_path, _, query = raw.partition("?")
        try:
            path = normalise_path(raw_path)
        except PathError as exc:
            return Denial("bad_request", {"reason": str(exc)}), None
        return None, RequestContext(request_id, path, query, peer_trusted, https)

    async def _proxy(self, request: web.BaseRequest, ctx: RequestContext, peer: str | None):
        rt = self.runtime
        snapshot = rt.snapshot
        server = snapshot.config.server
        route = snapshot.router.match(ctx.path)
        if route is None:
            return error_response(ROUTE_NOT_FOUND, ctx.request_id), "-", None, ROUTE_NOT_FOUND.code
        method = request.method
        if not route.allows(method):
            denial = method_not_allowed(route)
            return error_response(denial, ctx.request_id), route.name, None, denial.code
        length = request.content_length
        if length is not None and length > server.max_body_bytes:
            denial = Denial("payload_too_large", {"max_body_bytes": server.max_body_bytes})
            return error_response(denial, ctx.request_id), route.name, None, denial.code
        principal: Principal | None = None
        identity: tuple[tuple[str, str], ...] = ()
        extra: dict[str, str] | None = None
        if route.auth_required:
            attempt = build_attempt(
                snapshot, route, method, ctx.path, request.headers, peer, ctx.peer_trusted
            )
            result = await rt.pipeline.authenticate(attempt)
            key_id = attempt.key.id if attempt.key is not None else None
            if isinstance(result, Denial):
                return error_response(result, ctx.request_id), route.name, key_id, result.code
            principal = result
            identity = principal.key.upstream_headers
            if principal.rate is not None:
                extra = principal.rate.headers()
        forwarded_host = request.headers.get("X-Forwarded-Host") if ctx.peer_trusted else None
        headers = upstream_request_headers(
            request.headers,
            forward_authorization=route.forward_authorization,
            identity=identity,
            request_id=ctx.request_id,
            peer=peer,
            proto="https" if ctx.https else "http",
            host=forwarded_host or request.headers.get("Host"),
        )
        mode = principal.key.record.mode if principal is not None else None
        upstream = route.upstream_for(mode)
        url = upstream + route.upstream_path(ctx.path)
        if ctx.query:
            url += "?" + ctx.query
        key_id = principal.key.id if principal is not None else None
        breaker = breaker_for(rt.extras, route, upstream) if route.circuit_breaker else None
        if breaker is not None and not breaker.allow():
            rt.metrics.upstream_errors.labels(route.name, "circuit_open").inc()
            denial = circuit_open(breaker)
            return error_response(denial, ctx.request_id), route.name, key_id, denial.code
        try:
            response = await forward(
                request,
                rt.session,
                url=url,
                headers=headers,
                timeout=route.timeout,
                max_body=server.max_body_bytes,
                extra_headers={"X-Request-Id": ctx.request_id, **(extra or {})},
            )
        except PayloadTooLarge:
            denial = Denial("payload_too_large", {"max_body_bytes": server.max_body_bytes})
            response = error_response(denial, ctx.request_id)
            response.headers.update(extra or {})  # the request counted against its limits
            return response, route.name, key_id, denial.code
        except UpstreamFailure as failure:
            if breaker is not None:
                breaker.failure()
            rt.metrics.upstream_errors.labels(route.name, failure.kind).inc()
            response = error_response(failure.denial, ctx.request_id)
            response.headers.update(extra or {})
            return response, route.name, key_id, failure.denial.code
        except UpstreamBrokeOff as broken:
            if breaker is not None:
                breaker.failure()
            rt.metrics.upstream_errors.labels(route.name, "broken").inc()
            log.warning(
                "upstream of route %s broke off the response to %s; client connection closed",
                route.name,
                rt.access_log.mask(ctx.request_id),
            )  # the path is not logged: it may hold a key
            return broken.response, route.name, key_id, "upstream_unavailable"
        if breaker is not None:
            breaker.success()
        return response, route.name, key_id, None


def method_not_allowed(route: Route) -> Denial:
    return Denial(
        "method_not_allowed",
        {"allowed": sorted(route.methods or ())},
        {"Allow": route.allow_header},
    )


def build_attempt(
    snapshot: Snapshot,
    route: Route,
    method: str,
    path: str,
    headers: CIMultiDictProxy[str],
    peer: str | None,
    peer_trusted: bool,
) -> Attempt:
    """What a request presents to the pipeline (shared by the proxy and forward auth)."""
    return Attempt(
        method=method,
        path=path,
        authorization=headers.getall("Authorization", []),
        client_ip=client_ip(peer, headers.getall("X-Forwarded-For", []), snapshot.trusted_proxies)
        if peer_trusted
        else parse_ip(peer),
        referer=headers.get("Referer") or headers.get("Origin"),
        route_name=route.name,
        required_permission=route.required_permission(method),
        route_rate_limit=route.rate_limit,
    )


def _trusted(peer: str | None, trusted) -> bool:
    address = parse_ip(peer)
    return address is not None and in_networks(address, trusted)

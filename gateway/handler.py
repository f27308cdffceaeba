"""The public port's request handler: SPEC §4's checks in order, then forward (or answer).

One path for every request: the front checks (head sizes, request target,
HTTPS, path) on a :class:`~gateway.pipeline.RequestContext`; then either a
path the gateway answers itself (management, forward auth, dashboard), or a
route: route, method, declared size, then the key's checks through
:meth:`~gateway.pipeline.Pipeline.authenticate`, and only then
``100 Continue`` and the upstream. Every answer, whatever happened, is
counted in the metrics and written to the access log.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from .checks.cors import CorsPolicy, apply_cors_headers, is_preflight
from .checks.head import head_denial
from .checks.https import is_https
from .checks.ip import client_ip, in_networks, parse_ip
from .checks.route import ROUTE_NOT_FOUND, method_denial, size_denial, too_large
from .checks.target import TargetError, split_target, strict_target, target_denial
from .compat.aiohttp import (
    BadHttpMessage,
    GatewayConnection,
    InvalidURLError,
    line_too_long_limit,
    response_started,
)
from .denials import SERVER, Denial, error_response
from .pipeline import Principal, RequestContext, attempt_for
from .proxy.breaker import circuit_open
from .proxy.forward import (
    BODYLESS_METHODS,
    CONTINUE,
    BodyStalled,
    ClientGone,
    Exchange,
    PayloadTooLarge,
    StreamCut,
    UpstreamBrokeOff,
    UpstreamFailure,
    forward,
)
from .proxy.headers import HOP_BY_HOP, handshake_headers, upstream_head
from .proxy.websocket import (
    WebSocketRelay,
    is_websocket_upgrade,
    offered_protocols,
    split_key,
)
from .routing import Route
from .runtime import Runtime, Snapshot
from .telemetry.logs import request_id as current_request_id
from .telemetry.tracing import new_ids, new_span_id, parse_traceparent

log = logging.getLogger("gateway.handler")

HTTPS_REQUIRED = Denial("https_required")
REQUEST_TIMEOUT = Denial("request_timeout")
MALFORMED = Denial("invalid_request", message="Malformed HTTP request")
INTERNAL = Denial("internal_error")
BOTH_KEY_FORMS = Denial(
    "invalid_authorization_header",
    message="Send the key either in Authorization or as one bearer.<key> subprotocol, not both",
)
UPSTREAM_TIMEOUT = Denial("upstream_timeout")
UPSTREAM_UNAVAILABLE = Denial("upstream_unavailable")
# What a refused handshake's answer does not take from the upstream's: hop-by-hop, the
# framing and description of a body that is not relayed, and the gateway's own.
_NOT_FROM_A_REFUSAL = HOP_BY_HOP | {"content-type", "content-encoding", "x-request-id"}
# Response headers the gateway sets itself, in place of the upstream's.
REPLACED = frozenset({"x-request-id"})
REPLACED_WITH_RATE_LIMIT = REPLACED | {
    "x-credits-remaining",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
}


class PublicHandler:
    """The handler of ``web.Server`` on the public port."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        rt = self.runtime
        rt.metrics.in_flight += 1
        try:
            return await self.answer(request, started)
        finally:
            rt.metrics.in_flight -= 1

    async def answer(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        connection = request.protocol
        if type(connection) is GatewayConnection:
            connection.request_began()
        else:
            connection = None
        rt = self.runtime
        snapshot = rt.snapshot
        headers = request.headers
        ctx = RequestContext(
            rt.request_ids.of(headers.get("X-Request-Id")), request.method, request.remote
        )
        self.trace(ctx, headers.get("traceparent"), headers)
        logged_as = current_request_id.set(ctx.request_id)  # for the log lines it causes
        route_name = "-"
        try:
            denial = self.front(request, ctx, snapshot)
            if denial is not None:
                response = self.refuse(denial, ctx)
                if denial.code == "bad_request":
                    response.force_close()  # CONNECT, absolute or asterisk form: no second request
                # refused before its route was looked up: a listed origin still reads why
                ctx.cors = self.cors_before_route(request, snapshot)
            else:
                local = snapshot.raw_local_handler(request.raw_path) or snapshot.local_handler(
                    ctx.match_path
                )
                if local is not None:
                    route_name = "management"
                    cors = snapshot.management_cors
                    if cors is not None and is_preflight(ctx.method, request.headers):
                        response = self.preflight(request, ctx, cors)
                    else:
                        if cors is not None:
                            ctx.cors = cors.headers_for(request.headers.get("Origin"))
                        response = await local(request, ctx)
                        if not response.prepared:
                            response.headers.setdefault("Server", SERVER)
                else:
                    response = await self.proxy(request, ctx, snapshot, connection)
                    if ctx.route is not None:
                        route_name = ctx.route.name
        except Exception:
            log.exception(
                "unexpected error handling %s %s",
                request.method,
                rt.access_log.mask(ctx.request_id),
            )
            response = self.refuse(INTERNAL, ctx)
        except BaseException:  # cancelled: the client went away
            if ctx.span is not None:
                rt.tracer.end_server(
                    ctx.span,
                    method=ctx.method,
                    path=rt.access_log.mask(ctx.path),
                    status=None,
                    route=route_name,
                    key_id=ctx.key_id,
                    code="client_closed",
                )
            raise
        finally:
            if connection is not None:
                connection.request_ended()
        if ctx.cors is not None and not response.prepared:
            apply_cors_headers(response.headers, ctx.cors)  # errors too: the page reads why
        self.observe(request, ctx, response, route_name, started)
        current_request_id.reset(logged_as)
        if connection is not None and connection.draining:
            response.force_close()
        elif request.body_exists and request.content_length is None:
            # A chunked body's trailers: aiohttp's parser can carry them into the headers of
            # the next request on this connection, so there is no next request on it.
            response.force_close()
        return response

    def trace(self, ctx: RequestContext, traceparent: str | None, headers) -> None:
        """Continue the client's trace, else start one; with a tracer, open the server span."""
        parent = parse_traceparent(traceparent) if traceparent else None
        tracestate = None
        if parent is not None:
            tracestate = ",".join(headers.getall("tracestate", ())) or None
            if tracestate is not None and not tracestate.isascii():
                tracestate = None
            ctx.tracestate = tracestate
        tracer = self.runtime.tracer
        if tracer is None:
            if parent is None:
                ctx.trace_id, ctx.span_id = new_ids()
            else:
                ctx.trace_id, _, ctx.trace_flags = parent
                ctx.span_id = new_span_id()
        else:
            span, token, ctx.trace_id, ctx.span_id, ctx.trace_flags = tracer.start_server(
                ctx.method, parent, tracestate
            )
            ctx.span = (span, token)

    def observe(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        response: web.StreamResponse,
        route: str,
        started: float,
    ) -> None:
        rt = self.runtime
        now = time.perf_counter()
        duration = now - started  # the whole exchange, for the access log
        headers_at = ctx.headers_at
        code = ctx.code
        status = response.status
        rt.metrics.observe(
            route,
            code,
            status,
            (headers_at if headers_at is not None else now) - started,  # to the response head
            ctx.upstream_seconds,
        )
        key_id = ctx.key_id  # set by the pipeline once the key was identified
        if rt.snapshot.config.server.access_log:
            client = ctx.client_address
            if client is None:
                client = self.client_address(request, ctx) if ctx.peer_trusted else ctx.peer
            body_in = ctx.request_body_size
            if body_in is None:
                body_in = request.content_length if request.body_exists else 0
            body_out = ctx.response_body_size
            if body_out is None:
                if ctx.method == "HEAD" or status in (101, 204, 304):
                    body_out = 0
                else:
                    body_out = response.content_length
            rt.access_log.write(
                method=ctx.method,
                path=ctx.path,
                status=status,
                duration=duration,
                upstream_duration=ctx.upstream_duration,
                request_id=rt.access_log.mask(ctx.request_id),  # never a key sent as the id
                client_address=client,
                user_agent=request.headers.get("User-Agent"),
                request_body_size=body_in,
                response_body_size=body_out,
                trace_id=ctx.trace_id,
                span_id=ctx.span_id,
                key_id=key_id,
                account_id=ctx.account_id,
                route=route,
                code=code,
            )
        if ctx.span is not None:
            rt.tracer.end_server(
                ctx.span,
                method=ctx.method,
                path=rt.access_log.mask(ctx.path),
                status=status,
                route=route,
                key_id=key_id,
                code=code,
            )

    def client_address(self, request: web.BaseRequest, ctx: RequestContext) -> str | None:
        """The client IP as SPEC §3 reads it, behind a trusted proxy (None: unreadable)."""
        address = client_ip(
            ctx.peer,
            request.headers.getall("X-Forwarded-For", []),
            self.runtime.snapshot.trusted_proxies,
        )
        return str(address) if address is not None else None

    @staticmethod
    def cors_before_route(request: web.BaseRequest, snapshot: Snapshot) -> dict[str, str] | None:
        """The CORS headers of the route (or management path) a request refused before its
        route was looked up would have had: every answer to a listed origin carries them."""
        try:
            _, match_path, _ = split_target(request.raw_path)
        except TargetError:
            return None
        if snapshot.local_handler(match_path) is not None:
            policy = snapshot.management_cors
        else:
            route = snapshot.router.match(match_path)
            policy = route.cors if route is not None else None
        return policy.headers_for(request.headers.get("Origin")) if policy is not None else None

    @staticmethod
    def refuse(denial: Denial, ctx: RequestContext) -> web.Response:
        ctx.code = denial.code
        return error_response(denial, ctx.request_id)

    # -- the front checks: every request, before anything is looked up

    def front(
        self, request: web.BaseRequest, ctx: RequestContext, snapshot: Snapshot
    ) -> Denial | None:
        server = snapshot.config.server
        raw = request.raw_path
        denial = head_denial(raw, request.raw_headers, server)
        if denial is not None:
            return denial
        try:
            strict_target(raw)  # before any check (SPEC §6)
        except TargetError as exc:
            return target_denial(exc)
        trusted = snapshot.trusted_proxies
        peer_trusted = bool(trusted) and _trusted(ctx.peer, trusted)
        ctx.peer_trusted = peer_trusted
        transport = request.transport
        ctx.https = is_https(
            transport is not None and transport.get_extra_info("sslcontext") is not None,
            peer_trusted,
            request.headers.getall("X-Forwarded-Proto", []) if peer_trusted else [],
        )
        if server.require_https and not ctx.https:
            return HTTPS_REQUIRED
        try:
            path, match_path, query = split_target(raw)
        except TargetError as exc:
            return target_denial(exc)
        ctx.path, ctx.match_path, ctx.query = path, match_path, query
        return None

    # -- a route: checks, then the upstream

    async def proxy(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        snapshot: Snapshot,
        connection: GatewayConnection | None,
    ) -> web.StreamResponse:
        rt = self.runtime
        server = snapshot.config.server
        route = snapshot.router.match(ctx.match_path)
        if route is None:
            return self.refuse(ROUTE_NOT_FOUND, ctx)
        ctx.route = route
        method = ctx.method
        cors = route.cors
        if cors is not None:
            if is_preflight(method, request.headers):
                return self.preflight(request, ctx, cors)  # before the method and key checks
            ctx.cors = cors.headers_for(request.headers.get("Origin"))
        denial = method_denial(route, method) or size_denial(
            request.content_length, server.max_body_bytes
        )
        if denial is not None:
            return self.refuse(denial, ctx)
        headers = request.headers
        identity = b""
        extra: dict[str, str] | None = None
        mode = None
        principal = None
        upgrade = route.websocket and is_websocket_upgrade(method, headers)
        protocols: list[str] = []
        subprotocol_key, several_keys = None, False
        if upgrade:  # a key offered as a subprotocol never goes upstream, whatever the route
            subprotocol_key, protocols, several_keys = split_key(offered_protocols(headers))
        if route.auth_required:
            attempt = attempt_for(
                ctx,
                headers,
                snapshot.trusted_proxies,
                route_name=route.name,
                required_permission=route.required_permission(method),
                route_rate_limit=route.rate_limit,
                cost=route.cost,
            )
            if subprotocol_key is not None:
                if several_keys or attempt.authorization:  # both forms at once: which one?
                    return self.refuse(BOTH_KEY_FORMS, ctx)
                attempt.authorization = [f"Bearer {subprotocol_key}"]
            result = await rt.pipeline.authenticate(attempt)
            if isinstance(result, Denial):
                return self.refuse(result, ctx)
            ctx.principal = principal = result
            identity = result.key.upstream_head
            mode = result.key.record.mode
            if result.rate is not None:
                extra = result.rate.headers()
            if result.credits is not None:
                extra = extra or {}
                extra["X-Credits-Remaining"] = str(result.credits)
        target = route.target_for(mode)
        breaker = (
            rt.breakers.get(route.name, target.origin, *route.circuit_breaker)
            if route.circuit_breaker
            else None
        )
        if breaker is not None and not breaker.allow():
            rt.metrics.upstream_errors.labels(route.name, "circuit_open").inc()
            return self._with(self.refuse(circuit_open(breaker), ctx), extra)
        if upgrade:
            return await self.websocket(request, ctx, route, principal, protocols, identity, extra)
        tracer = rt.tracer
        upstream_span = None
        if tracer is not None:
            origin = rt.pool.origin(target.origin)
            upstream_span, ctx.upstream_span_id = tracer.start_upstream(
                method, origin.host, origin.port
            )
        exchange = self.exchange(request, ctx, route, identity, extra, mode)
        if principal is not None:
            exchange.streams = rt.streams
            exchange.key_hash = principal.key.record.hash
            exchange.key_expires_at = principal.key.expires_at
        if (
            exchange.body != "none"
            and request.version >= (1, 1)
            and headers.get("Expect", "").lower() == "100-continue"
            and request.transport is not None
        ):
            request.transport.write(CONTINUE)  # only now: the request passed every check
        response = None
        sent_at = time.perf_counter()
        try:
            response = await forward(request, connection, rt.pool, exchange)
        except PayloadTooLarge:
            ctx.upstream_seconds = exchange.upstream_seconds
            return self._closing(
                self._with(self.refuse(too_large(server.max_body_bytes), ctx), extra)
            )
        except BodyStalled:
            return self._closing(self._with(self.refuse(REQUEST_TIMEOUT, ctx), extra))
        except ClientGone:
            return self._closing(self._with(self.refuse(MALFORMED, ctx), extra))
        except UpstreamFailure as failure:
            ctx.upstream_seconds = exchange.upstream_seconds
            if breaker is not None:
                breaker.failure()
            rt.metrics.upstream_errors.labels(route.name, failure.kind).inc()
            return self._with(self.refuse(failure.denial, ctx), extra)
        except UpstreamBrokeOff as broken:
            ctx.upstream_seconds, ctx.headers_at = exchange.upstream_seconds, exchange.headers_at
            if breaker is not None:
                breaker.failure()
            rt.metrics.upstream_errors.labels(route.name, "broken").inc()
            ctx.code = "upstream_unavailable"
            log.warning(
                "upstream of route %s broke off the response to %s; client connection closed",
                route.name,
                rt.access_log.mask(ctx.request_id),
            )  # the path is not logged: it may hold a key
            return broken.response
        except StreamCut as cut:  # the gateway's own doing: the upstream is not at fault
            ctx.upstream_seconds, ctx.headers_at = exchange.upstream_seconds, exchange.headers_at
            ctx.code = cut.code
            return cut.response
        finally:
            ctx.upstream_duration = time.perf_counter() - sent_at
            if exchange.body == "chunked":
                ctx.request_body_size = exchange.body_sent
            ctx.response_body_size = exchange.body_relayed
            if upstream_span is not None:
                tracer.end_upstream(
                    upstream_span,
                    response.status if response is not None else None,
                    None if response is not None else (ctx.code or "upstream_error"),
                )
        ctx.upstream_seconds, ctx.headers_at = exchange.upstream_seconds, exchange.headers_at
        if breaker is not None:
            breaker.success()
        return response

    def exchange(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        route: Route,
        identity: bytes,
        extra: dict[str, str] | None,
        mode: str | None,
    ) -> Exchange:
        """The upstream request for ``request``: target, head with the gateway's framing."""
        server = self.runtime.snapshot.config.server
        target = route.target_for(mode)
        path = target.base + route.upstream_path(ctx.path)
        if ctx.query:
            path = f"{path}?{ctx.query}"
        method = ctx.method
        if request.body_exists:
            length = request.content_length
            if length is not None:
                body, framing = "length", b"Content-Length: %d\r\n" % length
            else:
                body, framing = "chunked", b"Transfer-Encoding: chunked\r\n"
        else:
            body = "none"
            framing = b"" if method in BODYLESS_METHODS else b"Content-Length: 0\r\n"
        if target.authorization is not None and not route.forward_authorization:
            identity += b"Authorization: " + target.authorization + b"\r\n"
        headers = request.headers
        host = headers.get("Host")
        forwarded_host = headers.get("X-Forwarded-Host") if ctx.peer_trusted else None
        proto = "https" if ctx.https else "http"
        origin = self.runtime.pool.origin(target.origin)
        trace = b"traceparent: 00-%s-%s-%s\r\n" % (
            ctx.trace_id.encode(),
            (ctx.upstream_span_id or ctx.span_id).encode(),
            ctx.trace_flags.encode(),
        )
        if ctx.tracestate is not None:
            trace += b"tracestate: " + ctx.tracestate.encode() + b"\r\n"
        head = upstream_head(
            f"{method} {path} HTTP/1.1\r\n".encode(),
            request.raw_headers,
            host=origin.host_header,
            forward_authorization=route.forward_authorization,
            identity=identity,
            request_id=ctx.request_id,
            peer=ctx.peer,
            proto=proto.encode(),
            forwarded_host=(forwarded_host or host or "").encode() or None,
            framing=framing,
            trace=trace,
        )
        client_origin = f"{proto}://{host}".encode() if host else None
        response_extra = {"X-Request-Id": ctx.request_id}
        if extra:
            response_extra.update(extra)
            replaced = REPLACED_WITH_RATE_LIMIT
        else:
            replaced = REPLACED
        if ctx.cors is not None:
            response_extra.update(ctx.cors)
        return Exchange(
            origin=origin,
            head=head,
            body=body,
            timeout=route.timeout,
            max_body=server.max_body_bytes,
            body_idle_timeout=server.body_idle_timeout,
            extra_headers=response_extra,
            replaced=replaced,
            strip_cors=route.cors is not None,
            relocate=lambda location: target.relocate(location, route, client_origin),
        )

    def preflight(
        self, request: web.BaseRequest, ctx: RequestContext, cors: CorsPolicy
    ) -> web.Response:
        """A CORS preflight, answered here: never forwarded, no key, not counted (SPEC §12)."""
        headers = request.headers
        answer = cors.preflight(
            headers.get("Origin", ""),
            headers.get("Access-Control-Request-Method", ""),
            ",".join(headers.getall("Access-Control-Request-Headers", ())),
        )
        if isinstance(answer, Denial):
            return self.refuse(answer, ctx)
        ctx.code = None
        response = web.Response(status=204, headers=answer)
        response.headers["X-Request-Id"] = ctx.request_id
        response.headers["Server"] = SERVER
        return response

    async def websocket(
        self,
        request: web.BaseRequest,
        ctx: RequestContext,
        route: Route,
        principal: Principal | None,
        protocols: list[str],
        identity: bytes,
        extra: dict[str, str] | None,
    ) -> web.StreamResponse:
        """Open the upstream's WebSocket, answer the client's handshake, relay until closed."""
        rt = self.runtime
        mode = principal.key.record.mode if principal is not None else None
        target = route.target_for(mode)
        scheme, _, rest = target.origin.partition("://")
        url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}{target.base}"
        url += route.upstream_path(ctx.path) + (f"?{ctx.query}" if ctx.query else "")
        exchange = self.exchange(request, ctx, route, identity, None, mode)
        headers = handshake_headers(exchange.head)
        assert rt.websocket_client is not None
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(route.timeout):
                upstream = await rt.websocket_client.ws_connect(
                    url,
                    protocols=protocols,
                    headers=headers,
                    autoclose=False,
                    autoping=True,
                    max_msg_size=0,
                )
        except aiohttp.WSServerHandshakeError as refused:  # the upstream's own refusal
            ctx.upstream_seconds = time.perf_counter() - sent
            ctx.code = "upstream_refused_websocket"
            return self._with(self._refused_handshake(refused, ctx), extra)
        except TimeoutError:
            return self._with(self.refuse(UPSTREAM_TIMEOUT, ctx), extra)
        except (aiohttp.ClientError, OSError):
            return self._with(self.refuse(UPSTREAM_UNAVAILABLE, ctx), extra)
        ctx.upstream_seconds = time.perf_counter() - sent
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            autoping=True,
            max_msg_size=0,
        )
        client.headers["X-Request-Id"] = ctx.request_id
        client.headers["Server"] = SERVER  # never aiohttp's, which names versions (SPEC §5)
        if extra:
            client.headers.update(extra)
        if ctx.cors is not None:
            client.headers.update(ctx.cors)
        ctx.headers_at = time.perf_counter()
        try:
            await client.prepare(request)
        except Exception:
            await upstream.close()
            raise
        relay = WebSocketRelay(client, upstream, route.websocket_idle_timeout)
        key_hash = principal.key.record.hash if principal is not None else None
        rt.streams.add(relay, key_hash, principal.key.expires_at if principal else None)
        gauge = rt.metrics.websockets.labels(route.name)
        gauge.inc()
        try:
            await relay.run()
        finally:
            rt.streams.discard(relay, key_hash)
            gauge.dec()
        return client

    @staticmethod
    def _refused_handshake(refused: aiohttp.WSServerHandshakeError, ctx: RequestContext):
        """The upstream's refusal of a handshake, as the client gets it: its status and
        headers (the body is not relayed, so nothing that describes one)."""
        response = web.Response(status=refused.status)
        for name, value in (refused.headers or {}).items():
            lower = name.lower()
            if lower not in _NOT_FROM_A_REFUSAL and not lower.startswith("sec-websocket-"):
                response.headers.add(name, value)
        response.headers["X-Request-Id"] = ctx.request_id
        response.headers.setdefault("Server", SERVER)
        return response

    @staticmethod
    def _with(response: web.Response, extra: dict[str, str] | None) -> web.Response:
        """A refusal after the rate limit counted the request carries its headers."""
        if extra:
            response.headers.update(extra)
        return response

    @staticmethod
    def _closing(response: web.Response) -> web.Response:
        """The client's body was not read to its end: the connection cannot carry another request."""
        response.force_close()
        return response

    # -- what aiohttp's parser refused, in the same envelope and log

    def parser_refusal(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> web.StreamResponse | None:
        if response_started(request):
            return None
        server = self.runtime.snapshot.config.server
        if status == 400 and isinstance(exc, BadHttpMessage):
            limit = line_too_long_limit(exc)
            if limit is not None:
                code = (
                    "uri_too_long"
                    if limit == url_parser_limit(server)
                    else ("request_header_fields_too_large")
                )
                denial = Denial(code)
            elif "Too many headers" in str(exc):
                denial = Denial("request_header_fields_too_large")
            elif isinstance(exc, InvalidURLError):  # a control or non-ASCII byte in the target
                denial = target_denial(
                    TargetError("the request target holds a character HTTP does not allow")
                )
            else:
                denial = MALFORMED
            log.debug("refused a malformed request from %s: %s", request.remote, exc)
        elif status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            denial = INTERNAL
        else:
            return None
        ctx = RequestContext(self.runtime.request_ids.next(), request.method, request.remote)
        self.trace(ctx, None, request.headers)
        response = self.refuse(denial, ctx)
        self.observe(request, ctx, response, "-", time.perf_counter())
        return response


PARSER_HEADROOM = 1024
"""aiohttp's parser limits sit this far above the gateway's own, so the gateway answers first."""


def url_parser_limit(server) -> int:
    return server.max_url_bytes + PARSER_HEADROOM


def parser_limits(server) -> dict[str, int]:
    """aiohttp parser limits for ``server``: above the gateway's limits, but bounded.

    The request line and header limits differ by at least one byte so that a
    ``LineTooLong`` from the parser tells which of the two overflowed.
    """
    url = url_parser_limit(server)
    field = server.max_header_bytes + PARSER_HEADROOM
    if field == url:
        field += 1
    return {
        "max_line_size": url,
        "max_field_size": field,
        "max_headers": server.max_header_count + 16,
    }


def _trusted(peer: str | None, trusted) -> bool:
    address = parse_ip(peer)
    return address is not None and in_networks(address, trusted)


__all__ = ["PublicHandler", "SERVER", "parser_limits"]

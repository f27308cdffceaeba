"""The request pipeline of SPEC §4 from credentials to rate limit, quota and credits.

Every entry point (the proxy, the management API, forward auth) first runs
the front checks of :mod:`gateway.checks.front` on a :class:`RequestContext`,
then builds one :class:`Attempt` with :func:`attempt_for` and asks
:meth:`Pipeline.authenticate` for a :class:`Principal` or a :class:`Denial`;
:func:`gateway.denials.error_response` is the one way a denial is answered.
Checks run in the SPEC's order; only faults (the store down) raise.

A request with a ``cost`` (the proxy and forward auth give the route's; the
management endpoints none) whose key is metered, by its plan's quota or its
own credits, is then decided by the :class:`~gateway.metering.Meter`, only
once the rate limit has let it through: a request the rate limit refuses
spends nothing. An unmetered key costs no await and no allocation here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checks.credentials import bearer_token
from .checks.endpoint import endpoint_allowed
from .checks.ip import IPAddress, client_ip, ip_allowed, parse_ip
from .checks.key_status import key_status_denial
from .checks.permission import permission_denial
from .checks.referrer import referrer_allowed
from .denials import BACKEND_DOWN, Denial
from .keys.cache import KeyCache
from .keys.format import hash_secret, parse_mode
from .keys.model import CompiledKey
from .metering import Meter, Quota
from .metering.refusal import metering_denial
from .store.connection import StoreUnavailable

if TYPE_CHECKING:
    from .ratelimit.limiter import RateLimitDecision
    from .telemetry.tracing import Tracer

INVALID_KEY = Denial("invalid_api_key")
IP_NOT_ALLOWED = Denial("ip_not_allowed")
REFERRER_NOT_ALLOWED = Denial("referrer_not_allowed")
ENDPOINT_NOT_ALLOWED = Denial("endpoint_not_allowed")


@dataclass(slots=True)
class Principal:
    """An authenticated caller."""

    key: CompiledKey
    rate: RateLimitDecision | None = None
    headers: dict[str, str] = field(default_factory=dict)
    credits: int | None = None  # the key's balance after this request, when it has credits


@dataclass(slots=True)
class Attempt:
    """What one request presented, for the checks to read."""

    method: str
    path: str
    authorization: list[str]
    client_ip: IPAddress | None
    referer: str | None
    route_name: str
    required_permission: str | None
    route_rate_limit: object | None = None
    key: CompiledKey | None = field(default=None)
    cost: int = 0  # what the request spends of a metered key: 0 for the gateway's own endpoints
    context: RequestContext | None = None  # told the key once identified, for the access log


class RequestContext:
    """What the front checks learned about one request; shared with the local handlers."""

    __slots__ = (
        "request_id",
        "method",
        "path",
        "match_path",
        "query",
        "peer",
        "peer_trusted",
        "https",
        "route",
        "principal",
        "key_id",
        "code",
        "cors",
        "headers_at",
        "upstream_seconds",
        "client_address",
        "account_id",
        "trace_id",
        "span_id",
        "trace_flags",
        "tracestate",
        "span",
        "upstream_span_id",
        "upstream_duration",
        "request_body_size",
        "response_body_size",
    )

    def __init__(self, request_id: str, method: str, peer: str | None):
        self.request_id = request_id
        self.method = method
        self.peer = peer
        self.path = "-"  # the normalised path, as forwarded
        self.match_path = "-"  # the same without ``;`` parameters: what routes and checks see
        self.query = ""
        self.peer_trusted = False
        self.https = False
        self.route = None
        self.principal: Principal | None = None
        self.key_id: str | None = None  # the key identified, also when it was refused
        self.code: str | None = None
        self.cors: dict[str, str] | None = None  # CORS headers every answer carries
        # perf_counter() when the response headers went out, for a response streamed
        # before the handler returns (proxied bodies, WebSockets); else the handler's end
        self.headers_at: float | None = None
        self.upstream_seconds: float | None = None  # to the upstream's response headers
        self.client_address: str | None = None  # the client IP as SPEC §3 reads it, once read
        self.account_id: str | None = None  # the identified key's account
        # W3C trace context: the trace, the gateway's span in it, and what goes upstream
        self.trace_id = ""
        self.span_id = ""
        self.trace_flags = "01"
        self.tracestate: str | None = None
        self.span = None  # (span, context token) when spans are recorded
        self.upstream_span_id: str | None = None  # the upstream's parent, when recorded
        self.upstream_duration: float | None = None
        self.request_body_size: int | None = None  # bytes forwarded, for a chunked body
        self.response_body_size: int | None = None  # bytes relayed, for a streamed answer


def attempt_for(
    ctx: RequestContext,
    headers,
    trusted_proxies,
    *,
    route_name: str,
    required_permission: str | None,
    route_rate_limit: object | None = None,
    method: str | None = None,
    path: str | None = None,
    cost: int = 0,
) -> Attempt:
    """What a request presents to :meth:`Pipeline.authenticate` (every entry point builds it here).

    ``method`` and ``path`` default to the request's own; forward auth passes
    the original request's. ``cost`` is the route's (SPEC §16); the §7, §14
    and §15 endpoints leave it at 0 and spend nothing.
    """
    if ctx.peer_trusted:
        address = client_ip(ctx.peer, headers.getall("X-Forwarded-For", []), trusted_proxies)
        ctx.client_address = str(address) if address is not None else None
    else:
        address = parse_ip(ctx.peer)
    return Attempt(
        method=method or ctx.method,
        path=path or ctx.match_path,
        authorization=headers.getall("Authorization", []),
        client_ip=address,
        referer=headers.get("Referer") or headers.get("Origin"),
        route_name=route_name,
        required_permission=required_permission,
        route_rate_limit=route_rate_limit,
        cost=cost,
        context=ctx,
    )


def no_quota(plan: str) -> Quota | None:
    return None


class Pipeline:
    def __init__(
        self, *, prefix: str, cache: KeyCache, limiter=None, usage=None, alerts=None,
        meter: Meter | None = None, quota_for: Callable[[str], Quota | None] = no_quota,
        clock=time.time,
    ):  # fmt: skip
        self.prefix = prefix
        self.cache = cache
        self.limiter = limiter
        self.usage = usage
        self.alerts = alerts  # the AlertDetector: in-process counts, no store call
        self.meter = meter  # quotas and credits (SPEC §16)
        self.quota_for = quota_for  # a plan's quota in the live config, None for none
        self.clock = clock
        self.tracer: Tracer | None = None  # spans for the store calls, when recorded

    async def identify(self, authorization: list[str]) -> CompiledKey | Denial:
        token = bearer_token(authorization)
        if isinstance(token, Denial):
            return token
        if not token.isascii():
            return INVALID_KEY
        key_hash = hash_secret(token)
        known = self.cache.fresh(key_hash)
        if known is not None:
            return known  # a cached key: no format check, no store, no await
        if parse_mode(token, self.prefix) is None:
            return INVALID_KEY  # never reaches the store
        try:
            if self.tracer is None:
                key = await self.cache.get(key_hash)
            else:
                with self.tracer.store_span("keys.lookup"):
                    key = await self.cache.get(key_hash)
        except StoreUnavailable:
            return BACKEND_DOWN
        return key if key is not None else INVALID_KEY

    async def authenticate(self, attempt: Attempt) -> Principal | Denial:
        key = await self.identify(attempt.authorization)
        if isinstance(key, Denial):
            return key
        attempt.key = key
        ctx = attempt.context
        if ctx is not None:  # logged with the key and its account, also if refused below
            ctx.key_id = key.record.id
            ctx.account_id = key.record.account_id
        denial = self.restrict(key, attempt)
        if denial is not None:
            self._count(key, attempt, denial.code)
            return denial
        principal = Principal(key)
        if self.limiter is not None:
            if self.tracer is None:
                decision = await self.limiter.check(
                    key, attempt.route_name, attempt.route_rate_limit
                )
            else:
                with self.tracer.store_span("ratelimit.check"):
                    decision = await self.limiter.check(
                        key, attempt.route_name, attempt.route_rate_limit
                    )
            if decision is not None:
                principal.rate = decision
                if not decision.allowed:
                    self._count(key, attempt, "rate_limit_exceeded")
                    return decision.denial()
        if attempt.cost and self.meter is not None:
            quota = self.quota_for(key.plan)
            if quota is not None or key.credits_id is not None:
                denial = await self.spend(key, attempt, principal, quota)
                if denial is not None:
                    self._count(key, attempt, denial.code)
                    return denial
        self._count(key, attempt, None)
        return principal

    async def spend(
        self, key: CompiledKey, attempt: Attempt, principal: Principal, quota: Quota | None
    ) -> Denial | None:
        """Spend the plan's quota and the key's credits on this request, or say why not."""
        assert self.meter is not None
        record = key.record
        if self.tracer is None:
            result = await self.meter.spend(
                record.account_id, record.mode, quota, key.credits_id, attempt.cost, key.id
            )
        else:
            with self.tracer.store_span("metering.spend"):
                result = await self.meter.spend(
                    record.account_id, record.mode, quota, key.credits_id, attempt.cost, key.id
                )
        if result.allowed:
            principal.credits = result.credits_remaining
            return None
        rate = principal.rate
        return metering_denial(
            result, quota, attempt.cost, rate.headers() if rate is not None else None
        )

    def restrict(self, key: CompiledKey, attempt: Attempt) -> Denial | None:
        """Status, restrictions and permission, in the SPEC's order."""
        denial = key_status_denial(key.revoked, key.expires_at, self.clock())
        if denial is not None:
            return denial
        if key.allowed_ips and not ip_allowed(attempt.client_ip, key.allowed_ips):
            return IP_NOT_ALLOWED
        if key.allowed_referrers and not referrer_allowed(attempt.referer, key.allowed_referrers):
            return REFERRER_NOT_ALLOWED
        if key.allowed_endpoints and not endpoint_allowed(
            attempt.method, attempt.path, key.allowed_endpoints
        ):
            return ENDPOINT_NOT_ALLOWED
        return permission_denial(key.permissions, attempt.required_permission)

    def _count(self, key: CompiledKey, attempt: Attempt, code: str | None) -> None:
        if self.usage is not None:
            self.usage.record(key, attempt.route_name, code)
        if self.alerts is not None:
            self.alerts.observe(key, attempt.client_ip, code)

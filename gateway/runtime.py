"""One worker's live state: the config snapshot and the resources built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .checks.cors import CorsPolicy
from .checks.ip import Network
from .config.schema import Config
from .keys.cache import KeyCache
from .keys.invalidation import InvalidationListener
from .keys.model import CompiledKey
from .keys.service import KeyService
from .keys.store import KeyStore
from .metering import Meter
from .pipeline import Pipeline
from .proxy.breaker import Breakers
from .proxy.streams import OpenStreams
from .proxy.upstream import UpstreamPool
from .ratelimit import RateLimiter
from .request_id import RequestIds
from .routing import Router, cors_policy
from .store.health import StoreMonitor
from .telemetry.accesslog import AccessLog
from .telemetry.metrics import Metrics
from .telemetry.tracing import Tracer
from .usage import UsageRecorder

LocalHandler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Snapshot:
    """Everything derived from one config file; a reload swaps the whole snapshot."""

    config: Config
    router: Router
    trusted_proxies: tuple[Network, ...]
    local_routes: tuple[tuple[str, bool, LocalHandler], ...] = ()  # (path, is_prefix, handler)
    local_starts: tuple[str, ...] = ()  # every local path starts with one of these
    # local prefix paths dispatched on the path as sent (handlers with judges_raw_path)
    raw_locals: tuple[tuple[str, LocalHandler], ...] = ()
    raw_starts: tuple[str, ...] = ()
    management_cors: CorsPolicy | None = None

    @classmethod
    def build(
        cls, config: Config, local_routes: tuple[tuple[str, bool, LocalHandler], ...] = ()
    ) -> Snapshot:
        raw = tuple(
            (target, handler)
            for target, is_prefix, handler in local_routes
            if is_prefix and getattr(handler, "judges_raw_path", False)
        )
        return cls(
            config=config,
            router=Router(config),
            trusted_proxies=tuple(config.server.trusted_proxies),
            local_routes=local_routes,
            local_starts=tuple({target for target, _, _ in local_routes}),
            raw_locals=raw,
            raw_starts=tuple(target for target, _ in raw),
            management_cors=cors_policy(
                config.management.cors, frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE"})
            ),
        )

    def raw_local_handler(self, raw_path: str) -> LocalHandler | None:
        """The handler for a request whose path *as sent* is under a raw-judged local path."""
        if not raw_path.startswith(self.raw_starts):  # () matches nothing
            return None
        path = raw_path.partition("?")[0]
        for target, handler in self.raw_locals:
            if path == target or path.startswith(target + "/"):
                return handler
        return None

    def local_handler(self, path: str) -> LocalHandler | None:
        if not path.startswith(self.local_starts):
            return None  # most requests: one C-level test
        for target, is_prefix, handler in self.local_routes:
            if path == target or (is_prefix and path.startswith(target + "/")):
                return handler
        return None


@dataclass
class Runtime:
    """One worker's live state. Built by :func:`gateway.app.open_runtime`, read by every request."""

    snapshot: Snapshot
    store: KeyStore
    cache: KeyCache
    service: KeyService
    metrics: Metrics
    access_log: AccessLog
    pipeline: Pipeline
    limiter: RateLimiter
    usage: UsageRecorder
    streams: OpenStreams
    pool: UpstreamPool = field(default_factory=UpstreamPool)
    websocket_client: aiohttp.ClientSession | None = None  # the upstream leg of WebSockets
    breakers: Breakers = field(default_factory=Breakers)
    request_ids: RequestIds = field(default_factory=RequestIds)
    invalidation: InvalidationListener | None = None
    store_monitor: StoreMonitor | None = None  # the store's state, for /readyz and /metrics
    config_path: str | None = None
    reload: Callable[[], None] | None = None  # SIGHUP asks for a reload through this
    # POST /reload on the admin port: reload now, answering what happened
    reload_now: Callable[[str], Awaitable[Any]] | None = None
    restart_required: tuple[str, ...] = ()  # changed settings the running process kept
    worker: int | None = None
    draining: bool = False  # /readyz answers 503 from the moment this is set
    webhooks: Any = None  # this replica's WebhookDispatcher, when it delivers
    alerts: Any = None  # this replica's AlertDetector, when alerts are on
    tracer: Tracer | None = None  # spans over OTLP, with tracing.otlp_endpoint set
    meter: Meter | None = None  # plan quotas and key credits on the request path (SPEC §16)

    @property
    def config(self) -> Config:
        return self.snapshot.config

    async def load_key(self, key_hash: str) -> CompiledKey | None:
        found = await self.store.load_by_hash(key_hash)
        if found is None:
            return None
        record, account = found
        return CompiledKey.build(record, account.plan if account else "default")

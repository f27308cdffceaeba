"""One worker's live state: the config snapshot and the resources built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from .checks.ip import Network
from .config.schema import Config
from .keys.cache import KeyCache
from .keys.model import CompiledKey
from .keys.service import KeyService
from .keys.store import KeyStore
from .ops.accesslog import AccessLog
from .ops.metrics import Metrics
from .routing import Router

if TYPE_CHECKING:
    from .pipeline import Pipeline


LocalHandler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Snapshot:
    """Everything derived from one config file; a reload swaps the whole snapshot."""

    config: Config
    router: Router
    trusted_proxies: tuple[Network, ...]
    local_routes: tuple[tuple[str, bool, LocalHandler], ...] = ()  # (path, is_prefix, handler)

    @classmethod
    def build(
        cls, config: Config, local_routes: tuple[tuple[str, bool, LocalHandler], ...] = ()
    ) -> Snapshot:
        return cls(
            config=config,
            router=Router(config),
            trusted_proxies=tuple(config.server.trusted_proxies),
            local_routes=local_routes,
        )

    def local_handler(self, path: str) -> LocalHandler | None:
        for target, is_prefix, handler in self.local_routes:
            if path == target or (is_prefix and path.startswith(target + "/")):
                return handler
        return None


@dataclass
class Runtime:
    snapshot: Snapshot
    store: KeyStore
    cache: KeyCache
    service: KeyService
    metrics: Metrics
    access_log: AccessLog
    pipeline: Pipeline | None = None
    session: aiohttp.ClientSession | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return self.snapshot.config

    async def load_key(self, key_hash: str) -> CompiledKey | None:
        found = await self.store.load_by_hash(key_hash)
        if found is None:
            return None
        record, account = found
        return CompiledKey.build(record, account.plan if account else "default")

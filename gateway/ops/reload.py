"""Hot reload of the configuration file: on SIGHUP and when the file changes.

A reload reads the file with the same loader as ``serve`` and ``check-config``,
builds a whole new :class:`~gateway.runtime.Snapshot` (routes, limits,
management paths) and swaps it in with one assignment. Each request reads the
snapshot once, so a request in flight finishes on the config it started with
and none is dropped. A file that does not load is refused: the errors are
logged, ``gateway_config_reloads_total{result="error"}`` counts it, and the
running config stays.

The file is polled (every second by default) for a change of its inode,
mtime or size and of the target of any symlink on its path: a Kubernetes
ConfigMap update swaps the ``..data`` symlink, which changes the resolved path.

Some settings only take effect at start (listeners, workers, TLS, the admin
port, every setting of the store connection, the key cache, the rate
limiter's fallback): a changed value is reported as needing a restart (a
warning in the log, ``restart_required`` in the reload's answer and in
``/readyz``) and the running value is kept in the new snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.loader import ConfigError, load_config
from ..config.schema import AdminConfig, Config, RedisConfig, WebhooksConfig
from ..runtime import Runtime, Snapshot

log = logging.getLogger("gateway.reload")

RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "workers", "tls"),
    "admin": tuple(AdminConfig.model_fields),  # the admin listener: all of it
    # The store connection: all of it (url, sentinel, cluster, tls, timeouts, prefix, ...).
    "redis": tuple(RedisConfig.model_fields),
    "keys": ("prefix", "cache_ttl", "negative_cache_ttl", "cache_max_size", "stale_if_error"),
    "rate_limits": ("on_store_error",),
    "tracing": ("otlp_endpoint", "sample_ratio", "service_name"),
    "logging": ("format",),
    "alerts": ("enabled",),  # the detectors run or not from the start (their thresholds reload)
    "webhooks": tuple(WebhooksConfig.model_fields),  # the dispatcher is built once
}
"""Settings read once at start: a reload keeps their running values."""

LocalRoutes = Callable[[Runtime], tuple]


@dataclass
class ReloadResult:
    """What a reload did: the answer of the admin port's ``POST /reload``."""

    reloaded: bool
    errors: list[str] = field(default_factory=list)  # why the file was refused
    restart_required: list[str] = field(default_factory=list)  # changed, kept until restart

    def answer(self) -> dict[str, Any]:
        if not self.reloaded:
            return {"status": "refused", "errors": self.errors}
        return {"status": "reloaded", "restart_required": self.restart_required}


def pin_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with every restart-only setting put back to its ``running`` value, and their names."""
    ignored: list[str] = []
    sections: dict[str, Any] = {}
    for section, fields in RESTART_ONLY.items():
        old_part, new_part = getattr(running, section), getattr(new, section)
        changed = [f for f in fields if getattr(old_part, f) != getattr(new_part, f)]
        if changed:
            ignored.extend(f"{section}.{f}" for f in changed)
            sections[section] = new_part.model_copy(
                update={f: getattr(old_part, f) for f in changed}
            )
    return (new.model_copy(update=sections) if sections else new), ignored


def _fingerprint(path: str) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path)  # follows symlinks
        return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


class ConfigReloader:
    def __init__(
        self,
        runtime: Runtime,
        path: str,
        local_routes: LocalRoutes,
        *,
        interval: float = 1.0,
    ):
        self.runtime = runtime
        self.path = path
        self.local_routes = local_routes
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._fingerprint = _fingerprint(path)
        self._digest = self._read_digest()
        self._pending: set[asyncio.Task[bool]] = set()

    def _read_digest(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        except OSError:
            return None

    # triggers

    def request(self) -> None:
        """Reload soon (safe to call from a signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="config-watch")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            current = _fingerprint(self.path)
            if current is None or current == self._fingerprint:
                continue  # a missing file (mid-swap) is looked at again next time
            self._fingerprint = current
            if self._read_digest() == self._digest:
                continue  # touched, same content
            await self.reload("file changed")

    # the reload itself

    async def reload(self, reason: str) -> bool:
        """Load, validate and swap in the file's config; False (old config kept) if it is invalid."""
        return (await self.reload_with_result(reason)).reloaded

    async def reload_with_result(self, reason: str) -> ReloadResult:
        """:meth:`reload`, answering what was refused or what needs a restart."""
        async with self._lock:
            metrics = self.runtime.metrics
            try:
                digest = self._read_digest()
                loaded = await asyncio.to_thread(load_config, self.path)
                new_config, ignored = pin_restart_only(self.runtime.config, loaded)
                snapshot = self._build(new_config)
            except ConfigError as exc:
                metrics.reloads.labels("error").inc()
                log.error(
                    "config reload (%s) refused, keeping the running config: %s",
                    reason, "; ".join(exc.errors),
                )  # fmt: skip
                return ReloadResult(False, errors=list(exc.errors))
            except Exception as exc:
                metrics.reloads.labels("error").inc()
                log.exception("config reload (%s) failed, keeping the running config", reason)
                return ReloadResult(False, errors=[f"{type(exc).__name__}: {exc}"])
            self.runtime.snapshot = snapshot  # the atomic swap
            service = self.runtime.service
            if hasattr(service, "config"):
                service.config = new_config
            self._digest = digest
            self._fingerprint = _fingerprint(self.path)
            metrics.reloads.labels("success").inc()
            self.runtime.restart_required = tuple(ignored)
            for name in ignored:
                log.warning(
                    "config reload: %s changed; needs a restart (the running value stays "
                    "until then)",
                    name,
                )
            log.info(
                "config reloaded (%s): %d route(s), %d plan(s)",
                reason, len(new_config.routes), len(new_config.plans),
            )  # fmt: skip
            return ReloadResult(True, restart_required=ignored)

    def _build(self, config: Config) -> Snapshot:
        """A whole snapshot for ``config``, local routes (management API) included.

        Local routes are built from the runtime's config, so the runtime
        briefly holds a provisional snapshot; nothing awaits in between, so no
        request can see it.
        """
        runtime = self.runtime
        running = runtime.snapshot
        runtime.snapshot = Snapshot.build(config)
        try:
            local = self.local_routes(runtime)
        finally:
            runtime.snapshot = running
        return Snapshot.build(config, local)

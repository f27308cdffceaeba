"""Routes compiled from the config: longest segment-boundary prefix wins (SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass

from .config.schema import HTTP_METHODS, Config, RouteConfig
from .config.units import Rate
from .proxy.paths import match_prefix


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: str
    methods: frozenset[str] | None
    allow_header: str
    upstream: str
    test_upstream: str | None
    strip_prefix: bool
    auth_required: bool
    permissions: dict[str, str] | None
    rate_limit: Rate | None
    timeout: float
    forward_authorization: bool
    circuit_breaker: tuple[int, float] | None = None  # (failures, cooldown)

    @classmethod
    def build(cls, cfg: RouteConfig) -> Route:
        methods = frozenset(cfg.methods) if cfg.methods else None
        allowed = sorted(methods or HTTP_METHODS)
        if methods and "GET" in methods and "HEAD" not in methods:
            allowed.append("HEAD")
        return cls(
            name=cfg.name,
            match=cfg.match,
            methods=frozenset(allowed) if methods else None,
            allow_header=", ".join(sorted(allowed)),
            upstream=cfg.upstream,
            test_upstream=cfg.test_upstream,
            strip_prefix=cfg.strip_prefix,
            auth_required=cfg.auth == "required",
            permissions=dict(cfg.permissions) if cfg.permissions else None,
            rate_limit=cfg.rate_limit,
            timeout=cfg.timeout,
            forward_authorization=cfg.forward_authorization,
            circuit_breaker=(cfg.circuit_breaker.failures, cfg.circuit_breaker.cooldown)
            if cfg.circuit_breaker
            else None,
        )

    def allows(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def required_permission(self, method: str) -> str | None:
        if self.permissions is None:
            return None
        return self.permissions.get(method) or self.permissions.get("*")

    def upstream_for(self, mode: str | None) -> str:
        if mode == "test" and self.test_upstream:
            return self.test_upstream
        return self.upstream

    def upstream_path(self, path: str) -> str:
        if not self.strip_prefix or self.match == "/":
            return path
        rest = path[len(self.match) :]
        return rest if rest.startswith("/") else "/" + rest


class Router:
    def __init__(self, config: Config):
        self.routes = tuple(
            sorted(
                (Route.build(r) for r in config.routes), key=lambda r: len(r.match), reverse=True
            )
        )

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if match_prefix(path, route.match):
                return route
        return None

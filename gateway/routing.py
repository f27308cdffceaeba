"""Routes compiled from the config: longest segment-boundary prefix wins (SPEC §6)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .checks.cors import CorsPolicy
from .config.schema import Config, CorsConfig, RouteConfig
from .config.units import RateLimit
from .methods import HTTP_METHODS
from .proxy.paths import match_prefix, without_segments


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """An upstream URL taken apart once: where to connect, the base path, its credentials."""

    origin: str  # scheme://host[:port], no userinfo
    base: str  # the URL's path, "" for none
    authorization: bytes | None  # from user:password in the URL

    @classmethod
    def parse(cls, url: str) -> UpstreamTarget:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(pair.encode())
        return cls(f"{parts.scheme}://{netloc}", parts.path.rstrip("/"), authorization)

    def relocate(self, location: bytes, route: Route, client_origin: bytes | None) -> bytes:
        """A ``Location`` from this upstream as the client should see it (SPEC §5).

        One pointing at the upstream's origin gets the client's origin instead
        (or becomes path-absolute when the client sent no ``Host``); on either,
        the upstream's base path is taken off and a stripped route prefix put
        back, as nginx's ``proxy_redirect default`` does.
        """
        origin = self.origin.encode()
        if location.startswith(origin) and location[len(origin) : len(origin) + 1] in (
            b"",
            b"/",
            b"?",
        ):
            rest = location[len(origin) :] or b"/"
            absolute = True
        elif location.startswith(b"/") and not location.startswith(b"//"):
            rest = location
            absolute = False
        else:
            return location  # another host's, or relative: theirs to keep
        base = self.base.encode()
        if base and (rest == base or rest.startswith((base + b"/", base + b"?"))):
            rest = rest[len(base) :] or b"/"
        if route.strip_prefix and route.match != "/":
            rest = route.match.encode() + rest
        if absolute and client_origin:
            return client_origin + rest
        return rest


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
    rate_limit: RateLimit | None  # every window applies
    timeout: float
    forward_authorization: bool
    circuit_breaker: tuple[int, float] | None = None  # (failures, cooldown)
    target: UpstreamTarget | None = None
    test_target: UpstreamTarget | None = None
    strip_segments: int = 0  # path segments the match takes off with strip_prefix
    cors: CorsPolicy | None = None
    websocket: bool = False
    websocket_idle_timeout: float = 3600.0
    cost: int = 1  # credits (and one quota call) an allowed request spends; 0: not metered

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
            target=UpstreamTarget.parse(cfg.upstream),
            test_target=UpstreamTarget.parse(cfg.test_upstream) if cfg.test_upstream else None,
            strip_segments=0 if cfg.match == "/" else cfg.match.count("/"),
            cors=cors_policy(cfg.cors, frozenset(allowed) if methods else None),
            websocket=cfg.websocket,
            websocket_idle_timeout=cfg.websocket_idle_timeout,
            cost=cfg.cost,
        )

    def allows(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def required_permission(self, method: str) -> str | None:
        if self.permissions is None:
            return None
        return self.permissions.get(method) or self.permissions.get("*")

    def target_for(self, mode: str | None) -> UpstreamTarget:
        if mode == "test" and self.test_target is not None:
            return self.test_target
        assert self.target is not None
        return self.target

    def upstream_path(self, path: str) -> str:
        """The path the upstream receives for the normalised ``path`` (its ``;`` parameters kept)."""
        if not self.strip_prefix or self.match == "/":
            return path
        if path.startswith(self.match) and path[len(self.match) : len(self.match) + 1] in ("", "/"):
            rest = path[len(self.match) :]
        else:  # the prefix carries parameters: take off whole segments
            rest = without_segments(path, self.strip_segments)
        return rest if rest.startswith("/") else "/" + rest


def cors_policy(cfg: CorsConfig | None, methods: frozenset[str] | None) -> CorsPolicy | None:
    if cfg is None:
        return None
    return CorsPolicy(
        allow_origins=cfg.allow_origins,
        allow_headers=cfg.allow_headers,
        expose_headers=cfg.expose_headers,
        max_age=cfg.max_age,
        allow_credentials=cfg.allow_credentials,
        methods=methods,
    )


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

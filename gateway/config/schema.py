"""The configuration file's schema (SPEC §9): frozen, typed, validated once at load.

Every model forbids unknown fields, so a typo is an error naming its YAML path
instead of a silently ignored setting. Durations, rates, CIDRs and URLs are
parsed here; the request path only reads the results.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from ..checks.cors import DEFAULT_ALLOW_HEADERS, DEFAULT_MAX_AGE, parse_origin_pattern
from ..methods import HTTP_METHODS
from ..permissions import validate_permission
from ..proxy.paths import PathError, normalise_path
from ..telemetry.sdk import sdk_missing
from .units import Quota, RateLimit, parse_duration, parse_quota, parse_rate_limit

Duration = Annotated[float, BeforeValidator(parse_duration)]
# one rate (``100/minute``) or a list of windows (``[10/second, 1000/hour]``), all applying
RateSpec = Annotated[RateLimit, BeforeValidator(parse_rate_limit)]
QuotaSpec = Annotated[Quota, BeforeValidator(parse_quota)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(value: object) -> Network:
    if not isinstance(value, str):
        raise ValueError("expected an IP address or CIDR such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None


NetworkSpec = Annotated[Network, BeforeValidator(parse_network)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class TLSConfig(_Model):
    cert_file: Path
    key_file: Path

    @model_validator(mode="after")
    def _files_exist(self) -> TLSConfig:
        for name in ("cert_file", "key_file"):
            if not getattr(self, name).is_file():
                raise ValueError(f"{name} {getattr(self, name)} does not exist")
        try:  # what serve does with them, so check-config refuses what serve would
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(self.cert_file), str(self.key_file)
            )
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"cert_file {self.cert_file} and key_file {self.key_file} are not a usable "
                f"certificate and private key in PEM: {exc}"
            ) from None
        return self


class ServerConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    require_https: bool = False
    tls: TLSConfig | None = None
    trusted_proxies: tuple[NetworkSpec, ...] = ()
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    max_header_count: int = Field(100, ge=1)
    max_header_bytes: int = Field(8190, ge=256)
    max_url_bytes: int = Field(8190, ge=256)
    header_read_timeout: Duration = 10.0
    body_idle_timeout: Duration = 15.0
    drain_timeout: Duration = 25.0
    access_log: bool = True


class AdminConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    enabled: bool = True


def parse_node(value: object) -> str:
    """``host:port`` (``[::1]:port`` for IPv6), as Sentinel and Cluster node lists give them."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"{value!r} is not host:port")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return f"{host}:{int(port)}"


NodeSpec = Annotated[str, BeforeValidator(parse_node)]


class RedisTLSConfig(_Model):
    """TLS to Redis: with a ``rediss://`` URL, or every node of ``sentinel`` / ``cluster``."""

    ca_file: Path | None = None  # else the system's CAs
    cert_file: Path | None = None  # a client certificate, for servers that ask for one
    key_file: Path | None = None
    verify: bool = True  # check the server's certificate and host name

    @model_validator(mode="after")
    def _files(self) -> RedisTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self


class SentinelConfig(_Model):
    """A master and its replicas, watched by Sentinel: the client follows the master."""

    master_name: str = Field(min_length=1)
    nodes: tuple[NodeSpec, ...] = Field(min_length=1)  # the sentinels
    username: str | None = None  # for the master
    password: str | None = None  # for the master
    sentinel_password: str | None = None  # for the sentinels themselves
    db: int = Field(0, ge=0)


class ClusterConfig(_Model):
    """Redis Cluster: any reachable nodes; the client discovers the rest."""

    nodes: tuple[NodeSpec, ...] = Field(min_length=1)
    username: str | None = None
    password: str | None = None


class RedisConfig(_Model):
    url: str | None = None
    sentinel: SentinelConfig | None = None
    cluster: ClusterConfig | None = None
    tls: RedisTLSConfig | None = None
    data_dir: Path = Path(".gateway-data")
    key_prefix: str = "gw:"
    socket_timeout: Duration = 1.0
    connect_timeout: Duration = 1.0

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"{value!r} is not a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _one_topology(self) -> RedisConfig:
        named = [n for n in ("url", "sentinel", "cluster") if getattr(self, n) is not None]
        if len(named) > 1:
            raise ValueError("set one of url, sentinel or cluster, not " + " and ".join(named))
        if self.tls is not None:
            if not named:
                raise ValueError("tls needs a rediss:// url, sentinel or cluster")
            if self.url is not None and not self.url.lower().startswith("rediss://"):
                raise ValueError("tls needs a rediss:// url (redis:// and unix:// are plain)")
        return self

    @property
    def embedded(self) -> bool:
        """True when no store is named: the gateway runs its own (see store/embedded.py)."""
        return self.url is None and self.sentinel is None and self.cluster is None


class KeysConfig(_Model):
    prefix: str = Field("sk", pattern=r"^[a-z][a-z0-9]{0,15}$")
    cache_ttl: Duration = 30.0
    negative_cache_ttl: Duration = 5.0
    cache_max_size: int = Field(100_000, ge=1)
    stale_if_error: Duration = 300.0
    rotation_days: int = Field(90, ge=1)


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token


class CorsConfig(_Model):
    """A route's (or the management API's) answer to browsers (SPEC §12)."""

    allow_origins: tuple[str, ...]
    allow_headers: tuple[str, ...] = DEFAULT_ALLOW_HEADERS
    expose_headers: tuple[str, ...] = ()
    max_age: Duration = DEFAULT_MAX_AGE
    allow_credentials: bool = False

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one origin (or leave cors out)")
        return tuple(parse_origin_pattern(v) for v in value)

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _header_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                'allow_origins "*" cannot go with allow_credentials: true '
                "(browsers refuse it); list the origins"
            )
        return self


class ManagementConfig(_Model):
    path_prefix: str = Field("/v1", pattern=r"^(/[A-Za-z0-9._~-]+)+$")
    enabled: bool = True
    cors: CorsConfig | None = None


class DashboardConfig(_Model):
    """The key-management web page, served on the public port (same origin as the API)."""

    enabled: bool = True
    path: str = Field("/dashboard", pattern=r"^(/[A-Za-z0-9._~-]+)+$")


class RateLimitsConfig(_Model):
    on_store_error: Literal["allow", "deny", "local"] = "local"


class MeteringConfig(_Model):
    """Plan quotas and key credits (SPEC §16)."""

    # The store cannot be asked: deny (429, a balance that cannot be checked could be
    # overspent) or allow the metered request through unmetered.
    on_store_error: Literal["deny", "allow"] = "deny"


class PlanConfig(_Model):
    rate_limit: RateSpec | None = None
    quota: QuotaSpec | None = None  # calls per calendar day or month, per account and mode


class CircuitBreakerConfig(_Model):
    """After ``failures`` consecutive upstream failures, skip the upstream for ``cooldown``."""

    failures: int = Field(5, ge=1)
    cooldown: Duration = Field(10.0, gt=0)


class RouteConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: str
    upstream: str
    test_upstream: str | None = None
    methods: tuple[str, ...] | None = None
    strip_prefix: bool = False
    auth: Literal["required", "none"] = "required"
    permissions: dict[str, str] | None = None
    rate_limit: RateSpec | None = None
    cost: int = Field(1, ge=0, strict=True)  # credits an allowed request spends; 0 is free
    timeout: Duration = 30.0
    forward_authorization: bool = False
    circuit_breaker: CircuitBreakerConfig | None = None
    cors: CorsConfig | None = None
    websocket: bool = False  # take WebSocket handshakes (SPEC §13)
    websocket_idle_timeout: Duration = 3600.0

    @field_validator("match")
    @classmethod
    def _match_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        try:
            normalised = normalise_path(value)
        except PathError as exc:
            raise ValueError(str(exc)) from None
        return normalised.rstrip("/") or "/"

    @field_validator("upstream", "test_upstream")
    @classmethod
    def _upstream_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        if url.query_string or url.fragment:
            raise ValueError("an upstream URL cannot carry a query or fragment")
        return value.rstrip("/")

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one method, or leave methods out to allow all")
        methods = tuple(dict.fromkeys(m.upper() for m in value))
        unknown = [m for m in methods if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
        return methods

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        out: dict[str, str] = {}
        for method, permission in value.items():
            key = method.upper()
            if key != "*" and key not in HTTP_METHODS:
                raise ValueError(f"{method!r} is not an HTTP method or '*'")
            validate_permission(permission)
            out[key] = permission
        return out


class NewNetworkAlert(_Model):
    enabled: bool = True
    learn_for: Duration = 7 * 86400.0  # a key's first networks are learnt, not alerted on


class UsageSpikeAlert(_Model):
    enabled: bool = True
    window: Duration = Field(300.0, gt=0)
    baseline: Duration = Field(7 * 86400.0, gt=0)
    factor: float = Field(10.0, gt=0)
    min_requests: int = Field(100, ge=1)


class DeniedBurstAlert(_Model):
    enabled: bool = True
    window: Duration = Field(300.0, gt=0)
    threshold: int = Field(20, ge=1)


class KeyUnusedAlert(_Model):
    enabled: bool = True
    after: Duration = Field(90 * 86400.0, gt=0)


class RotationDueAlert(_Model):
    enabled: bool = True


class AlertsConfig(_Model):
    """The unusual-activity detectors of SPEC §14."""

    enabled: bool = True
    new_network: NewNetworkAlert = NewNetworkAlert()
    usage_spike: UsageSpikeAlert = UsageSpikeAlert()
    denied_burst: DeniedBurstAlert = DeniedBurstAlert()
    key_unused: KeyUnusedAlert = KeyUnusedAlert()
    rotation_due: RotationDueAlert = RotationDueAlert()
    check_interval: Duration = Field(3600.0, gt=0)  # key_unused and rotation_due sweeps
    flush_interval: Duration = Field(1.0, gt=0)  # in-process counts folded into the store


DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


class WebhooksConfig(_Model):
    """Delivery of events to webhook endpoints (SPEC §14)."""

    retry_schedule: tuple[Duration, ...] = DEFAULT_RETRY_SCHEDULE
    allow_private_targets: bool = False  # local development and tests: http:// and any address
    timeout: Duration = Field(10.0, gt=0)
    poll_interval: Duration = Field(0.5, gt=0)
    enabled: bool = True  # this replica delivers (every replica may; none doubles a delivery)


class GitHubLeakConfig(_Model):
    public_keys_url: str = "https://api.github.com/meta/public_keys/secret_scanning"

    @field_validator("public_keys_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        return value


class LeakDetectionConfig(_Model):
    """What a key reported by GitHub secret scanning gets (SPEC §15)."""

    action: Literal["revoke", "notify"] = "revoke"
    github: GitHubLeakConfig = GitHubLeakConfig()


class TracingConfig(_Model):
    """Spans over OTLP/HTTP (SPEC §17); trace context is propagated with or without them."""

    otlp_endpoint: str | None = None  # e.g. http://collector:4318; /v1/traces is added
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)  # of new traces; parent-based
    service_name: str = Field("keygate", min_length=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        missing = sdk_missing()
        if missing is not None:
            raise ValueError(missing)
        return value


class LoggingConfig(_Model):
    format: Literal["text", "json"] = "text"  # the application's log lines on stderr


class Config(_Model):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    redis: RedisConfig = RedisConfig()
    keys: KeysConfig = KeysConfig()
    management: ManagementConfig = ManagementConfig()
    dashboard: DashboardConfig = DashboardConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    metering: MeteringConfig = MeteringConfig()
    plans: dict[str, PlanConfig] = Field(default_factory=lambda: {"default": PlanConfig()})
    routes: tuple[RouteConfig, ...] = ()
    alerts: AlertsConfig = AlertsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    leak_detection: LeakDetectionConfig = LeakDetectionConfig()
    tracing: TracingConfig = TracingConfig()
    logging: LoggingConfig = LoggingConfig()

    def plan(self, name: str) -> PlanConfig:
        """The plan ``name``; an account on a plan no longer configured gets ``default``'s
        (rate limit and quota alike)."""
        return self.plans.get(name) or self.plans["default"]

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        seen: dict[str, int] = {}
        for index, route in enumerate(self.routes):
            if route.name in seen:
                raise ValueError(
                    f"routes[{index}].name: duplicate route name {route.name!r} "
                    f"(first used by routes[{seen[route.name]}])"
                )
            seen[route.name] = index
        if "default" not in self.plans:
            raise ValueError("plans: a plan named 'default' is required (new accounts get it)")
        if (
            self.server.require_https
            and self.server.tls is None
            and not self.server.trusted_proxies
        ):
            raise ValueError(
                "server.require_https: needs server.tls or server.trusted_proxies "
                "(a proxy that terminates TLS and sends X-Forwarded-Proto)"
            )
        return self

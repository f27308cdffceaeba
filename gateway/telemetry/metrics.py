"""Prometheus metrics (SPEC §17).

The request path only bumps plain integers (a dict lookup and an add, no
lock); a collector turns them into Prometheus families when ``/metrics`` is
scraped. Cache counts, requests in flight and the store's state are likewise
read at scrape time.

Every series is listed, with its labels, in :data:`SERIES` (and in the
README's table, which a test holds to the real output).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__

disable_created_metrics()

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# The refusals that count as authentication or authorisation denials: a key missing,
# malformed, unknown, revoked or expired (401), or a key refused by its restrictions
# or permissions (403). Not routing, size, CORS, HTTPS, rate-limit or upstream errors.
AUTH_DENIALS = frozenset(
    {
        "missing_api_key",
        "invalid_authorization_header",
        "invalid_api_key",
        "revoked_api_key",
        "expired_api_key",
        "ip_not_allowed",
        "referrer_not_allowed",
        "endpoint_not_allowed",
        "insufficient_permissions",
    }
)

# the ``type`` label of gateway_alerts_total: an alert event's type without ``alert.``
ALERT_TYPES = (
    "new_network", "usage_spike", "denied_burst", "key_unused", "rotation_due", "quota_threshold",
)  # fmt: skip

# name (as exposed, without the _bucket/_sum/_count of histograms) -> its labels
SERIES: dict[str, tuple[str, ...]] = {
    "gateway_requests_total": ("route", "outcome", "status"),
    "gateway_auth_denials_total": ("route", "code"),
    "gateway_request_duration_seconds": ("route",),
    "gateway_upstream_duration_seconds": ("route",),
    "gateway_requests_in_flight": (),
    "gateway_upstream_errors_total": ("route", "kind"),
    "gateway_store_up": (),
    "gateway_key_cache_hits_total": (),
    "gateway_key_cache_misses_total": (),
    "gateway_key_cache_stale_served_total": (),
    "gateway_key_cache_entries": (),
    "gateway_websocket_connections": ("route",),
    "gateway_alerts_total": ("type",),
    "gateway_config_reloads_total": ("result",),
    "gateway_build_info": ("version",),
}


def _histogram(
    name: str, documentation: str, rows: dict[str, tuple[list[int], float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    for route, (counts, total) in list(rows.items()):
        buckets, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        family.add_metric([route], buckets, total)
    return family


def _add(rows: dict[str, tuple[list[int], float]], route: str, seconds: float) -> None:
    row = rows.get(route)
    if row is None:
        row = rows[route] = ([0] * (len(LATENCY_BUCKETS) + 1), 0.0)
    row[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    rows[route] = (row[0], row[1] + seconds)


class _CacheCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int, int, int]]):
        self._read = read

    def collect(self) -> Iterable[Metric]:
        hits, misses, stale, size = self._read()
        yield CounterMetricFamily(
            "gateway_key_cache_hits", "Key lookups answered from the in-process cache", value=hits
        )
        yield CounterMetricFamily(
            "gateway_key_cache_misses", "Key lookups that went to the store", value=misses
        )
        yield CounterMetricFamily(
            "gateway_key_cache_stale_served",
            "Cached keys served past their TTL while the store was down",
            value=stale,
        )
        yield GaugeMetricFamily(
            "gateway_key_cache_entries", "Entries in the in-process key cache", value=size
        )


class _RequestCollector(Collector):
    """Folds the request path's plain counters into Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests on the public port by route, outcome (ok or the error code) and status class",
            labels=["route", "outcome", "status"],
        )
        for (route, outcome, status), value in list(m.request_counts.items()):
            requests.add_metric([route, outcome, status], value)
        yield requests
        denials = CounterMetricFamily(
            "gateway_auth_denials",
            "Requests refused for their key: missing, malformed, unknown, revoked or expired "
            "(401), or not allowed by its restrictions or permissions (403)",
            labels=["route", "code"],
        )
        for (route, code), value in list(m.denial_counts.items()):
            denials.add_metric([route, code], value)
        yield denials
        yield _histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to its response headers, by route",
            m.latency,
        )
        yield _histogram(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to the upstream's response headers "
            "(or its failure), by route",
            m.upstream_latency,
        )
        yield GaugeMetricFamily(
            "gateway_requests_in_flight",
            "Requests on the public port being answered now (open streams and WebSockets included)",
            value=m.in_flight,
        )
        store_up = m.store_up
        yield GaugeMetricFamily(
            "gateway_store_up",
            "1 while the key store answers (checked every second), 0 while it does not",
            value=1 if store_up is not None and store_up() else 0,
        )
        info = GaugeMetricFamily(
            "gateway_build_info", "The gateway's version; always 1", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_counts: dict[tuple[str, str, str], int] = {}
        self.denial_counts: dict[tuple[str, str], int] = {}
        # route -> (per-bucket counts, the last one for +Inf; sum of seconds)
        self.latency: dict[str, tuple[list[int], float]] = {}
        self.upstream_latency: dict[str, tuple[list[int], float]] = {}
        self.in_flight = 0
        self.store_up: Callable[[], bool] | None = None  # read at scrape time
        self.registry.register(_RequestCollector(self))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, ..._memory_bytes, ...
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures by route and kind",
            ["route", "kind"], registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "gateway_config_reloads", "Configuration reloads by result",
            ["result"], registry=self.registry,
        )  # fmt: skip
        for result in ("success", "error"):  # at zero from the start: increase() sees the first
            self.reloads.labels(result)
        self.alerts = Counter(
            "gateway_alerts", "Alerts raised by this process, by type",
            ["type"], registry=self.registry,
        )  # fmt: skip
        for kind in ALERT_TYPES:  # every type shows from the start, at zero
            self.alerts.labels(kind)
        self.websockets = Gauge(
            "gateway_websocket_connections", "WebSocket connections open now, by route",
            ["route"], registry=self.registry,
        )  # fmt: skip

    def count_alert(self, event) -> None:
        """An event listener: alerts raised by this process, by type (``usage_spike``, …)."""
        if event.type.startswith("alert."):
            self.alerts.labels(type=event.type[6:]).inc()

    def watch_cache(self, read: Callable[[], tuple[int, int, int, int]]) -> None:
        self.registry.register(_CacheCollector(read))

    def watch_store(self, up: Callable[[], bool]) -> None:
        self.store_up = up

    def observe(
        self,
        route: str,
        code: str | None,
        status: int,
        seconds: float,
        upstream_seconds: float | None = None,
    ) -> None:
        key = (
            route,
            code or "ok",
            _STATUS_CLASS[status // 100] if 1 <= status // 100 <= 5 else "other",
        )
        counts = self.request_counts
        counts[key] = counts.get(key, 0) + 1
        _add(self.latency, route, seconds)
        if upstream_seconds is not None:
            _add(self.upstream_latency, route, upstream_seconds)
        if code is not None and code in AUTH_DENIALS:
            denial = (route, code)
            self.denial_counts[denial] = self.denial_counts.get(denial, 0) + 1


_STATUS_CLASS = ("", "1xx", "2xx", "3xx", "4xx", "5xx")

"""Prometheus metrics.

The request path only bumps plain integers (a dict lookup and an add, no
lock); a collector turns them into Prometheus families when ``/metrics`` is
scraped. Cache counts are likewise read at scrape time.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

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
            "Requests on the public port by route and outcome",
            labels=["route", "outcome"],
        )
        for (route, outcome), value in list(m.request_counts.items()):
            requests.add_metric([route, outcome], value)
        yield requests
        denials = CounterMetricFamily(
            "gateway_auth_denials",
            "Requests refused by the gateway, by error code",
            labels=["code"],
        )
        for code, value in list(m.denial_counts.items()):
            denials.add_metric([code], value)
        yield denials
        latency = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time from request to response headers, by route",
            labels=["route"],
        )
        for route, (counts, total) in list(m.latency.items()):
            buckets, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric([route], buckets, total)
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_counts: dict[tuple[str, str], int] = {}
        self.denial_counts: dict[str, int] = {}
        # route -> (per-bucket counts, the last one for +Inf; sum of seconds)
        self.latency: dict[str, tuple[list[int], float]] = {}
        self.registry.register(_RequestCollector(self))
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures by route and kind",
            ["route", "kind"], registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "gateway_config_reloads", "Configuration reloads by result",
            ["result"], registry=self.registry,
        )  # fmt: skip
        self.store_up = Gauge(
            "gateway_store_up", "1 when the key store answers", registry=self.registry
        )
        self.alerts = Counter(
            "gateway_alerts", "Alerts raised by this process, by type",
            ["type"], registry=self.registry,
        )  # fmt: skip
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

    def observe(self, route: str, outcome: str, seconds: float, denial: str | None) -> None:
        key = (route, outcome)
        counts = self.request_counts
        counts[key] = counts.get(key, 0) + 1
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = ([0] * (len(LATENCY_BUCKETS) + 1), 0.0)
        row[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency[route] = (row[0], row[1] + seconds)
        if denial is not None:
            self.denial_counts[denial] = self.denial_counts.get(denial, 0) + 1

"""Prometheus metrics. Hot-path counters are pre-bound children; cache counts are read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests", "Requests on the public port by route and outcome",
            ["route", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.denials = Counter(
            "gateway_auth_denials", "Requests refused by the gateway, by error code",
            ["code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time from request to response headers, by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
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
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._denial_children: dict[str, Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def watch_cache(self, read: Callable[[], tuple[int, int, int, int]]) -> None:
        self.registry.register(_CacheCollector(read))

    def observe(self, route: str, outcome: str, seconds: float, denial: str | None) -> None:
        child = self._request_children.get((route, outcome))
        if child is None:
            child = self._request_children[(route, outcome)] = self.requests.labels(route, outcome)
        child.inc()
        timer = self._latency_children.get(route)
        if timer is None:
            timer = self._latency_children[route] = self.latency.labels(route)
        timer.observe(seconds)
        if denial is not None:
            counter = self._denial_children.get(denial)
            if counter is None:
                counter = self._denial_children[denial] = self.denials.labels(denial)
            counter.inc()

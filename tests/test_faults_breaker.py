"""The circuit breaker's states on an injected clock, and its config."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, CircuitBreaker
from gateway.routing import Router


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_consecutive_failures_only():
    clock = Clock()
    breaker = CircuitBreaker(3, 10.0, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # the run is broken
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == 10


def test_one_probe_after_the_cooldown_decides():
    clock = Clock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    breaker.failure()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # only one at a time
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 10.1
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(5))


def test_a_probe_that_never_reports_frees_the_slot_after_a_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.failure()
    clock.now += 5.0
    assert breaker.allow()  # this probe's client goes away: no success, no failure
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()


def test_breakers_are_per_route_and_upstream_and_renewed_when_settings_change():
    breakers = Breakers()
    a = breakers.get("api", "http://a", 3, 10.0)
    assert breakers.get("api", "http://a", 3, 10.0) is a
    assert breakers.get("api", "http://b", 3, 10.0) is not a
    assert breakers.get("other", "http://a", 3, 10.0) is not a
    assert breakers.get("api", "http://a", 4, 10.0) is not a


def test_route_config():
    config = parse_config(
        {
            "routes": [
                {"name": "a", "match": "/a", "upstream": "http://x",
                 "circuit_breaker": {"failures": 2, "cooldown": "1500ms"}},
                {"name": "b", "match": "/b", "upstream": "http://x"},
            ]
        }
    )  # fmt: skip
    routes = {r.name: r for r in Router(config).routes}
    assert routes["a"].circuit_breaker == (2, 1.5)
    assert routes["b"].circuit_breaker is None
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {"routes": [{"name": "a", "match": "/a", "upstream": "http://x",
                         "circuit_breaker": {"failures": 0, "cooldown": "soon"}}]}
        )  # fmt: skip
    joined = "\n".join(exc.value.errors)
    assert "routes[0].circuit_breaker.failures" in joined
    assert "routes[0].circuit_breaker.cooldown" in joined

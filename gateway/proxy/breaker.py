"""Passive upstream health: a per-route circuit breaker.

A route with ``circuit_breaker: {failures: N, cooldown: 10s}`` counts
consecutive upstream failures (refused, reset, timed out; an HTTP status from
the upstream, even a 5xx, is an answer and counts as a success). After N in a
row the circuit opens: for the cool-down the upstream is not tried and the
gateway answers 503 ``service_unavailable`` with ``Retry-After`` at once.
Then one request goes through as a probe (half-open): success closes the
circuit, failure opens it for another cool-down. A probe that never reports
(its client went away) frees the slot after another cool-down.

Breakers are per route and upstream URL (live and test upstreams apart), kept
across config reloads while the route's settings stay the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..denials import Denial

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    __slots__ = ("failures", "cooldown", "_clock", "state", "_consecutive", "_until")

    def __init__(
        self, failures: int, cooldown: float, *, clock: Callable[[], float] = time.monotonic
    ):
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self.state = CLOSED
        self._consecutive = 0
        self._until = 0.0  # OPEN: end of the cool-down; HALF_OPEN: when a silent probe is given up

    def allow(self) -> bool:
        """May a request go to the upstream now?"""
        if self.state == CLOSED:
            return True
        now = self._clock()
        if now < self._until:
            return False
        self.state = HALF_OPEN  # this request is the probe
        self._until = now + self.cooldown
        return True

    def retry_after(self) -> int:
        """Whole seconds until a request may be tried again (at least 1)."""
        return max(1, math.ceil(self._until - self._clock()))

    def success(self) -> None:
        self.state = CLOSED
        self._consecutive = 0

    def failure(self) -> None:
        self._consecutive += 1
        if self.state == HALF_OPEN or self._consecutive >= self.failures:
            self.state = OPEN
            self._until = self._clock() + self.cooldown


class Breakers:
    """The breakers of one worker, by (route, upstream URL)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, route: str, upstream: str, failures: int, cooldown: float) -> CircuitBreaker:
        breaker = self._breakers.get((route, upstream))
        if breaker is None or breaker.failures != failures or breaker.cooldown != cooldown:
            breaker = CircuitBreaker(failures, cooldown, clock=self._clock)
            self._breakers[(route, upstream)] = breaker
        return breaker


def circuit_open(breaker: CircuitBreaker) -> Denial:
    retry = breaker.retry_after()
    return Denial("service_unavailable", {"retry_after": retry}, {"Retry-After": str(retry)})

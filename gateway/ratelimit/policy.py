"""Which limits apply to a request, and how each is named in headers and errors.

A key's own ``rate_limit`` replaces its account plan's; a route's
``rate_limit`` applies per key on that route, on top (SPEC §4). Each of these
may have several windows (``[10/second, 1000/hour]``, SPEC §16): every window
is a limit of its own, named after its owner with the window's unit as a
suffix (``default-second``, ``default-hour``); a limit with one window keeps
its owner's plain name (``default``, ``key``, ``route-search``). Every counter
belongs to one key id, so live and test keys (always different keys) never
share one, and every Redis key of one API key carries the same hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.units import Rate, RateLimit

if TYPE_CHECKING:
    from ..config.schema import Config


def sf_string(text: str) -> str:
    """``text`` as a Structured Field string (RFC 8941 §3.3.3)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit as clients see it: ``rate`` under the policy name ``name``."""

    name: str  # the policy name of the RateLimit headers
    scope: str  # "plan", "key" or "route"
    rate: Rate
    route: str | None = None
    plan: str | None = None

    @property
    def window_ms(self) -> int:
        return self.rate.window * 1000

    def counter(self) -> str:
        """The counter's name under its key: one per key and window (and route)."""
        if self.scope == "route":
            return f"r:{self.route}:{self.rate.window}"
        return f"k:{self.rate.window}"

    def policy_header(self) -> str:
        return f"{sf_string(self.name)};q={self.rate.limit};w={self.rate.window}"

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "limit": str(self.rate),
            "policy": self.name,
            "scope": self.scope,
        }
        if self.route is not None:
            out["route"] = self.route
        if self.plan is not None:
            out["plan"] = self.plan
        return out

    def describe(self) -> str:
        if self.scope == "route":
            return f"{self.rate} per key on route {self.route!r}"
        if self.scope == "plan":
            return f"{self.rate} per key (plan {self.plan!r})"
        return f"{self.rate} for this key"


def _named(base: str, rates: RateLimit) -> list[tuple[str, Rate]]:
    if len(rates) == 1:
        return [(base, rates[0])]
    return [(f"{base}-{rate.unit}", rate) for rate in rates]


def key_limits(own: RateLimit | None, plan_name: str, plan_rates: RateLimit | None) -> list[Limit]:
    """The key's own windows, else its plan's; none when neither has a ``rate_limit``."""
    if own is not None:
        return [Limit(name=name, scope="key", rate=rate) for name, rate in _named("key", own)]
    if plan_rates is not None:
        return [
            Limit(name=name, scope="plan", rate=rate, plan=plan_name)
            for name, rate in _named(plan_name, plan_rates)
        ]
    return []


def route_limits(route_name: str, rates: RateLimit | None) -> list[Limit]:
    if rates is None:
        return []
    return [
        Limit(name=name, scope="route", rate=rate, route=route_name)
        for name, rate in _named(f"route-{route_name}", rates)
    ]


def policy_header(limits: list[Limit] | tuple[Limit, ...]) -> str:
    """``RateLimit-Policy``: every limit that applies, as a Structured Field list."""
    return ", ".join(limit.policy_header() for limit in limits)


def plan_rate(config: Config, plan: str) -> RateLimit | None:
    """The plan's ``rate_limit``; an account on a plan no longer configured gets ``default``'s."""
    return config.plan(plan).rate_limit

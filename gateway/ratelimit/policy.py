"""Which limits apply to a request, and how each is named in headers and errors.

A key's own ``rate_limit`` replaces its account plan's; a route's
``rate_limit`` applies per key on that route, on top (SPEC §4). Every counter
belongs to one key id, so live and test keys (always different keys) never
share one, and every Redis key of one API key carries the same hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.units import Rate

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


def key_limit(own: Rate | None, plan_name: str, plan_rate: Rate | None) -> Limit | None:
    if own is not None:
        return Limit(name="key", scope="key", rate=own)
    if plan_rate is not None:
        return Limit(name=plan_name, scope="plan", rate=plan_rate, plan=plan_name)
    return None


def route_limit(route_name: str, rate: Rate | None) -> Limit | None:
    if rate is None:
        return None
    return Limit(name=f"route-{route_name}", scope="route", rate=rate, route=route_name)


def plan_rate(config: Config, plan: str) -> Rate | None:
    """The plan's ``rate_limit``; an account on a plan no longer configured gets ``default``'s."""
    found = config.plans.get(plan) or config.plans.get("default")
    return found.rate_limit if found is not None else None

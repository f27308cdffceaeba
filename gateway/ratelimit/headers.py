"""The rate-limit response headers (SPEC §4): the IETF httpapi draft's and the X- trio.

``RateLimit-Policy: "default";q=100;w=60`` names the limit, its quota and
window; ``RateLimit: "default";r=42;t=30`` says what is left and in how many
seconds the window resets; ``X-RateLimit-Limit``, ``-Remaining`` and
``-Reset`` repeat ``q``, ``r`` and ``t`` for clients that only know those.

Where several limits apply (a key's windows, a route's on top), the policy
header lists every one of them (``"default-second";q=10;w=1,
"default-hour";q=1000;w=3600``) and the other headers describe the one closest
to running out.
"""

from __future__ import annotations

from .policy import Limit, sf_string


class PolicyHeaders:
    """The header text of one limit, built once; :meth:`render` adds the live numbers.

    ``policy`` is the whole ``RateLimit-Policy`` value when more limits than ``limit`` apply.
    """

    __slots__ = ("policy", "item", "quota")

    def __init__(self, limit: Limit, policy: str | None = None):
        self.policy = limit.policy_header() if policy is None else policy
        self.item = sf_string(limit.name)
        self.quota = str(limit.rate.limit)

    def render(self, remaining: int, reset: int) -> dict[str, str]:
        r = str(remaining)
        t = str(reset)
        return {
            "RateLimit-Policy": self.policy,
            "RateLimit": f"{self.item};r={r};t={t}",
            "X-RateLimit-Limit": self.quota,
            "X-RateLimit-Remaining": r,
            "X-RateLimit-Reset": t,
        }


def rate_headers(limit: Limit, remaining: int, reset: int) -> dict[str, str]:
    return PolicyHeaders(limit).render(remaining, reset)

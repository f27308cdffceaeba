"""A metering decision that refuses, as the client sees it (SPEC §16).

- the plan's quota spent: 429 ``quota_exceeded``, ``Retry-After`` to the
  start of the next calendar day or month (UTC);
- the key's credits short of the route's cost: 429 ``credits_exhausted``,
  ``Retry-After`` to the next refill when the key has one, none otherwise
  (only a top-up helps);
- the store could not be asked and ``metering.on_store_error`` is ``deny``:
  429 ``rate_limit_exceeded`` with ``details.reason`` ``store_unavailable``
  and ``Retry-After: 1``. A balance that cannot be checked could be
  overspent, so the request waits rather than spends unchecked.

A refusal made after the rate limit counted the request carries the
rate-limit headers too; its own ``Retry-After`` wins.
"""

from __future__ import annotations

from ..denials import Denial
from .meter import Unmetered
from .store import Quota, Spent

STORE_UNAVAILABLE_MESSAGE = (
    "The quota and credits store is unavailable; metered requests are refused until it is back"
)


def retry_after(ms: int) -> int:
    """Whole seconds to wait, rounded up, at least 1."""
    return max(1, -(-ms // 1000))


def metering_denial(
    result: Spent | Unmetered,
    quota: Quota | None,
    cost: int,
    rate_headers: dict[str, str] | None = None,
) -> Denial:
    headers = dict(rate_headers) if rate_headers else {}
    if result.reason == "quota_exceeded":
        wait = retry_after(result.quota_reset_ms)
        headers["Retry-After"] = str(wait)
        details = {
            "quota": str(quota) if quota is not None else None,
            "used": result.quota_used,
            "retry_after": wait,
        }
        return Denial("quota_exceeded", details, headers)
    if result.reason == "credits_exhausted":
        details = {"remaining": result.credits_remaining, "cost": cost}
        if result.credits_reset_ms >= 0:  # a refill is coming
            wait = retry_after(result.credits_reset_ms)
            headers["Retry-After"] = str(wait)
            details["retry_after"] = wait
        else:
            headers.pop("Retry-After", None)
        return Denial("credits_exhausted", details, headers)
    wait = retry_after(result.quota_reset_ms)
    headers["Retry-After"] = str(wait)
    return Denial(
        "rate_limit_exceeded",
        {"reason": "store_unavailable", "retry_after": wait},
        headers,
        STORE_UNAVAILABLE_MESSAGE,
    )

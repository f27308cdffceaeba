"""``alert.quota_threshold`` (SPEC §14, §16): 80%, 90% and 100% of a quota or of credits.

The metering store decides the crossings in the same script that spends, and
keeps the highest level raised in the period (a calendar day or month for a
plan's quota; until the next refill or top-up for credits), so each threshold
is reported once per period whatever the number of replicas. The meter hands
each crossing to :class:`QuotaAlerts`, which raises one event per threshold
crossed, in the background: the request that crossed it does not wait.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.schema import AlertsConfig
from ..events.log import EventLog
from ..metering.store import Crossing

EVENT = "alert.quota_threshold"


class QuotaAlerts:
    """The meter's ``on_crossing``: one ``alert.quota_threshold`` per threshold crossed."""

    def __init__(self, events: EventLog, config: Callable[[], AlertsConfig]):
        self.events = events
        self.config = config
        self.fired = 0

    def __call__(self, account_id: str, mode: str, key_id: str | None, crossing: Crossing) -> None:
        if not self.config().enabled:
            return
        for threshold in crossing.thresholds:
            self.fired += 1
            self.events.emit_soon(
                EVENT,
                account_id=account_id,
                mode=mode,
                data={
                    "scope": crossing.budget,
                    "threshold": threshold,
                    "used": crossing.used,
                    "limit": crossing.limit,
                    "key_id": key_id,
                },
            )

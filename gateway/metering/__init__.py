"""Plan quotas and key credits: exact budgets shared by every replica (SPEC §16).

- :mod:`.store`: the balances in Redis and the Lua scripts that spend and read them
- :mod:`.meter`: what the request path calls; one store call decides many requests
"""

from ..config.units import Quota, parse_per_period, parse_quota
from .meter import Meter, Unmetered
from .store import Credits, Crossing, MeterStore, QuotaUse, Refill, Spent

__all__ = [
    "Credits",
    "Crossing",
    "Meter",
    "MeterStore",
    "Quota",
    "QuotaUse",
    "Refill",
    "Spent",
    "Unmetered",
    "parse_per_period",
    "parse_quota",
]

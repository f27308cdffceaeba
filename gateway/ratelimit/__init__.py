"""Rate limits per key, plan and route, shared by every replica (SPEC §4).

- :mod:`.policy`: which limits apply to a request and how they are named
- :mod:`.store`: the limit store interface and its in-memory implementation
- :mod:`.redis_store`: the shared implementation, one atomic Lua script
- :mod:`.limiter`: what the pipeline calls; grants spent locally, fallbacks
- :mod:`.headers`: ``RateLimit-Policy``, ``RateLimit`` and ``X-RateLimit-*``
"""

from .limiter import RateLimitDecision, RateLimiter
from .policy import Limit
from .redis_store import RedisLimitStore
from .store import Grant, LimitStore, MemoryLimitStore, Take

__all__ = [
    "Grant",
    "Limit",
    "LimitStore",
    "MemoryLimitStore",
    "RateLimitDecision",
    "RateLimiter",
    "RedisLimitStore",
    "Take",
]

"""Events (SPEC §14): every key change and every alert, kept 30 days.

:meth:`EventLog.emit` is the one way an event is raised, by the key
operations, the leak handler and the alert detectors alike: it stores the
event and queues a delivery for every webhook endpoint of the account that
takes it. Code on the request path calls :meth:`EventLog.emit_soon`, which
returns at once and does the store work in a background task.

Layout, under ``redis.key_prefix`` (``P``):

- ``P evt:{id}``                 the event (JSON), expiring after 30 days
- ``P events:{account}:all``     the account's event ids, scored by creation (ms,
  strictly increasing per account), trimmed to 30 days on every write
- ``P events:{account}:test``    the same, test-mode events only (what a test key lists)
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..store.connection import STORE_ERRORS, StoreUnavailable
from ..store.pages import page_after
from ..timefmt import isoformat, utcnow

log = logging.getLogger("gateway.events")

RETENTION = 30 * 86400
LIST_MAX = 100
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_TYPES = ("api_key.created", "api_key.updated", "api_key.revoked", "api_key.rotated")
ALERT_TYPES = (
    "alert.new_network",
    "alert.usage_spike",
    "alert.denied_burst",
    "alert.key_unused",
    "alert.rotation_due",
    "alert.quota_threshold",
)
EVENT_TYPES = (*KEY_TYPES, "api_key.leaked", *ALERT_TYPES)

# Add ARGV[1] to the zset KEYS[1] with score ARGV[2], or one above the highest score
# there: ids list newest first in the order they were added. Then drop what is older
# than ARGV[3] (ms).
_ADD_TO_INDEX = """
local score = tonumber(ARGV[2])
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
if top and tonumber(top) >= score then score = tonumber(top) + 1 end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return score
"""


async def mget(client: aioredis.Redis, names: list[str]) -> list[Any]:
    """MGET; on a cluster, one MGET per slot (redis-py's ``mget_nonatomic``)."""
    per_slot = getattr(client, "mget_nonatomic", None)
    if per_slot is not None:
        return await per_slot(names)
    return await client.mget(names)


def new_event_id() -> str:
    return "evt_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def type_matches(pattern: str, event_type: str) -> bool:
    """``*`` (all), ``prefix.*`` or an exact type; ``alert.`` as a filter is ``alert.*``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    if pattern.endswith("."):
        return event_type.startswith(pattern)
    return event_type == pattern


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created_at: str
    account_id: str
    mode: str
    data: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "event",
            "type": self.type,
            "created_at": self.created_at,
            "account_id": self.account_id,
            "mode": self.mode,
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(self.public(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        raw = json.loads(text)
        return cls(
            id=raw["id"],
            type=raw["type"],
            created_at=raw["created_at"],
            account_id=raw["account_id"],
            mode=raw["mode"],
            data=raw.get("data") or {},
        )


Listener = Callable[[Event], None]


class EventLog:
    """Stores events and hands each to the webhook queue (``fan_out``)."""

    def __init__(self, client: aioredis.Redis, prefix: str, *, fan_out: Any | None = None):
        self.client = client
        self.prefix = prefix
        self.fan_out = fan_out  # a WebhookQueue, or None (no deliveries)
        self.listeners: list[Listener] = []  # told of every event emitted here (metrics, wake-ups)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def emit(self, type: str, *, account_id: str, mode: str, data: dict[str, Any]) -> Event:
        """Store one event and queue its webhook deliveries; raises StoreUnavailable."""
        if mode not in ("live", "test"):
            raise ValueError(f"an event's mode is live or test, not {mode!r}")
        now = utcnow()
        event = Event(
            id=new_event_id(),
            type=type,
            created_at=isoformat(now) or "",
            account_id=account_id,
            mode=mode,
            data=data,
        )
        ms = int(time.time() * 1000)
        oldest = ms - RETENTION * 1000
        keep = (RETENTION + 86400) * 1000
        try:
            await self.client.set(self._k("evt", event.id), event.to_json(), ex=RETENTION)
            indexes = [self._k("events", account_id, "all")]
            if mode == "test":
                indexes.append(self._k("events", account_id, "test"))
            for index in indexes:
                await self.client.eval(_ADD_TO_INDEX, 1, index, event.id, ms, oldest, keep)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        if self.fan_out is not None:
            await self.fan_out.enqueue_event(event)
        for listener in self.listeners:
            listener(event)
        return event

    def emit_soon(self, type: str, *, account_id: str, mode: str, data: dict[str, Any]) -> None:
        """:meth:`emit` in the background, for callers that must not wait (the request path)."""
        task = asyncio.get_running_loop().create_task(
            self._emit_logged(type, account_id=account_id, mode=mode, data=data)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _emit_logged(self, type: str, **fields: Any) -> None:
        try:
            await self.emit(type, **fields)
        except StoreUnavailable as exc:
            log.error("event %s for %s not recorded: %s", type, fields.get("account_id"), exc)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait for the events still being written (the app's cleanup)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def get(self, event_id: str) -> Event | None:
        try:
            raw = await self.client.get(self._k("evt", event_id))
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return Event.from_json(raw) if raw else None

    async def list(
        self,
        account_id: str,
        *,
        test_only: bool,
        limit: int = 10,
        starting_after: str | None = None,
        type_filter: str | None = None,
    ) -> tuple[list[Event], bool] | None:
        """A page of the account's events, newest first, and whether more follow.

        None when ``starting_after`` is not an event of this list.
        """
        index = self._k("events", account_id, "test" if test_only else "all")
        found: list[Event] = []
        try:
            cursor = starting_after
            batch = max(limit + 1, 50) if type_filter else limit + 1
            while len(found) <= limit:
                # each batch after the last id read: events added meanwhile shift nothing
                ids = await page_after(self.client, index, cursor, batch)
                if ids is None:
                    if cursor == starting_after:
                        return None
                    break  # the last id read has just been trimmed: the list ends there
                if not ids:
                    break
                cursor = ids[-1]
                raws = await mget(self.client, [self._k("evt", i) for i in ids])
                for raw in raws:
                    if not raw:
                        continue  # expired: the index is trimmed on the next write
                    event = Event.from_json(raw)
                    if type_filter is None or type_matches(type_filter, event.type):
                        found.append(event)
                if len(ids) < batch:
                    break
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return found[:limit], len(found) > limit

"""The audit trail: who created, changed, revoked or rotated which key, and when.

Events go to a Redis stream (capped), one global and one per account, so an
account's trail reads without scanning everyone's. Both get the event under
the same stream id, so an event has one ``id`` in either view: the global
stream first, then the account's copy with the id the first got. (Two
commands, not one script: on Redis Cluster the streams live in different
slots, and one script may only touch keys of one slot.)
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..store.connection import STORE_ERRORS, StoreUnavailable
from ..timefmt import isoformat, utcnow

MAX_EVENTS = 100_000


class AuditLog:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix

    def _stream(self, account_id: str | None) -> str:
        return f"{self.prefix}audit:{account_id}" if account_id else f"{self.prefix}audit"

    async def record(
        self, *, actor: str, action: str, account_id: str | None, key_id: str | None, **extra: Any
    ) -> None:
        event = {
            "at": isoformat(utcnow()),
            "actor": actor,
            "action": action,
            "account_id": account_id or "",
            "key_id": key_id or "",
            "extra": json.dumps(extra, separators=(",", ":")),
        }
        fields = {name: value or "" for name, value in event.items()}
        cap = {"maxlen": MAX_EVENTS, "approximate": True}
        try:
            event_id = await self.client.xadd(self._stream(None), fields, **cap)
            if account_id:
                stream = self._stream(account_id)
                try:
                    await self.client.xadd(stream, fields, id=event_id, **cap)
                except ResponseError:
                    # not above the stream's last id (events written before ids were
                    # shared): the copy gets an id of its own
                    await self.client.xadd(stream, fields, **cap)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def read(
        self, *, account_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` events, newest first."""
        try:
            entries = await self.client.xrevrange(self._stream(account_id), count=limit)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        events = []
        for entry_id, fields in entries:
            event: dict[str, Any] = {
                "id": entry_id,
                "at": fields.get("at"),
                "actor": fields.get("actor"),
                "action": fields.get("action"),
                "account_id": fields.get("account_id") or None,
                "key_id": fields.get("key_id") or None,
            }
            event.update(json.loads(fields.get("extra") or "{}"))
            events.append(event)
        return events

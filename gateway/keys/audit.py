"""The audit trail: who created, changed, revoked or rotated which key, and when.

Events go to a Redis stream (capped), one global and one per account, so an
account's trail reads without scanning everyone's. Both get the event in one
script, under the same stream id, so an event has one ``id`` in either view.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from ..store.connection import STORE_ERRORS, StoreUnavailable
from .model import isoformat, utcnow

MAX_EVENTS = 100_000

# KEYS: the global stream, then the account's (optional). ARGV: the cap, then field, value...
# The account's copy takes the global id; should that not be above the account stream's
# last id (events written before both shared ids), it gets its own.
RECORD_SCRIPT = """
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
if KEYS[2] then
  local copied = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, unpack(fields))
  if type(copied) == 'table' and copied.err then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  end
end
return id
"""


class AuditLog:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix
        self._record = client.register_script(RECORD_SCRIPT)

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
        streams = [self._stream(None)]
        if account_id:
            streams.append(self._stream(account_id))
        args: list[str | int] = [MAX_EVENTS]
        for name, value in event.items():
            args += [name, value or ""]
        try:
            await self._record(keys=streams, args=args)
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

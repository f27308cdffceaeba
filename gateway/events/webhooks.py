"""Webhook endpoints and their delivery queue, in the store (SPEC §14).

Layout, under ``redis.key_prefix`` (``P``), every key with the hash tag
``{wh}`` so that the queue's scripts touch one slot on Redis Cluster too:

- ``P{wh}:we:{id}``            the endpoint (JSON, with its signing secret)
- ``P{wh}:we_acct:{account}``  the account's endpoint ids, by creation time
- ``P{wh}:d:{we}:{evt}``       one delivery (hash): the signed body, status,
  attempts, last status code, next attempt; kept 30 days once settled
- ``P{wh}:d_idx:{we}``         the endpoint's deliveries, newest first
- ``P{wh}:due``                the schedule: ``{we}:{evt}`` scored by when it is due (ms)

A delivery is claimed with one script that moves its score a lease ahead and
stamps a token on it: another replica does not see it as due until the lease
runs out (a replica that died mid-attempt is retried then), and only the
holder of the token may settle it. At least once, one attempt in flight per
event and endpoint.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from ..events.log import RETENTION, Event, mget, new_event_id, type_matches
from ..store.connection import STORE_ERRORS, StoreUnavailable
from ..timefmt import isoformat, utcnow

ENDPOINT_FIELDS = ("url", "events", "description", "disabled")
CREATE_FIELDS = ("url", "events", "description")
_PATTERN = re.compile(r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$")
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MAX_ENDPOINTS = 50  # per account
LIST_MAX = 100

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i, member in ipairs(due) do
  local delivery = ARGV[5] .. member
  if redis.call('EXISTS', delivery) == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
    local token = ARGV[4] .. ':' .. i
    redis.call('HSET', delivery, 'lease', token)
    out[#out + 1] = member
    out[#out + 1] = token
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return out
"""

# KEYS: due, delivery. ARGV: member, token, status, next score (ms), status code,
# error, next_attempt_at, last_attempt_at, retention (s)
_SETTLE = """
if redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], 'lease')
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'status', ARGV[3], 'last_status_code', ARGV[5],
           'last_error', ARGV[6], 'next_attempt_at', ARGV[7], 'last_attempt_at', ARGV[8])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[9]))
end
return 1
"""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_endpoint_id() -> str:
    return "we_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


class EndpointError(ValueError):
    """Refused endpoint input; ``field`` names what is wrong."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message = message
        self.field = field


def validate_events(value: Any) -> tuple[str, ...]:
    if value is None:
        return ("*",)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise EndpointError("events must be a non-empty list of event types", "events")
    for pattern in value:
        if not _PATTERN.match(pattern):
            raise EndpointError(f"{pattern!r} is not an event type, a 'prefix.*' or '*'", "events")
    return tuple(dict.fromkeys(value))


def validate_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 500:
        raise EndpointError("description must be a string of at most 500 characters", "description")
    return value


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    account_id: str
    mode: str
    url: str
    secret: str
    created_at: str
    events: tuple[str, ...] = ("*",)
    description: str = ""
    disabled: bool = False

    def wants(self, event: Event) -> bool:
        return (
            not self.disabled
            and event.mode == self.mode
            and any(type_matches(p, event.type) for p in self.events)
        )

    def public(self) -> dict[str, Any]:
        """As the API shows it: never the secret."""
        return {
            "id": self.id,
            "object": "webhook_endpoint",
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "disabled": self.disabled,
            "mode": self.mode,
            "account_id": self.account_id,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(
            {**self.public(), "secret": self.secret, "events": list(self.events)},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WebhookEndpoint:
        raw = json.loads(text)
        return cls(
            id=raw["id"],
            account_id=raw["account_id"],
            mode=raw["mode"],
            url=raw["url"],
            secret=raw["secret"],
            created_at=raw["created_at"],
            events=tuple(raw.get("events") or ("*",)),
            description=raw.get("description") or "",
            disabled=bool(raw.get("disabled")),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    endpoint_id: str
    event_id: str
    event_type: str
    body: bytes
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str
    extra: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "object": "webhook_delivery",
            "event_id": self.event_id,
            "event_type": self.event_type,
            "endpoint_id": self.endpoint_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "next_attempt_at": self.next_attempt_at,
            "created_at": self.created_at,
        }

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Delivery:
        code = raw.get("last_status_code") or ""
        return cls(
            endpoint_id=raw["endpoint_id"],
            event_id=raw["event_id"],
            event_type=raw.get("event_type", ""),
            body=raw.get("body", "").encode(),
            status=raw.get("status", "pending"),
            attempts=int(raw.get("attempts") or 0),
            last_status_code=int(code) if code.isdigit() else None,
            last_error=raw.get("last_error") or None,
            next_attempt_at=raw.get("next_attempt_at") or None,
            created_at=raw.get("created_at", ""),
        )


class WebhookStore:
    """Endpoints and deliveries; :meth:`enqueue_event` is what :class:`EventLog` calls."""

    def __init__(self, client: aioredis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix
        self.due = self._k("due")
        self.delivery_prefix = self._k("d") + ":"

    def _k(self, *parts: str) -> str:
        return self.prefix + "{wh}:" + ":".join(parts)

    def _delivery(self, endpoint_id: str, event_id: str) -> str:
        return f"{self.delivery_prefix}{endpoint_id}:{event_id}"

    # -- endpoints ----------------------------------------------------------

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        index = self._k("we_acct", endpoint.account_id)
        try:
            if await self.client.zcard(index) >= MAX_ENDPOINTS:
                raise EndpointError(
                    f"an account has at most {MAX_ENDPOINTS} webhook endpoints", "url"
                )
            await self.client.set(self._k("we", endpoint.id), endpoint.to_json())
            await self.client.zadd(index, {endpoint.id: time.time()})
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def save_endpoint(self, endpoint: WebhookEndpoint) -> None:
        try:
            await self.client.set(self._k("we", endpoint.id), endpoint.to_json())
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        try:
            raw = await self.client.get(self._k("we", endpoint_id))
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return WebhookEndpoint.from_json(raw) if raw else None

    async def list_endpoints(self, account_id: str) -> list[WebhookEndpoint]:
        """The account's endpoints, newest first."""
        try:
            ids = await self.client.zrevrange(self._k("we_acct", account_id), 0, -1)
            raws = await mget(self.client, [self._k("we", i) for i in ids]) if ids else []
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [WebhookEndpoint.from_json(r) for r in raws if r]

    async def delete_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """The endpoint and its pending deliveries; settled ones expire on their own."""
        try:
            pending = await self.client.zrange(self._k("d_idx", endpoint.id), 0, -1)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(self._k("we", endpoint.id))
                pipe.zrem(self._k("we_acct", endpoint.account_id), endpoint.id)
                for event_id in pending:
                    pipe.zrem(self.due, f"{endpoint.id}:{event_id}")
                pipe.expire(self._k("d_idx", endpoint.id), RETENTION)
                await pipe.execute()
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- deliveries -----------------------------------------------------------

    async def enqueue_event(self, event: Event) -> int:
        """A delivery of ``event`` for each of its account's endpoints that takes it."""
        endpoints = [e for e in await self.list_endpoints(event.account_id) if e.wants(event)]
        for endpoint in endpoints:
            await self.enqueue(endpoint, event)
        return len(endpoints)

    async def enqueue(self, endpoint: WebhookEndpoint, event: Event) -> None:
        now_ms = int(time.time() * 1000)
        name = self._delivery(endpoint.id, event.id)
        fields = {
            "endpoint_id": endpoint.id,
            "event_id": event.id,
            "event_type": event.type,
            "body": event.to_json(),
            "status": "pending",
            "attempts": 0,
            "last_status_code": "",
            "last_error": "",
            "next_attempt_at": isoformat(utcnow()) or "",
            "created_at": event.created_at,
        }
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(name, mapping=fields)
                pipe.expire(name, RETENTION)
                pipe.zadd(self._k("d_idx", endpoint.id), {event.id: now_ms})
                pipe.zremrangebyscore(
                    self._k("d_idx", endpoint.id), "-inf", now_ms - RETENTION * 1000
                )
                pipe.zadd(self.due, {f"{endpoint.id}:{event.id}": now_ms})
                await pipe.execute()
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def claim(self, *, limit: int, lease: float, owner: str) -> list[tuple[str, str]]:
        """Up to ``limit`` due deliveries, leased to ``owner``: (member, token) pairs."""
        now_ms = int(time.time() * 1000)
        try:
            flat = await self.client.eval(
                _CLAIM,
                1,
                self.due,
                now_ms,
                int(lease * 1000),
                limit,
                f"{owner}:{now_ms}",
                self.delivery_prefix,
            )
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def load(self, member: str) -> Delivery | None:
        try:
            raw = await self.client.hgetall(self.delivery_prefix + member)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return Delivery.from_hash(raw) if raw else None

    async def settle(
        self,
        member: str,
        token: str,
        *,
        status: str,
        status_code: int | None,
        error: str | None,
        next_at: float | None,
    ) -> bool:
        """Record one attempt; False when the lease was lost (another replica holds it)."""
        now = time.time()
        next_ms = int(next_at * 1000) if next_at is not None else 0
        next_text = isoformat(_moment(next_at)) if next_at is not None else ""
        try:
            done = await self.client.eval(
                _SETTLE,
                2,
                self.due,
                self.delivery_prefix + member,
                member,
                token,
                status,
                next_ms,
                "" if status_code is None else str(status_code),
                (error or "")[:300],
                next_text or "",
                isoformat(_moment(now)) or "",
                RETENTION,
            )
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return bool(done)

    async def list_deliveries(
        self, endpoint_id: str, *, limit: int, starting_after: str | None
    ) -> tuple[list[Delivery], bool] | None:
        index = self._k("d_idx", endpoint_id)
        try:
            start = 0
            if starting_after:
                rank = await self.client.zrevrank(index, starting_after)
                if rank is None:
                    return None
                start = rank + 1
            ids = await self.client.zrevrange(index, start, start + limit)
            async with self.client.pipeline(transaction=False) as pipe:
                for event_id in ids[:limit]:
                    pipe.hgetall(self._delivery(endpoint_id, event_id))
                raws = await pipe.execute()
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [Delivery.from_hash(r) for r in raws if r], len(ids) > limit


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_event(endpoint: WebhookEndpoint) -> Event:
    """The ``webhook.test`` event sent by ``POST …/webhook-endpoints/{id}/test``."""
    return Event(
        id=new_event_id(),
        type="webhook.test",
        created_at=isoformat(utcnow()) or "",
        account_id=endpoint.account_id,
        mode=endpoint.mode,
        data={"endpoint_id": endpoint.id, "message": "a test event sent on request"},
    )


def new_endpoint(
    *, account_id: str, mode: str, url: str, events: tuple[str, ...], description: str
) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=new_endpoint_id(),
        account_id=account_id,
        mode=mode,
        url=url,
        secret=new_secret(),
        created_at=isoformat(utcnow()) or "",
        events=events,
        description=description,
    )

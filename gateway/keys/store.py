"""The key store: accounts and keys in Redis, behind one small interface.

Layout, under ``redis.key_prefix`` (``P``):

- ``P key:{id}``            the key record (JSON; the secret's hash, never the secret)
- ``P keyhash:{sha256}``    ``"{key id} {account id}"``: the lookup the request path makes
- ``P acct:{id}``           the account (JSON)
- ``P accts``               every account id, scored by creation time
- ``P acct_keys:{id}:{all|live|test}``  the account's key ids, scored by creation time
  (in milliseconds, strictly increasing per account: ties follow creation order)
- ``P last_used``           key id -> last use (ISO 8601), written in batches
- ``P invalidate``          pub/sub channel: a key's hash whenever its record changes

On Redis Cluster these keys live in different slots, so no write spans them in
one transaction: a change writes the record first, then what points to it
(lookup, indexes), then publishes the invalidation once the writes are
acknowledged. A write cut short leaves at most a record nothing points to,
never a lookup or an index entry without its record.

Behind Sentinel a key's change is acknowledged only once a replica holds it
too (``WAIT 1``, up to half the socket timeout), so a failover right after a revocation does
not bring the key back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool

from ..store.connection import STORE_ERRORS, StoreUnavailable
from ..store.pages import page_after
from .model import Account, KeyRecord


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


# Add ARGV[1] to the sorted set KEYS[1] with the score ARGV[2], or one above the
# highest score there if that is not higher: scores strictly increase in the
# order members are added, ties included. A member already there keeps its
# score (a retried add changes nothing). Returns the member's score.
_NEXT_IN_INDEX = """
local have = redis.call('ZSCORE', KEYS[1], ARGV[1])
if have then return tonumber(have) end
local score = tonumber(ARGV[2])
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
if top and tonumber(top) >= score then score = tonumber(top) + 1 end
redis.call('ZADD', KEYS[1], score, ARGV[1])
return score
"""


# Delete KEYS[1] only if it still holds ARGV[1] (the lock's owner releases it, nobody else).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

LOCK_TTL_MS = 5000  # a holder that dies frees the lock after this long
LOCK_WAIT = 3.0  # how long to wait for it


class AccountBusy(Exception):
    """Another change to the account's admin keys held its lock too long."""


class KeyStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "gw:"):
        self.client = client
        self.prefix = prefix
        self.channel = prefix + "invalidate"
        self.unsettled: set[str] = set()  # key hashes whose write failed: publish when back
        pool = getattr(client, "connection_pool", None)
        self._wait_ms = 0  # behind Sentinel: how long a write waits for a replica
        if isinstance(pool, SentinelConnectionPool):
            timeout = pool.connection_kwargs.get("socket_timeout") or 2.0
            self._wait_ms = max(int(timeout * 500), 1)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @contextlib.asynccontextmanager
    async def account_lock(self, account_id: str) -> AsyncIterator[None]:
        """One change at a time to an account's admin keys, across every replica."""
        key, token = self._k("lock", "admins", account_id), secrets.token_hex(16)
        deadline = time.monotonic() + LOCK_WAIT
        try:
            while not await self.client.set(key, token, nx=True, px=LOCK_TTL_MS):
                if time.monotonic() > deadline:
                    raise AccountBusy(f"another change to account {account_id}'s keys is running")
                await asyncio.sleep(0.02)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        try:
            yield
        finally:
            with contextlib.suppress(*STORE_ERRORS):
                await self.client.eval(_RELEASE, 1, key, token)

    async def ping(self) -> bool:
        """Whether the store answers; when it does, the invalidations of writes that failed
        (and so may or may not have landed) are published (the health monitor pings each
        second)."""
        try:
            up = bool(await self.client.ping())
            if up and self.unsettled:
                settling = list(self.unsettled)
                for key_hash in settling:
                    await self.client.publish(self.channel, key_hash)
                    self.unsettled.discard(key_hash)
            return up
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    # -- the request path ---------------------------------------------------

    async def load_by_hash(self, key_hash: str) -> tuple[KeyRecord, Account | None] | None:
        """The key whose secret hashes to ``key_hash``, with its account; two round trips."""
        try:
            ref = await self.client.get(self._k("keyhash", key_hash))
            if ref is None:
                return None
            key_id, _, account_id = ref.partition(" ")
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._k("key", key_id))
                pipe.get(self._k("acct", account_id))
                raw_key, raw_account = await pipe.execute()
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        if raw_key is None:
            return None
        record = KeyRecord.from_json(raw_key)
        if record.hash != key_hash:
            return None
        return record, Account.from_json(raw_account) if raw_account else None

    # -- keys -------------------------------------------------------------

    async def get_key(self, key_id: str) -> KeyRecord | None:
        try:
            raw = await self.client.get(self._k("key", key_id))
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return KeyRecord.from_json(raw) if raw else None

    async def _mget(self, names: list[str]) -> list[str | None]:
        """MGET; on a cluster, one MGET per slot (redis-py's ``mget_nonatomic``)."""
        per_slot = getattr(self.client, "mget_nonatomic", None)
        if per_slot is not None:
            return await per_slot(names)
        return await self.client.mget(names)

    async def get_keys(self, key_ids: Iterable[str]) -> list[KeyRecord]:
        ids = list(key_ids)
        if not ids:
            return []
        try:
            raws = await self._mget([self._k("key", i) for i in ids])
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [KeyRecord.from_json(r) for r in raws if r]

    async def last_used(self, key_ids: Iterable[str]) -> dict[str, str | None]:
        ids = list(key_ids)
        if not ids:
            return {}
        try:
            values = await self.client.hmget(self._k("last_used"), ids)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return dict(zip(ids, values, strict=True))

    async def add_key(self, record: KeyRecord) -> None:
        # Scored by the moment it is added, to the millisecond (created_at holds whole
        # seconds), and above every key the account has: keys made within one
        # millisecond still list newest first, in the order they were made. The
        # account's "all" index picks the score; the mode's index takes the same.
        at = max(_ms(record.created_at), int(time.time() * 1000))
        index = self._k("acct_keys", record.account_id, "all")
        try:
            await self.client.set(self._k("key", record.id), record.to_json())
            score = int(await self.client.eval(_NEXT_IN_INDEX, 1, index, record.id, at))
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(self._k("keyhash", record.hash), f"{record.id} {record.account_id}")
                pipe.zadd(self._k("acct_keys", record.account_id, record.mode), {record.id: score})
                self._replicated(pipe)
                await pipe.execute()
            await self.client.publish(self.channel, record.hash)
        except STORE_ERRORS as exc:
            self.unsettled.add(record.hash)
            raise StoreUnavailable(str(exc)) from exc

    async def save_key(self, record: KeyRecord) -> None:
        """Replace an existing key's record and tell every replica to drop its copy.

        A write that fails may still have landed (the store took it, the answer was
        lost): its key is kept in :attr:`unsettled` and its invalidation published by
        the next :meth:`ping` the store answers, so no replica keeps the old record.
        """
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(self._k("key", record.id), record.to_json())
                self._replicated(pipe)
                await pipe.execute()
            await self.client.publish(self.channel, record.hash)  # once the write is acknowledged
        except STORE_ERRORS as exc:
            self.unsettled.add(record.hash)
            raise StoreUnavailable(str(exc)) from exc

    def _replicated(self, pipe: Any) -> None:
        """Behind Sentinel: wait (on the connection that wrote) until a replica has the writes."""
        if self._wait_ms:
            pipe.execute_command("WAIT", 1, self._wait_ms)

    async def list_key_ids(
        self, account_id: str, *, mode: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[str], bool] | None:
        """A page of the account's key ids, newest first, and whether more follow; None
        when ``starting_after`` is not a key of this list (another mode's, say)."""
        index = self._k("acct_keys", account_id, mode or "all")
        try:
            ids = await page_after(self.client, index, starting_after, limit + 1)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        if ids is None:
            return None
        return ids[:limit], len(ids) > limit

    # -- accounts -----------------------------------------------------------

    async def add_account(self, account: Account) -> None:
        try:
            await self.client.set(self._k("acct", account.id), account.to_json())
            await self.client.zadd(self._k("accts"), {account.id: _ms(account.created_at)})
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get_account(self, account_id: str) -> Account | None:
        try:
            raw = await self.client.get(self._k("acct", account_id))
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return Account.from_json(raw) if raw else None

    async def list_accounts(self) -> list[Account]:
        try:
            ids = await self.client.zrange(self._k("accts"), 0, -1)
            raws = await self._mget([self._k("acct", i) for i in ids]) if ids else []
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [Account.from_json(r) for r in raws if r]

    async def publish_invalidation(self, key_hashes: Iterable[str]) -> None:
        try:
            for key_hash in key_hashes:
                await self.client.publish(self.channel, key_hash)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc


def dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))

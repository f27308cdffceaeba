"""Long-lived connections by key: what a revocation, expiry or leak must cut (SPEC §13).

A WebSocket relay or a streamed response (server-sent events, a long
download) registers itself under its key's hash for as long as it is open.
When a key's record changes (the invalidation channel, on every replica
within a second) or it passes its expiry (looked at every
:data:`EXPIRY_CHECK` seconds), each of its open connections is cut: a
WebSocket with close code 1008, a stream by closing the client connection.
Nothing here runs per request on the fast path: only responses that stream
register.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger("gateway.streams")

EXPIRY_CHECK = 0.25  # seconds between two looks for keys that expired with streams open
POLICY_VIOLATION = 1008  # RFC 6455: the key no longer allows this connection
GOING_AWAY = 1001

REVOKED = "the API key has been revoked"
EXPIRED = "the API key has expired"
SHUTTING_DOWN = "the gateway is shutting down"
_CUT_CODES = {REVOKED: "revoked_api_key", EXPIRED: "expired_api_key"}


def cut_code(reason: str) -> str:
    """The access log's code for a connection cut for ``reason``."""
    return _CUT_CODES.get(reason, "shutting_down")


class Cuttable(Protocol):
    def cut(self, code: int, reason: str) -> None: ...


class KeyState(Protocol):
    """What decides whether a key's streams may stay open."""

    revoked: bool
    expires_at: float | None


class OpenStreams:
    """The open long-lived connections of one worker, by key hash."""

    def __init__(
        self,
        load: Callable[[str], Awaitable[Any]],
        clock: Callable[[], float] = time.time,
    ):
        self._load = load  # the key's current record, from the store
        self._clock = clock
        self._by_hash: dict[str, dict[Cuttable, float | None]] = {}  # stream -> expiry
        self._all: set[Cuttable] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._checks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._all)

    def add(self, stream: Cuttable, key_hash: str | None, expires_at: float | None) -> None:
        """``stream`` is open for the key of ``key_hash`` (None: a route without keys)."""
        self._all.add(stream)
        if key_hash is None:
            return
        self._by_hash.setdefault(key_hash, {})[stream] = expires_at
        self._arm(expires_at)

    def _arm(self, expires_at: float | None) -> None:
        """Look for expired keys every :data:`EXPIRY_CHECK` seconds while one has an expiry."""
        if expires_at is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(EXPIRY_CHECK, self._expire)

    def discard(self, stream: Cuttable, key_hash: str | None) -> None:
        self._all.discard(stream)
        if key_hash is None:
            return
        streams = self._by_hash.get(key_hash)
        if streams is not None:
            streams.pop(stream, None)
            if not streams:
                del self._by_hash[key_hash]

    def changed(self, key_hash: str) -> None:
        """A key's record changed: if it has open streams, read it again and cut if it must."""
        if key_hash not in self._by_hash:
            return
        task = asyncio.get_running_loop().create_task(self._recheck(key_hash))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def resync(self) -> None:
        """Changes may have been missed (the invalidation channel was down): read again the
        key of every open stream."""
        for key_hash in list(self._by_hash):
            self.changed(key_hash)

    async def _recheck(self, key_hash: str) -> None:
        try:
            key: KeyState | None = await self._load(key_hash)
        except Exception as exc:  # the store is down: keep what is open, as cached keys do
            log.warning("could not read a changed key with open streams: %s", exc)
            return
        if key is None or key.revoked:
            self.cut(key_hash, REVOKED)
        elif key.expires_at is not None and key.expires_at <= self._clock():
            self.cut(key_hash, EXPIRED)
        else:  # an expiry set, moved or lifted (PATCH, a rotation's grace): the streams follow
            streams = self._by_hash.get(key_hash)
            if streams:
                for stream in streams:
                    streams[stream] = key.expires_at
                self._arm(key.expires_at)

    def cut(self, key_hash: str, reason: str, code: int = POLICY_VIOLATION) -> int:
        streams = self._by_hash.pop(key_hash, {})
        for stream in list(streams):
            self._all.discard(stream)
            with contextlib.suppress(Exception):
                stream.cut(code, reason)
        return len(streams)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock()
        waiting = False
        for key_hash, streams in list(self._by_hash.items()):
            expiries = [at for at in streams.values() if at is not None]
            if not expiries:
                continue
            if min(expiries) <= now:
                self.cut(key_hash, EXPIRED)
            else:
                waiting = True
        if waiting:
            self._timer = asyncio.get_running_loop().call_later(EXPIRY_CHECK, self._expire)

    def close_all(
        self,
        code: int = GOING_AWAY,
        reason: str = SHUTTING_DOWN,
        only: type | None = None,
    ) -> int:
        """Cut every open stream (or those of type ``only``); how many."""
        chosen = [s for s in self._all if only is None or isinstance(s, only)]
        for stream in chosen:
            self._all.discard(stream)
            for streams in self._by_hash.values():
                streams.pop(stream, None)
            with contextlib.suppress(Exception):
                stream.cut(code, reason)
        self._by_hash = {h: s for h, s in self._by_hash.items() if s}
        if only is None and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return len(chosen)

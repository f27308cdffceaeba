"""WebSockets (SPEC §13): the handshake checked like any request, then relayed both ways.

Both legs go through aiohttp's public WebSocket API: the client's with
``web.WebSocketResponse``, the upstream's with ``ClientSession.ws_connect``.
The upstream handshake is made first, so the client is answered with the
subprotocol the upstream selected (or the upstream's refusal). Messages are
relayed one at a time, each send awaited before the next receive, so a slow
reader slows its writer (backpressure both ways); a close on either side
closes the other with the same code. A connection silent both ways for the
route's ``websocket_idle_timeout`` is closed with 1001, a revoked, expired or
leaked key's with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from .headers import KEY_SUBPROTOCOL

SUBPROTOCOL_KEY = KEY_SUBPROTOCOL.decode()
NORMAL, GOING_AWAY = 1000, 1001
_UNSENDABLE = {None, 1005, 1006, 1015}  # codes a close frame may not carry
CLOSED_BY_PEER = object()  # a pump's result: it passed a close from its side to the other
CLOSE_GRACE = 5.0  # seconds a close in progress gets to reach the other side


def is_websocket_upgrade(method: str, headers) -> bool:
    if method != "GET":
        return False
    upgrade = headers.get("Upgrade", "")
    if upgrade.lower() != "websocket":
        return False
    tokens = ",".join(headers.getall("Connection", ())).lower()
    return "upgrade" in (t.strip() for t in tokens.split(","))


def offered_protocols(headers) -> list[str]:
    return [
        p.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", ())
        for p in value.split(",")
        if p.strip()
    ]


def split_key(protocols: list[str]) -> tuple[str | None, list[str], bool]:
    """``(key, the other protocols, whether more than one key entry was offered)``."""
    keys = [p[len(SUBPROTOCOL_KEY) :] for p in protocols if p.startswith(SUBPROTOCOL_KEY)]
    rest = [p for p in protocols if not p.startswith(SUBPROTOCOL_KEY)]
    return (keys[0] if keys else None), rest, len(keys) > 1


def _code(code: int | None) -> int:
    return NORMAL if code in _UNSENDABLE else int(code)  # type: ignore[arg-type]


class WebSocketRelay:
    """One client WebSocket and its upstream, relayed until either side closes."""

    def __init__(
        self,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._last = clock()
        self._closing: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        to_upstream = asyncio.ensure_future(self._pump(self.client, self.upstream))
        to_client = asyncio.ensure_future(self._pump(self.upstream, self.client))
        self._watch_idle()
        try:
            done, pending = await asyncio.wait(
                {to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED
            )
            if pending and not any(t.result() is CLOSED_BY_PEER for t in done if not t.exception()):
                # That side only saw its connection closing: the other pump is passing a
                # close on, with its code; let it finish.
                await asyncio.wait(pending, timeout=CLOSE_GRACE)
        finally:
            if self._idle is not None:
                self._idle.cancel()
            for task in (to_upstream, to_client):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            if self._closing is not None:
                with contextlib.suppress(Exception):
                    await self._closing
            await self._close_both(GOING_AWAY, b"")

    def _watch_idle(self) -> None:
        """One timer per connection, not one per message: it wakes when the connection
        would have been silent for the idle timeout, and either closes it or sleeps on
        to the new deadline."""
        self._idle = None
        silent = self._clock() - self._last
        if silent >= self.idle_timeout:
            self.cut(GOING_AWAY, "idle timeout")
            return
        self._idle = asyncio.get_running_loop().call_later(
            self.idle_timeout - silent, self._watch_idle
        )

    async def _pump(self, source, sink) -> object:
        clock = self._clock
        while True:
            message = await source.receive()
            self._last = clock()
            kind = message.type
            if kind == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif kind == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif kind == aiohttp.WSMsgType.CLOSE:
                code = _code(message.data)
                reason = (message.extra or "").encode()
                await sink.close(code=code, message=reason)  # the close code passes through
                await source.close(code=code)  # then the closing handshake with this side
                return CLOSED_BY_PEER
            else:  # CLOSING, CLOSED, ERROR: the connection is gone
                return None

    async def _close_both(self, code: int, reason: bytes) -> None:
        for side in (self.client, self.upstream):
            if not side.closed:
                with contextlib.suppress(Exception):
                    await side.close(code=code, message=reason)

    def cut(self, code: int, reason: str) -> None:
        """Close both sides now (a revoked key: 1008; shutdown: 1001)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close_both(code, reason.encode()[:120])
            )

"""Real faults for tests (a store that fails is ``realparts.RedisServer``, stopped,
paused and killed): an upstream that misbehaves on purpose, and a raw-socket HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# -- a misbehaving upstream -----------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    disconnected: asyncio.Event | None = None
    disconnected_at: float | None = None


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultUpstream:
    """An HTTP/1.1 upstream on raw asyncio streams; the path picks the behaviour.

    ``/ok...`` 200 JSON echo of what it received; ``/cut-chunked`` three chunks
    then a reset; ``/cut-length?n=N`` half of an N-byte body (default 200000) then a reset;
    ``/hang`` reads the request and never answers, noting when the client
    goes away; ``/slow?s=N`` answers after N seconds; ``/fail`` resets at once.
    Every request is recorded in ``seen``.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> FaultUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                seen = Seen(method, target, headers)
                self.seen.append(seen)
                if not await self._answer(seen, target, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, seen: Seen, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        path, _, query = target.partition("?")
        if path.startswith("/cut-chunked"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(3):
                writer.write(b"6\r\nchunk%d\r\n" % i)
                await writer.drain()
                await asyncio.sleep(0.05)
            _abort(writer)
            return False
        if path.startswith("/cut-length"):
            total = int(query.partition("n=")[2] or 200000)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total + b"x" * (total // 2)
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            _abort(writer)
            return False
        if path.startswith("/fail"):
            _abort(writer)
            return False
        if path.startswith("/hang"):
            seen.disconnected = asyncio.Event()
            with contextlib.suppress(Exception):
                await reader.read()  # returns at EOF: the gateway closed its side
            seen.disconnected_at = time.monotonic()
            seen.disconnected.set()
            return False
        if path.startswith("/slow"):
            await asyncio.sleep(float(query.partition("s=")[2] or 5))
        body = json.dumps({"method": seen.method, "path": path, "headers": seen.headers}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body
        )
        await writer.drain()
        return True


class ThreadedUpstream:
    """A :class:`FaultUpstream` on an event loop of its own thread, for synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.upstream = FaultUpstream()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FaultUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.start(), self.loop).result(10)
        return self.upstream

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.upstream.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- raw HTTP -----------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send ``data`` as is on a new connection, read until the server closes it."""
    started = time.monotonic()
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        with contextlib.suppress(OSError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
    return _parse(b"".join(chunks), time.monotonic() - started)


def _skip_interim(data: bytes) -> bytes:
    """Drop ``1xx`` interim answers (``100 Continue``) before the final one."""
    while data.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in data:
        data = data.partition(b"\r\n\r\n")[2]
    return data


def _complete(data: bytes) -> bool:
    head, sep, body = _skip_interim(data).partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def _parse(data: bytes, elapsed: float) -> RawAnswer:
    data = _skip_interim(data)
    if not data:
        return RawAnswer(None, {}, b"", elapsed)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(status, headers, body, elapsed)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll ``predicate`` until true; the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> RawAnswer:
    """A GET on a new connection with urllib semantics but never raising on an HTTP status."""
    import urllib.error
    import urllib.request

    started = time.monotonic()
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return RawAnswer(
                resp.status,
                {k.lower(): v for k, v in resp.headers.items()},
                resp.read(),
                time.monotonic() - started,
            )
    except urllib.error.HTTPError as exc:
        return RawAnswer(
            exc.code,
            {k.lower(): v for k, v in exc.headers.items()},
            exc.read(),
            time.monotonic() - started,
        )

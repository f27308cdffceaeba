"""A fast stub upstream for the benchmark when nginx is not installed.

An asyncio ``Protocol`` (uvloop when available) that answers every request
with the same 200-byte JSON body, keep-alive, pipelining allowed. It reads
request bodies sent with ``Content-Length`` and skips them; nothing else of
HTTP is implemented (no chunked request bodies), which is all the benchmark
sends. On one core it is several times faster than any Python proxy in front
of it, so it is not what a proxy row measures.

    .venv/bin/python bench/upstream_stub.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

_HEAD = b'{"ok":true,"service":"bench-upstream","items":[1,2,3,4,5,6,7,8],"note":"'
BODY = _HEAD + b"x" * (200 - len(_HEAD) - 2) + b'"}'
assert len(BODY) == 200
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench-stub\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)


class Stub(asyncio.Protocol):
    __slots__ = ("transport", "buffer", "skip")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.skip = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        out = []
        while True:
            if self.skip:
                n = min(self.skip, len(buf))
                del buf[:n]
                self.skip -= n
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                value = head[at + 17 : line_end if line_end >= 0 else None]
                self.skip = int(value.strip() or 0)
            out.append(RESPONSE)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Stub, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(args.host, args.port))

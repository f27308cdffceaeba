"""One structured access-log line per request, written in batches off the hot path.

Lines are JSON objects; the query string is never logged, and anything in the
path that looks like a key is masked, so no secret reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from typing import IO

_PLAIN = re.compile(r"^[A-Za-z0-9 ._:/@%+=~,;!$&*()\-]*$")


def _json(value: str | None) -> str:
    """``value`` as a JSON string (or null); json.dumps only when escaping may be needed."""
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN.match(value) else json.dumps(value)


def _plain(value: str | None) -> str:
    """A value that never needs escaping, as JSON."""
    return "null" if value is None else f'"{value}"'


class AccessLog:
    def __init__(self, key_prefix: str, stream: IO[str] | None = None, interval: float = 0.25):
        self._stream = stream
        self._interval = interval
        self._lines: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._marker = f"{key_prefix}_"
        self._secret = re.compile(re.escape(key_prefix) + r"_(?:live|test)_[A-Za-z0-9]*")

    def mask(self, text: str) -> str:
        if self._marker in text:
            return self._secret.sub(self._marker + "***", text)
        return text

    def write(
        self,
        *,
        method: str,
        path: str,
        status: int,
        duration: float,
        request_id: str,
        client_ip: str | None,
        key_id: str | None,
        route: str | None,
        code: str | None,
    ) -> None:
        # Only the path may need escaping: the method is an HTTP token, the request id
        # [A-Za-z0-9._-], the client an IP address, key ids, route names (checked by the
        # config) and codes the gateway's own.
        self._lines.append(
            f'{{"ts":{time.time():.3f},"msg":"request","method":"{method}",'
            f'"path":{_json(self.mask(path))},"status":{status},'
            f'"duration_ms":{duration * 1000:.2f},"request_id":"{request_id}",'
            f'"client_ip":{_plain(client_ip)},"key_id":{_plain(key_id)},'
            f'"route":{_plain(route)},"code":{_plain(code)}}}'
        )
        if len(self._lines) >= 4096:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self._stream or sys.stdout
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()

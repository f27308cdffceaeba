"""One structured access-log line per request, written in batches off the hot path.

Lines are JSON objects with OpenTelemetry attribute names (SPEC §17); the query
string is never logged, and anything in the path, the user agent or the request
id that looks like a key is masked, so no secret reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from typing import IO

from .logs import KeyMask

_PLAIN = re.compile(r"^[A-Za-z0-9 ._:/@%+=~,;!$&*()\-]*$")


def _json(value: str | None) -> str:
    """``value`` as a JSON string (or null); json.dumps only when escaping may be needed."""
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN.match(value) else json.dumps(value)


def _plain(value: str | None) -> str:
    """A value that never needs escaping, as JSON."""
    return "null" if value is None else f'"{value}"'


def _size(value: int | None) -> str:
    return "null" if value is None else str(value)


class AccessLog:
    def __init__(self, key_prefix: str, stream: IO[str] | None = None, interval: float = 0.25):
        self._stream = stream
        self._interval = interval
        self._lines: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._second = -1
        self._stamp = ""
        self._milli = -1
        self._milli_stamp = ""
        self.mask = KeyMask(key_prefix)  # anything shaped like a key, in what is logged

    def timestamp(self, now: float) -> str:
        """``now`` in RFC 3339, UTC, to the millisecond (made once a millisecond)."""
        milli = int(now * 1000)
        if milli != self._milli:
            self._milli = milli
            second, rest = divmod(milli, 1000)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._milli_stamp = f"{self._stamp}.{rest:03d}Z"
        return self._milli_stamp

    def write(
        self,
        *,
        method: str,
        path: str,
        status: int,
        duration: float,
        upstream_duration: float | None,
        request_id: str,
        client_address: str | None,
        user_agent: str | None,
        request_body_size: int | None,
        response_body_size: int | None,
        trace_id: str,
        span_id: str,
        key_id: str | None,
        account_id: str | None,
        route: str | None,
        code: str | None,
    ) -> None:
        # Only the path and the user agent may need escaping: the method is an HTTP token,
        # the request id [A-Za-z0-9._-], the client an IP address, trace ids hex, key and
        # account ids, route names (checked by the config) and codes the gateway's own.
        upstream = "null" if upstream_duration is None else f"{upstream_duration * 1000:.2f}"
        agent = "null" if user_agent is None else _json(self.mask(user_agent))
        self._lines.append(
            f'{{"timestamp":"{self.timestamp(time.time())}","http.request.method":"{method}",'
            f'"url.path":{_json(self.mask(path))},"http.response.status_code":{status},'
            f'"client.address":{_plain(client_address)},"user_agent.original":{agent},'
            f'"duration_ms":{duration * 1000:.2f},"upstream_duration_ms":{upstream},'
            f'"http.request.body.size":{_size(request_body_size)},'
            f'"http.response.body.size":{_size(response_body_size)},'
            f'"trace_id":"{trace_id}","span_id":"{span_id}","request_id":"{request_id}",'
            f'"route":{_plain(route)},"key_id":{_plain(key_id)},'
            f'"account_id":{_plain(account_id)},"code":{_plain(code)}}}'
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

"""One management call: the request, who made it, and the ways to answer it.

Handlers read their input through :class:`Call` (a capped, strictly parsed
JSON body; the query string) and raise the service's :class:`InvalidRequest`
for a body or parameter they cannot read. Validation of the values themselves
belongs to :mod:`gateway.keys.service`, shared with the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from ..keys.service import Actor, InvalidRequest
from ..timefmt import isoformat, utcnow

if TYPE_CHECKING:
    from ..pipeline import Principal, RequestContext
    from ..runtime import Runtime

BODY_LIMIT = 64 * 1024  # management bodies are small; server.max_body_bytes caps it lower


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the body is over {limit} bytes")
        self.limit = limit


def body_limit(runtime: Runtime) -> int:
    return min(BODY_LIMIT, runtime.config.server.max_body_bytes)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the field {name!r} is given twice")
        out[name] = value
    return out


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, strictly: UTF-8, no NaN/Infinity, no repeated field; empty is ``{}``."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(
            raw.decode("utf-8"),
            parse_constant=_refuse_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", "body")
    return data


@dataclass(slots=True)
class Call:
    request: web.BaseRequest
    ctx: RequestContext
    runtime: Runtime
    params: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None

    @property
    def actor(self) -> Actor:
        assert self.principal is not None
        record = self.principal.key.record
        return Actor(
            record.id,
            account_id=record.account_id,
            mode=record.mode,
            request_id=self.ctx.request_id,
        )

    async def json_body(self, required: bool = False) -> dict[str, Any]:
        """The body as a JSON object (``{}`` when empty, unless ``required``); raises
        BodyTooLarge past the cap."""
        limit = body_limit(self.runtime)
        length = self.request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await self.request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        raw = b"".join(chunks)
        if required and not raw.strip():
            raise InvalidRequest("a JSON object is required as the body", "body")
        return parse_json_object(raw)

    def query(self, allowed: tuple[str, ...]) -> dict[str, str]:
        """The query parameters, each at most once and each one of ``allowed``."""
        out: dict[str, str] = {}
        for name, value in parse_qsl(self.ctx.query, keep_blank_values=True):
            if name not in allowed:
                raise InvalidRequest(f"unknown query parameter {name!r}", name)
            if name in out:
                raise InvalidRequest(f"the query parameter {name!r} is given twice", name)
            out[name] = value
        return out

    def meta(self, **extra: Any) -> dict[str, Any]:
        return {"request_id": self.ctx.request_id, **extra}


def json_answer(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def now_iso() -> str:
    return isoformat(utcnow()) or ""

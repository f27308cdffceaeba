"""``{prefix}/events``: the caller's account's events, newest first (SPEC §14).

``admin`` or ``webhook`` keys; a test-mode key sees test-mode events only, a
live key both. Query: ``limit`` (1-100, default 10), ``starting_after`` (an
event id of the previous page), ``type`` (an exact type, or ``alert.`` /
``alert.*`` for every alert).
"""

from __future__ import annotations

import re

from aiohttp import web

from ..events.log import LIST_MAX
from ..keys.service import InvalidRequest, NotFound
from .calls import Call, json_answer

LIST_PARAMETERS = ("limit", "starting_after", "type")
DEFAULT_LIMIT = 10
_TYPE = re.compile(r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*?)?)$")


def parse_limit(query: dict[str, str]) -> int:
    if "limit" not in query:
        return DEFAULT_LIMIT
    text = query["limit"]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text[:6]) <= LIST_MAX:
        raise InvalidRequest(f"limit must be a whole number from 1 to {LIST_MAX}", "limit")
    return int(text)


_EVENT_ID = re.compile(r"^evt_[A-Za-z0-9]+$")


def parse_starting_after(query: dict[str, str]) -> str | None:
    """An event id, when given; empty or of another form is 400, as the document says."""
    if "starting_after" not in query:
        return None
    value = query["starting_after"]
    if not _EVENT_ID.match(value):
        raise InvalidRequest(
            f"starting_after {value!r} is not an event id (evt_…)", "starting_after"
        )
    return value


async def list_events(call: Call) -> web.Response:
    query = call.query(LIST_PARAMETERS)
    limit = parse_limit(query)
    type_filter = query.get("type")
    if type_filter is not None and not _TYPE.match(type_filter):
        raise InvalidRequest(
            f"type {type_filter!r} is not an event type, a 'prefix.' or 'prefix.*'", "type"
        )
    actor = call.actor
    starting_after = parse_starting_after(query)
    page = await call.runtime.service.events.list(
        actor.account_id or "",
        test_only=actor.test_only,
        limit=limit,
        starting_after=starting_after,
        type_filter=type_filter,
    )
    if page is None:  # an unknown id is 404, as for the key list (SPEC §7)
        raise NotFound(
            f"starting_after {starting_after!r} is not an event of this list", "starting_after"
        )
    events, has_more = page
    return json_answer(
        {
            "data": [e.public() for e in events],
            "has_more": has_more,
            "meta": call.meta(
                limit=limit,
                has_more=has_more,
                next_starting_after=events[-1].id if has_more and events else None,
            ),
        }
    )

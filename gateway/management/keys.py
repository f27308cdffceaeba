"""``{prefix}/api-keys``: list, create, show, change, revoke, rotate, usage (SPEC §7).

Thin over :class:`~gateway.keys.service.KeyService`, the same operations the
CLI runs: each handler reads the request, calls one operation as the calling
key, and shapes the answer. A key is always shown through
:meth:`KeyRecord.public` (``prefix`` and ``last4``, never the secret or its
hash); the secret appears once, in the answer to create and rotate.
"""

from __future__ import annotations

from aiohttp import web

from ..checks.referrer import referrer_warnings
from ..keys.model import KeyRecord
from ..keys.service import InvalidRequest
from .calls import Call, json_answer
from .usage import USAGE_DAYS, usage_days

LIST_PARAMETERS = ("limit", "starting_after", "mode")
DEFAULT_LIMIT = 10
ROTATE_FIELDS = ("grace_period",)
REVOKED_MESSAGE = "API key revoked successfully"


async def _shown(call: Call, record: KeyRecord, after_change: bool = True) -> dict:
    """The key with its last use and its live credits (refills due applied)."""
    return (await call.runtime.service.shown([record], after_change=after_change))[0]


async def list_keys(call: Call) -> web.Response:
    query = call.query(LIST_PARAMETERS)
    limit: int = DEFAULT_LIMIT
    if "limit" in query:
        text = query["limit"]
        if not (text.isascii() and text.isdigit()) or len(text) > 6:
            raise InvalidRequest(f"limit must be a whole number, not {text!r}", "limit")
        limit = int(text)
    actor = call.actor
    records, has_more = await call.runtime.service.list_keys(
        actor,
        actor.account_id,
        mode=query.get("mode"),
        limit=limit,
        starting_after=query.get("starting_after"),  # empty is no key id: 400
    )
    return json_answer(
        {
            "data": await call.runtime.service.shown(records),
            "has_more": has_more,
            "meta": call.meta(
                limit=limit,
                has_more=has_more,
                next_starting_after=records[-1].id if has_more and records else None,
            ),
        }
    )


async def create_key(call: Call) -> web.Response:
    body = await call.json_body()
    actor = call.actor
    record, secret = await call.runtime.service.create_key(actor, actor.account_id, body)
    return json_answer(
        {"data": {**await _shown(call, record), "key": secret}, "meta": _meta(call, record)},
        status=201,
    )


def _meta(call: Call, record: KeyRecord) -> dict:
    warnings = referrer_warnings(record.allowed_referrers)
    return call.meta(warnings=warnings) if warnings else call.meta()


async def get_key(call: Call) -> web.Response:
    record = await call.runtime.service.get_key(call.actor, call.params["id"])
    return json_answer({"data": await _shown(call, record, False), "meta": call.meta()})


async def update_key(call: Call) -> web.Response:
    body = await call.json_body(required=True)  # the fields to change: no body is no JSON
    record = await call.runtime.service.update_key(call.actor, call.params["id"], body)
    return json_answer({"data": await _shown(call, record), "meta": _meta(call, record)})


async def revoke_key(call: Call) -> web.Response:
    record = await call.runtime.service.revoke_key(call.actor, call.params["id"])
    return json_answer(
        {
            "data": {
                "id": record.id,
                "revoked_at": record.revoked_at,
                "credits": (await _shown(call, record))["credits"],
            },
            "message": REVOKED_MESSAGE,
            "meta": call.meta(),
        }
    )


async def rotate_key(call: Call) -> web.Response:
    body = await call.json_body()
    for name in body:
        if name not in ROTATE_FIELDS:
            raise InvalidRequest(f"unknown field {name!r}", name)
    new, secret, old = await call.runtime.service.rotate_key(
        call.actor, call.params["id"], body.get("grace_period")
    )
    return json_answer(
        {
            "data": {
                **await _shown(call, new),
                "key": secret,
                "previous_key": {"id": old.id, "expires_at": old.expires_at},
            },
            "meta": call.meta(),
        },
        status=201,
    )


async def key_usage(call: Call) -> web.Response:
    record = await call.runtime.service.get_key(call.actor, call.params["id"])
    days = await usage_days(call.runtime, record, USAGE_DAYS)
    budgets = await call.runtime.service.budgets(record)
    return json_answer(
        {
            "data": {
                "key_id": record.id,
                "days": days,
                "quota": budgets["quota"],
                "credits": budgets["credits"],
            },
            "meta": call.meta(),
        }
    )

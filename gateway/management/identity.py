"""``GET {prefix}/auth/verify`` and ``GET {prefix}/account``: who the caller is (SPEC §7)."""

from __future__ import annotations

from aiohttp import web

from ..keys.service import rotation_due
from ..store.connection import StoreUnavailable
from .calls import Call, json_answer, now_iso

API_VERSION = "v1"


async def verify(call: Call) -> web.Response:
    assert call.principal is not None
    record = call.principal.key.record
    try:
        last_used = (await call.runtime.store.last_used([record.id])).get(record.id)
    except StoreUnavailable:
        last_used = None  # a cached key still verifies while the store is down
    credits = None
    if record.credits_id is not None:
        try:
            credits = (await call.runtime.service.credits_of([record])).get(record.id)
        except StoreUnavailable:  # the refill as stored; the balance cannot be read now
            credits = {"remaining": None, "refill": (record.credits or {}).get("refill")}
    return json_answer(
        {
            "valid": True,
            "key_id": record.id,
            "name": record.name,
            "mode": record.mode,
            "account_id": record.account_id,
            "permissions": list(record.permissions),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "last_used_at": last_used,
            "rotation_due": rotation_due(record, call.runtime.config.keys.rotation_days),
            "credits": credits,
        }
    )


async def account(call: Call) -> web.Response:
    assert call.principal is not None
    found = await call.runtime.service.account(call.principal.key.record.account_id)
    return json_answer(
        {
            "data": {
                "account_id": found.id,
                "name": found.name,
                "email": found.email,
                "plan": found.plan,
                "api_version": API_VERSION,
            },
            "meta": call.meta(timestamp=now_iso()),
        }
    )

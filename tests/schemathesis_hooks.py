"""Schemathesis hooks for tests/test_management_schemathesis.py: a real admin key, minted again
whenever the run has revoked, rotated or expired the one it was using.

Schemathesis calls the management API with whatever key ids it finds, its own
key's among them: a DELETE revokes it, a rotation with ``grace_period: 0s``
expires it. The provider below creates an admin key in the store (through
:class:`~gateway.keys.service.KeyService`, as ``gateway keys create`` does)
and, on a 401, schemathesis asks it for a fresh one and replays the call.

Failures the document states only in words are set aside (see :func:`filter_failure`).

``KEYGATE_CONFIG`` names the gateway's config file, ``KEYGATE_ACCOUNT`` the account.
"""

from __future__ import annotations

import asyncio
import json
import os

import redis.asyncio as aioredis
import schemathesis

from gateway.config import load_config
from gateway.keys.audit import AuditLog
from gateway.keys.service import CLI, KeyService
from gateway.keys.store import KeyStore

CONFIG = load_config(os.environ["KEYGATE_CONFIG"])
ACCOUNT = os.environ["KEYGATE_ACCOUNT"]


async def _mint() -> str:
    client = aioredis.Redis.from_url(CONFIG.redis.url, decode_responses=True)
    try:
        prefix = CONFIG.redis.key_prefix
        service = KeyService(KeyStore(client, prefix), CONFIG, audit=AuditLog(client, prefix))
        _, secret = await service.create_key(
            CLI, ACCOUNT, {"name": "fuzzer", "permissions": ["admin", "read"]}
        )
        return secret
    finally:
        await client.aclose()


@schemathesis.auth()
class AdminKey:
    def get(self, case, context) -> str:
        return asyncio.run(_mint())

    def set(self, case, data: str, context) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


# Refusals the document states in words, because they depend on the time or on the key's
# state, which no JSON Schema can say: (the field in details, the message).
STATED_IN_WORDS = {
    ("expires_at", "expires_at must be in the future"),
    ("credits", "credits.remaining is required: the key has no credits yet"),
}


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but the refusals the document states in words: an ``expires_at``
    not after now, and credits without ``remaining`` for a key that has none yet."""
    if response.status_code != 400:
        return True
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return True
    details = error.get("details")
    field = details.get("field") if isinstance(details, dict) else None
    return (field, error.get("message")) not in STATED_IN_WORDS

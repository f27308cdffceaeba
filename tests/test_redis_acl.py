"""The gateway runs as the Redis ACL user deploy/README.md gives, and every part of it works.

The user is made on the test Redis from the README's own ``ACL SETUSER`` line (its prefix
and password replaced), the gateway connects as it, and a request's whole life goes
through: key lookup, rate limit, plan quota, credits (Lua reading ``TIME``), usage,
alerts, the audit trail, events, webhooks, revocation over pub/sub.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from conftest import bearer, new_account, new_key, upstream_url

ROOT = Path(__file__).resolve().parent.parent


def documented_rules() -> list[str]:
    text = (ROOT / "deploy" / "README.md").read_text()
    match = re.search(r"^\s*ACL SETUSER keygate (.+)$", text, re.M)
    assert match, "deploy/README.md gives no ACL SETUSER line"
    return match.group(1).split()


def as_user(url: str, name: str, password: str) -> str:
    """``url`` (redis://, rediss:// or unix://) logging in as ``name`` instead of its own user."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(
        filter(None, [parts.query, urlencode({"username": name, "password": password})])
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@pytest.fixture
async def acl_user(redis_url, key_prefix):
    admin = aioredis.Redis.from_url(redis_url)
    name, password = f"keygate-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rules = [
        r.replace("gw:", key_prefix).replace(">CHANGE-ME", f">{password}")
        for r in documented_rules()
    ]
    await admin.execute_command("ACL", "SETUSER", name, *rules)
    await admin.execute_command("ACL", "LOG", "RESET")
    try:
        yield as_user(redis_url, name, password), name
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


async def test_the_documented_acl_user_runs_the_whole_gateway(
    acl_user, start_gateway, base_config, upstream, http, redis_client, key_prefix
):
    url, user = acl_user
    gw = await start_gateway(
        base_config(
            redis={"url": url},
            plans={"default": {"rate_limit": "1000/minute", "quota": "100/day"}},
            routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
            alerts={"denied_burst": {"window": "30s", "threshold": 2}},
            webhooks={"allow_private_targets": True, "retry_schedule": ["1s"]},
        )
    )
    service = gw.service  # as the ACL user
    account = await new_account(service)
    _, admin = await new_key(service, account, permissions=["admin"])
    key_id, secret = await new_key(
        service, account, credits={"remaining": 5}, rate_limit="50/minute"
    )
    for _ in range(3):
        async with http.get(gw.url + "/api/x", headers=bearer(secret)) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Credits-Remaining"]
    async with http.post(
        gw.url + "/api/x", headers={"Authorization": "Bearer sk_live_nope"}
    ) as resp:
        assert resp.status == 401
    assert await gw.runtime.usage.flush()
    async with http.get(gw.url + f"/v1/api-keys/{key_id}/usage", headers=bearer(admin)) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(
        gw.url + "/v1/webhook-endpoints", headers=bearer(admin),
        json={"url": f"{upstream_url(upstream)}/hook", "events": ["api_key.revoked"]},
    ) as resp:  # fmt: skip
        assert resp.status == 201, await resp.text()
    async with http.delete(gw.url + f"/v1/api-keys/{key_id}", headers=bearer(admin)) as resp:
        assert resp.status == 200, await resp.text()
    deadline = time.monotonic() + 1.0
    while True:  # the revocation came back over the invalidation channel
        async with http.get(gw.url + "/api/x", headers=bearer(secret)) as resp:
            if resp.status == 401:
                break
        assert time.monotonic() < deadline, "revocation not heard"
        await asyncio.sleep(0.02)
    for path in ("/v1/events", "/v1/audit", "/v1/api-keys", "/v1/webhook-endpoints"):
        async with http.get(gw.url + path, headers=bearer(admin)) as resp:
            assert resp.status == 200, (path, await resp.text())
    await gw.runtime.usage.flush()
    refused = await redis_client.execute_command("ACL", "LOG", "100")
    mine = [entry for entry in refused if user in str(entry)]
    assert mine == [], mine  # nothing the gateway did was refused by the ACL

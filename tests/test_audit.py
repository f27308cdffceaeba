"""The audit trail: every create, change, revocation and rotation, who made it and when.

Changes made through the management API are recorded with the calling key's id
(and the request id), changes made with the CLI with ``cli``; ``gateway audit``
reads them back, for one account or all, as text or JSON.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from conftest import bearer, new_account, new_key, run_cli, service_for, write_config

from gateway.config import parse_config
from gateway.keys.service import CLI
from gateway.timefmt import parse_time, utcnow


async def test_api_changes_are_recorded_with_the_calling_key_and_request(
    start_gateway, base_config, http
):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    admin_id, admin = await new_key(gw.service, account, permissions=["admin"])
    headers = bearer(admin)
    request_ids = {}
    started = utcnow() - timedelta(seconds=1)

    async with http.post(gw.url + "/v1/api-keys", json={"name": "svc"}, headers=headers) as resp:
        key_id = (await resp.json())["data"]["id"]
        request_ids["key.create"] = resp.headers["X-Request-Id"]
    async with http.patch(
        gw.url + f"/v1/api-keys/{key_id}",
        json={"name": "svc2", "permissions": ["read"]},
        headers=headers,
    ) as resp:
        assert resp.status == 200
        request_ids["key.update"] = resp.headers["X-Request-Id"]
    async with http.post(
        gw.url + f"/v1/api-keys/{key_id}/rotate", json={"grace_period": "1h"}, headers=headers
    ) as resp:
        new_id = (await resp.json())["data"]["id"]
        request_ids["key.rotate"] = resp.headers["X-Request-Id"]
    async with http.delete(gw.url + f"/v1/api-keys/{new_id}", headers=headers) as resp:
        assert resp.status == 200
        request_ids["key.revoke"] = resp.headers["X-Request-Id"]

    # Refused or no-op calls leave no trace.
    async with http.delete(gw.url + f"/v1/api-keys/{new_id}", headers=headers) as resp:
        assert resp.status == 200  # already revoked
    async with http.post(gw.url + "/v1/api-keys", json={"nope": 1}, headers=headers) as resp:
        assert resp.status == 400
    async with http.delete(gw.url + "/v1/api-keys/key_unknown", headers=headers) as resp:
        assert resp.status == 404

    events = await gw.service.audit.read(account_id=account)
    api_events = [e for e in events if e["actor"] != "cli"]
    assert [e["action"] for e in api_events] == [
        "key.revoke", "key.rotate", "key.update", "key.create",
    ]  # fmt: skip
    for event in api_events:
        assert event["actor"] == admin_id
        assert event["account_id"] == account
        assert event["request_id"] == request_ids[event["action"]]
        moment = parse_time(event["at"])
        assert moment is not None and started <= moment <= utcnow()
    revoke, rotate, update, create = api_events
    assert revoke["key_id"] == new_id
    assert rotate["key_id"] == key_id and rotate["new_key_id"] == new_id
    assert rotate["grace_period"] == "1h"
    assert update["key_id"] == key_id and update["fields"] == ["name", "permissions"]
    assert create["key_id"] == key_id and create["name"] == "svc" and create["mode"] == "live"
    # The keys made before the gateway (by the operator) are on the trail as cli.
    assert [e["action"] for e in events if e["actor"] == "cli"] == ["key.create", "account.create"]
    # The account's trail is also in the global one, under the same ids; no secret in either.
    everything = await gw.service.audit.read()
    assert [e["id"] for e in events] == [e["id"] for e in everything if e["account_id"] == account]
    assert admin not in json.dumps(everything)


async def test_gateway_audit_reads_the_trail_per_account_as_text_or_json(
    base_config, redis_client, tmp_path
):
    data = base_config()
    path = write_config(tmp_path / "gateway.yaml", data)
    service = service_for(redis_client, parse_config(data))

    def cli(*args: str):
        return asyncio.to_thread(run_cli, path, *args)

    # The CLI verbs are this same service called as CLI; one runs for real below.
    account = await new_account(service, name="Initech")
    other_account = await new_account(service, name="Hooli")
    record, _ = await service.create_key(CLI, account, {"name": "etl"})
    key_id = record.id
    new, _, _ = await service.rotate_key(CLI, key_id, "5m")
    revoked = await cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr

    as_json, text, only_other, unknown, bad_limit = await asyncio.gather(
        cli("audit", "--account", account, "--json"),
        cli("audit"),
        cli("audit", "--account", other_account, "--json"),
        cli("audit", "--account", "acct_nobody"),
        cli("audit", "--limit", "0"),
    )
    assert as_json.returncode == 0, as_json.stderr
    events = json.loads(as_json.stdout)["data"]
    assert [(e["action"], e["key_id"]) for e in events] == [
        ("key.revoke", key_id),
        ("key.rotate", key_id),
        ("key.create", key_id),
        ("account.create", None),
    ]
    assert all(e["actor"] == "cli" and e["account_id"] == account for e in events)
    assert events[1]["new_key_id"] == new.id and events[1]["grace_period"] == "5m"
    assert all(e["at"].endswith("Z") for e in events)

    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert len(lines) == 5  # both accounts' events, newest first
    assert "key.revoke" in lines[0] and key_id in lines[0] and "cli" in lines[0]
    assert other_account in lines[3] and "account.create" in lines[3]
    # The same event has the same id in the account's trail and in the global one.
    everything = json.loads((await cli("audit", "--json")).stdout)["data"]
    assert [e["id"] for e in events] == [e["id"] for e in everything if e["account_id"] == account]

    assert [e["action"] for e in json.loads(only_other.stdout)["data"]] == ["account.create"]
    assert unknown.returncode == 1 and "acct_nobody" in unknown.stderr
    assert bad_limit.returncode == 1


async def test_a_change_of_credits_names_the_field_on_the_trail(start_gateway, base_config, http):
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["admin"])
    key_id, _ = await new_key(gw.service, account)
    for change in ({"credits": {"remaining": 7}}, {"credits": None, "name": "n"}):
        async with http.patch(
            gw.url + f"/v1/api-keys/{key_id}", json=change, headers=bearer(admin)
        ) as resp:
            assert resp.status == 200, await resp.text()
    updates = [
        e for e in await gw.service.audit.read(account_id=account) if e["action"] == "key.update"
    ]
    assert [e["fields"] for e in updates] == [["credits", "name"], ["credits"]]

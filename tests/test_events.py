"""Events (SPEC §14): every key change, from the API and the CLI, listed by GET /v1/events
and `gateway events list`, scoped to the caller's account and mode."""

from __future__ import annotations

import json
import re

import pytest
from conftest import bearer, keys_being_created, new_account, new_key, run_cli, write_config

from gateway.keys.format import generate_secret, key_pattern
from gateway.keys.service import CLI


@pytest.fixture
async def gateway(start_gateway, base_config):
    return await start_gateway(base_config())


async def events(http, gw, secret: str, query: str = "") -> tuple[int, dict]:
    async with http.get(gw.url + "/v1/events" + query, headers=bearer(secret)) as resp:
        return resp.status, await resp.json()


async def test_every_key_change_through_the_api_is_an_event_newest_first(gateway, http):
    account = await new_account(gateway.service)
    _, admin = await new_key(gateway.service, account, permissions=["admin"])
    async with http.post(
        gateway.url + "/v1/api-keys", headers=bearer(admin), json={"name": "svc"}
    ) as resp:
        key = (await resp.json())["data"]
    async with http.patch(
        gateway.url + f"/v1/api-keys/{key['id']}", headers=bearer(admin), json={"name": "svc2"}
    ) as resp:
        assert resp.status == 200
    async with http.post(
        gateway.url + f"/v1/api-keys/{key['id']}/rotate", headers=bearer(admin), json={}
    ) as resp:
        new = (await resp.json())["data"]
    async with http.delete(gateway.url + f"/v1/api-keys/{new['id']}", headers=bearer(admin)):
        pass

    status, body = await events(http, gateway, admin)
    assert status == 200
    types = [e["type"] for e in body["data"]]
    assert types == [
        "api_key.revoked",
        "api_key.rotated",
        "api_key.updated",
        "api_key.created",
        "api_key.created",  # the admin key itself, made by the operator
    ]
    revoked, rotated, updated, created = body["data"][:4]
    for event in body["data"]:
        assert re.fullmatch(r"evt_[0-9A-Za-z]+", event["id"])
        assert event["account_id"] == account and event["mode"] == "live"
        assert event["created_at"].endswith("Z")
        assert "key" not in event["data"]  # the key as listed: never its secret
        assert not any("secret" in f or "hash" in f for f in event["data"])
    assert created["data"]["id"] == key["id"] and created["data"]["name"] == "svc"
    assert updated["data"]["name"] == "svc2"
    assert rotated["data"]["id"] == new["id"]
    assert rotated["data"]["previous_key"]["id"] == key["id"]
    assert revoked["data"]["id"] == new["id"] and revoked["data"]["revoked_at"]
    assert body["meta"]["request_id"] and body["has_more"] is False


async def test_webhook_keys_list_events_and_read_keys_cannot(gateway, http):
    account = await new_account(gateway.service)
    _, hook = await new_key(gateway.service, account, permissions=["webhook"])
    _, reader = await new_key(gateway.service, account, permissions=["read"])
    status, body = await events(http, gateway, hook)
    assert status == 200 and len(body["data"]) == 2
    status, body = await events(http, gateway, reader)
    assert status == 403 and body["error"]["code"] == "insufficient_permissions"
    async with http.get(gateway.url + "/v1/events") as resp:
        assert resp.status == 401


async def test_a_test_key_sees_test_events_only_and_a_live_key_both(gateway, http):
    account = await new_account(gateway.service)
    live_id, live = await new_key(gateway.service, account, permissions=["admin"])
    test_id, test = await new_key(gateway.service, account, permissions=["admin"], mode="test")
    _, body = await events(http, gateway, live)
    assert [e["data"]["id"] for e in body["data"]] == [test_id, live_id]
    _, body = await events(http, gateway, test)
    assert [e["data"]["id"] for e in body["data"]] == [test_id]
    assert body["data"][0]["mode"] == "test"


async def test_another_accounts_events_are_never_seen(gateway, http):
    mine = await new_account(gateway.service)
    theirs = await new_account(gateway.service, name="Other")
    _, admin = await new_key(gateway.service, mine, permissions=["admin"])
    their_id, _ = await new_key(gateway.service, theirs, permissions=["admin"])
    _, body = await events(http, gateway, admin)
    assert all(e["account_id"] == mine for e in body["data"])
    assert their_id not in json.dumps(body)


@pytest.mark.parametrize("query", ["", "&type=api_key.created"])
async def test_paging_while_events_are_raised_lists_each_event_once(gateway, http, query):
    account = await new_account(gateway.service)
    _, admin = await new_key(gateway.service, account, permissions=["admin"])
    for i in range(40):
        await new_key(gateway.service, account, name=f"old{i}")
    seen: list[str] = []
    async with keys_being_created(gateway.service, account):
        after = ""
        while True:
            status, body = await events(http, gateway, admin, f"?limit=3{query}{after}")
            assert status == 200
            seen += [e["id"] for e in body["data"]]
            if not body["has_more"]:
                break
            after = "&starting_after=" + seen[-1]
    assert len(seen) == len(set(seen)) and len(seen) >= 41


async def test_pages_follow_starting_after_and_bad_parameters_are_named(gateway, http):
    account = await new_account(gateway.service)
    _, admin = await new_key(gateway.service, account, permissions=["admin"])
    made = [(await new_key(gateway.service, account, name=f"k{i}"))[0] for i in range(5)]
    expected = [*reversed(made)]
    seen: list[str] = []
    after = ""
    while True:
        status, body = await events(http, gateway, admin, f"?limit=2{after}")
        assert status == 200
        seen += [e["data"]["id"] for e in body["data"]]
        if not body["has_more"]:
            break
        after = "&starting_after=" + body["meta"]["next_starting_after"]
    assert seen[:5] == expected and len(seen) == 6
    for query, field in (
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?starting_after=", "starting_after"),
        ("?starting_after=key_x", "starting_after"),
        ("?type=Bad Type", "type"),
        ("?colour=red", "colour"),
    ):
        status, body = await events(http, gateway, admin, query)
        assert status == 400, query
        assert body["error"]["code"] == "invalid_request"
        assert body["error"]["details"]["field"] == field
    status, body = await events(http, gateway, admin, "?starting_after=evt_nope")
    assert (status, body["error"]["code"]) == (404, "resource_not_found")  # as for keys


async def test_the_type_filter_takes_exact_types_and_the_alert_prefix(gateway, http):
    account = await new_account(gateway.service)
    key_id, admin = await new_key(gateway.service, account, permissions=["admin"])
    emit = gateway.service.events.emit
    await emit("alert.usage_spike", account_id=account, mode="live", data={"key_id": key_id})
    await emit("alert.denied_burst", account_id=account, mode="live", data={"key_id": key_id})
    other_id, _ = await new_key(gateway.service, account)
    await gateway.service.revoke_key(CLI, other_id)
    for query in ("?type=alert.", "?type=alert.*"):
        _, body = await events(http, gateway, admin, query)
        assert [e["type"] for e in body["data"]] == ["alert.denied_burst", "alert.usage_spike"]
        assert body["data"][0]["data"] == {"key_id": key_id}
    _, body = await events(http, gateway, admin, "?type=api_key.revoked")
    assert [e["type"] for e in body["data"]] == ["api_key.revoked"]


async def test_events_are_kept_thirty_days_in_the_store(gateway, redis_client):
    account = await new_account(gateway.service)
    key_id, _ = await new_key(gateway.service, account)
    page = await gateway.service.events.list(account, test_only=False, limit=1)
    assert page is not None
    (event,), _ = page
    ttl = await redis_client.ttl(gateway.config.redis.key_prefix + "evt:" + event.id)
    assert 30 * 86400 - 60 < ttl <= 30 * 86400


# -- the command line -------------------------------------------------------------------


async def test_cli_changes_are_events_and_the_cli_lists_them(tmp_path, base_config, gateway, http):
    cfg = write_config(tmp_path / "gateway.yaml", base_config())
    account = await new_account(gateway.service)
    _, admin = await new_key(gateway.service, account, permissions=["admin"])
    made = run_cli(cfg, "keys", "create", "--account", account, "--name", "cli", "--json")
    assert made.returncode == 0, made.stderr
    key_id = json.loads(made.stdout)["id"]
    revoked = run_cli(cfg, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr

    _, body = await events(http, gateway, admin, "?limit=2")
    assert [(e["type"], e["data"]["id"]) for e in body["data"]] == [
        ("api_key.revoked", key_id),
        ("api_key.created", key_id),
    ]
    listed = run_cli(cfg, "events", "list", "--account", account, "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)["data"]
    assert [e["id"] for e in data] == [e["id"] for e in body["data"]] + [data[2]["id"]]
    text = run_cli(cfg, "events", "list", "--account", account, "--type", "api_key.revoked")
    assert text.returncode == 0
    assert "api_key.revoked" in text.stdout and key_id in text.stdout
    assert "api_key.created" not in text.stdout
    unknown = run_cli(cfg, "events", "list", "--account", "acct_nope")
    assert unknown.returncode == 1 and "acct_nope" in unknown.stderr


def test_keys_pattern_prints_the_regex_that_finds_keys(tmp_path, base_config):
    cfg = write_config(tmp_path / "gateway.yaml", base_config(keys={"prefix": "acme"}))
    result = run_cli(cfg, "keys", "pattern")
    assert result.returncode == 0, result.stderr
    pattern = result.stdout.strip()
    assert pattern == key_pattern("acme")
    secret = generate_secret("acme", "test")
    assert re.search(pattern, f"token = '{secret}'\n").group(0) == secret
    assert not re.search(pattern, "acme_live_short")

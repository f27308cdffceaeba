"""The command line (SPEC §10) as a user runs it: real processes on the test Redis."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import bearer, new_account, new_key, run_cli, service_for, upstream_url, write_config

from gateway.config import parse_config
from gateway.keys.format import hash_secret

SECRET = re.compile(r"sk_(?:live|test)_[0-9A-Za-z]{38}")


@pytest.fixture
def config_data(base_config, upstream):
    return base_config(
        routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}]
    )


@pytest.fixture
def cfg(tmp_path, config_data):
    return write_config(tmp_path / "gateway.yaml", config_data)


def cli_json(cfg, *args: str) -> dict:
    result = run_cli(cfg, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one JSON document


@pytest.fixture
async def account(redis_client, config_data) -> str:
    """Made in-process (the CLI's own account verbs are tested below) to keep the suite quick."""
    return await new_account(service_for(redis_client, parse_config(config_data)))


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- accounts ---------------------------------------------------------------------------


class TestAccounts:
    def test_create_prints_the_id(self, cfg):
        result = run_cli(cfg, "accounts", "create", "--name", "Acme", "--email", "ops@acme.test")
        assert result.returncode == 0, result.stderr
        assert re.search(r"created account acct_[0-9A-Za-z]+ \(Acme, plan default\)", result.stdout)

    def test_create_json_with_plan(self, cfg):
        data = cli_json(cfg, "accounts", "create", "--name", "Big", "--plan", "pro")
        assert data["id"].startswith("acct_")
        assert data["plan"] == "pro" and data["name"] == "Big"

    def test_unknown_plan_is_refused(self, cfg):
        result = run_cli(cfg, "accounts", "create", "--name", "Acme", "--plan", "platinum")
        assert result.returncode == 1
        assert "platinum" in result.stderr and "plan" in result.stderr
        assert result.stdout == ""

    def test_bad_email_is_refused(self, cfg):
        result = run_cli(cfg, "accounts", "create", "--name", "Acme", "--email", "not-an-email")
        assert result.returncode == 1
        assert "email" in result.stderr


# -- keys create ------------------------------------------------------------------------


class TestKeysCreate:
    def test_secret_is_printed_once(self, cfg, account):
        result = run_cli(cfg, "keys", "create", "--account", account, "--name", "ci")
        assert result.returncode == 0, result.stderr
        secrets = SECRET.findall(result.stdout)
        assert len(secrets) == 1 and secrets[0].startswith("sk_live_")
        assert "only time" in result.stdout
        assert secrets[0] not in result.stderr

    def test_json_is_one_document_whose_key_field_is_the_secret(self, cfg, account):
        future = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = cli_json(
            cfg, "keys", "create", "--account", account, "--name", "web", "--mode", "test",
            "--permissions", "read,users:write", "--expires-at", future,
            "--allow-ip", "10.0.0.0/8", "--allow-ip", "127.0.0.1",
            "--allow-referrer", "*.example.com", "--allow-endpoint", "GET /api/**",
            "--rate-limit", "100/minute", "--metadata", '{"team":"web"}',
        )  # fmt: skip
        assert SECRET.fullmatch(data["key"]) and data["key"].startswith("sk_test_")
        assert data["id"].startswith("key_")
        assert data["mode"] == "test" and data["account_id"] == account
        assert data["permissions"] == ["read", "users:write"]
        assert data["expires_at"] == future
        assert data["allowed_ips"] == ["10.0.0.0/8", "127.0.0.1"]
        assert data["allowed_referrers"] == ["*.example.com"]
        assert data["allowed_endpoints"] == ["GET /api/**"]
        assert data["rate_limit"] == "100/minute"
        assert data["metadata"] == {"team": "web"}
        assert data["prefix"] == "sk_test_" and data["last4"] == data["key"][-4:]
        assert not [k for k in data if "hash" in k or "secret" in k]

    def test_expires_in(self, cfg, account):
        data = cli_json(
            cfg, "keys", "create", "--account", account, "--name", "t", "--expires-in", "90d"
        )
        expected = datetime.now(UTC) + timedelta(days=90)
        assert abs((parse_time(data["expires_at"]) - expected).total_seconds()) < 120

    async def test_created_key_works_through_the_gateway(
        self, cfg, account, config_data, start_gateway, http
    ):
        gw = await start_gateway(config_data)
        data = cli_json(
            cfg, "keys", "create", "--account", account, "--name", "ci", "--permissions", "read"
        )
        async with http.get(gw.url + "/api/x", headers=bearer(data["key"])) as resp:
            assert resp.status == 200
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
        assert seen["x-gateway-key-id"] == data["id"]

    @pytest.mark.parametrize(
        "args, reason",
        [
            (["--allow-ip", "10.0.0.0/33"], "allowed_ips"),
            (["--rate-limit", "lots"], "rate_limit"),
            (["--expires-at", "2001-01-01T00:00:00Z"], "expires_at"),
            (["--expires-in", "1d", "--expires-at", "2099-01-01T00:00:00Z"], "not both"),
        ],
    )
    def test_bad_values_are_refused_with_the_reason(self, cfg, account, args, reason):
        result = run_cli(cfg, "keys", "create", "--account", account, "--name", "x", *args)
        assert result.returncode == 1
        assert reason in result.stderr
        assert not SECRET.search(result.stdout + result.stderr)

    def test_unknown_account_is_refused(self, cfg):
        result = run_cli(cfg, "keys", "create", "--account", "acct_nope", "--name", "x")
        assert result.returncode == 1
        assert "acct_nope" in result.stderr


# -- list, show, revoke, rotate ---------------------------------------------------------


@pytest.fixture
async def created(redis_client, config_data, account) -> dict:
    service = service_for(redis_client, parse_config(config_data))
    key_id, secret = await new_key(service, account, name="ci", permissions=["read"])
    return {"id": key_id, "key": secret}


class TestKeysListAndShow:
    def test_list_never_shows_the_secret(self, cfg, account, created):
        text = run_cli(cfg, "keys", "list", "--account", account)
        assert text.returncode == 0, text.stderr
        assert created["id"] in text.stdout
        assert f"sk_live_…{created['key'][-4:]}" in text.stdout
        data = cli_json(cfg, "keys", "list", "--account", account)
        assert [k["id"] for k in data["data"]] == [created["id"]]
        for output in (text.stdout, json.dumps(data)):
            assert created["key"] not in output
            assert hash_secret(created["key"]) not in output
        assert not [f for f in data["data"][0] if "hash" in f or "secret" in f]

    def test_show_never_shows_the_secret(self, cfg, created):
        text = run_cli(cfg, "keys", "show", created["id"])
        assert text.returncode == 0, text.stderr
        assert created["id"] in text.stdout and "active" in text.stdout
        data = cli_json(cfg, "keys", "show", created["id"])
        assert data["id"] == created["id"] and data["name"] == "ci"
        assert data["permissions"] == ["read"] and data["revoked_at"] is None
        assert "key" not in data
        for output in (text.stdout, json.dumps(data)):
            assert created["key"] not in output
            assert hash_secret(created["key"]) not in output

    def test_show_unknown_key(self, cfg):
        result = run_cli(cfg, "keys", "show", "key_doesnotexist")
        assert result.returncode == 1
        assert "key_doesnotexist" in result.stderr


class TestKeysRevoke:
    async def test_revoked_key_is_refused_by_the_gateway(
        self, cfg, created, config_data, start_gateway, http
    ):
        gw = await start_gateway(config_data)
        async with http.get(gw.url + "/api/x", headers=bearer(created["key"])) as resp:
            assert resp.status == 200  # and now cached
        result = run_cli(cfg, "keys", "revoke", created["id"])
        assert result.returncode == 0, result.stderr
        assert f"revoked {created['id']}" in result.stdout
        await asyncio.sleep(0.3)
        async with http.get(gw.url + "/api/x", headers=bearer(created["key"])) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "revoked_api_key"
        data = cli_json(cfg, "keys", "show", created["id"])
        assert data["revoked_at"] is not None

    def test_revoke_unknown_key(self, cfg):
        assert run_cli(cfg, "keys", "revoke", "key_doesnotexist").returncode == 1


class TestKeysRotate:
    async def test_rotate_json(self, cfg, created, config_data, start_gateway, http):
        data = cli_json(cfg, "keys", "rotate", created["id"], "--grace", "1h")
        new_secret = data["key"]
        assert SECRET.fullmatch(new_secret) and new_secret != created["key"]
        assert data["id"] != created["id"]
        assert data["name"] == "ci" and data["permissions"] == ["read"]
        assert data["previous_key"]["id"] == created["id"]
        grace_end = parse_time(data["previous_key"]["expires_at"])
        assert abs((grace_end - (datetime.now(UTC) + timedelta(hours=1))).total_seconds()) < 120
        gw = await start_gateway(config_data)
        for secret in (new_secret, created["key"]):  # the old one still works during the grace
            async with http.get(gw.url + "/api/x", headers=bearer(secret)) as resp:
                assert resp.status == 200

    def test_rotate_prints_the_new_secret_once(self, cfg, created):
        result = run_cli(cfg, "keys", "rotate", created["id"])
        assert result.returncode == 0, result.stderr
        secrets = SECRET.findall(result.stdout)
        assert len(secrets) == 1 and secrets[0] != created["key"]
        assert created["key"] not in result.stdout
        shown = run_cli(cfg, "keys", "show", created["id"])
        assert secrets[0] not in shown.stdout

    def test_rotate_with_bad_grace_is_refused(self, cfg, created):
        result = run_cli(cfg, "keys", "rotate", created["id"], "--grace", "a while")
        assert result.returncode == 1


async def poll_status(http, url: str, headers: dict, want, within: float = 2.0):
    """The first answer for which ``want(resp)`` holds, within ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with http.get(url, headers=headers) as resp:
            await resp.read()
            if want(resp):
                return resp
        assert asyncio.get_running_loop().time() < deadline, f"not seen within {within}s"
        await asyncio.sleep(0.05)


class TestKeysUpdate:
    async def test_update_changes_the_key_as_patch_does_and_the_gateway_follows(
        self, cfg, created, config_data, start_gateway, http
    ):
        gw = await start_gateway(config_data)
        url, headers = gw.url + "/api/x", bearer(created["key"])
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200  # cached from now on
        data = cli_json(
            cfg, "keys", "update", created["id"], "--name", "ci renamed",
            "--permissions", "read,billing:write", "--allow-ip", "10.0.0.0/8",
            "--allow-ip", "192.0.2.1", "--rate-limit", "5/second", "--metadata", '{"team": "ops"}',
        )  # fmt: skip
        assert data["id"] == created["id"] and "key" not in data
        assert data["name"] == "ci renamed"
        assert data["permissions"] == ["read", "billing:write"]
        assert data["allowed_ips"] == ["10.0.0.0/8", "192.0.2.1"]
        assert (data["rate_limit"], data["metadata"]) == ("5/second", {"team": "ops"})
        assert cli_json(cfg, "keys", "show", created["id"])["name"] == "ci renamed"
        refused = await poll_status(http, url, headers, lambda r: r.status == 403)
        assert refused.status == 403  # 127.0.0.1 is no longer allowed, on the running gateway
        data = cli_json(cfg, "keys", "update", created["id"], "--clear", "allowed_ips",
                        "--clear", "rate_limit", "--clear", "metadata")  # fmt: skip
        assert (data["allowed_ips"], data["rate_limit"], data["metadata"]) == ([], None, {})
        await poll_status(http, url, headers, lambda r: r.status == 200)
        # The change is in the audit trail, as the API's would be.
        audit = cli_json(cfg, "audit", "--limit", "5")["data"]
        assert any(e["action"] == "key.update" and e["key_id"] == created["id"] for e in audit)

    def test_plain_output_names_what_changed_and_never_the_secret(self, cfg, created):
        result = run_cli(cfg, "keys", "update", created["id"], "--expires-in", "30d")
        assert result.returncode == 0, result.stderr
        assert f"updated {created['id']}: expires_at" in result.stdout
        assert created["key"] not in result.stdout and not SECRET.search(result.stdout)

    @pytest.mark.parametrize(
        "args, reason",
        [
            (["--allow-ip", "10.0.0.0/33"], "allowed_ips"),
            (["--rate-limit", "lots"], "rate_limit"),
            (["--permissions", "Admin"], "permissions"),
            (["--metadata", '{"a": {"b": 1}}'], "metadata"),
            (["--expires-at", "2001-01-01T00:00:00Z"], "expires_at"),
            (["--clear", "allowed_ips", "--allow-ip", "10.0.0.1"], "--clear allowed_ips"),
            ([], "nothing to change"),
        ],
    )
    def test_bad_values_are_refused_with_the_reason(self, cfg, created, args, reason):
        result = run_cli(cfg, "keys", "update", created["id"], *args)
        assert result.returncode == 1, result.stderr
        assert reason in result.stderr
        assert cli_json(cfg, "keys", "show", created["id"])["name"] == "ci"  # unchanged

    def test_unknown_or_revoked_key_is_refused(self, cfg, created):
        result = run_cli(cfg, "keys", "update", "key_doesnotexist", "--name", "x")
        assert result.returncode == 1 and "key_doesnotexist" in result.stderr
        assert run_cli(cfg, "keys", "revoke", created["id"]).returncode == 0
        result = run_cli(cfg, "keys", "update", created["id"], "--name", "x")
        assert result.returncode == 1 and "revoked" in result.stderr

    def test_clear_takes_only_fields_that_can_be_cleared(self, cfg, created):
        result = run_cli(cfg, "keys", "update", created["id"], "--clear", "name")
        assert result.returncode == 2 and "usage:" in result.stderr


class TestAccountsUpdate:
    async def test_a_new_plan_reaches_the_running_gateway(
        self, cfg, account, created, config_data, start_gateway, http
    ):
        gw = await start_gateway(config_data)
        url, headers = gw.url + "/api/x", bearer(created["key"])
        async with http.get(url, headers=headers) as resp:
            assert resp.headers["X-RateLimit-Limit"] == "100000"  # the default plan
        data = cli_json(cfg, "accounts", "update", account, "--plan", "pro")
        assert (data["id"], data["plan"]) == (account, "pro")
        resp = await poll_status(
            http, url, headers, lambda r: r.headers.get("X-RateLimit-Limit") == "1000000"
        )
        assert resp.status == 200
        listed = {a["id"]: a for a in cli_json(cfg, "accounts", "list")["data"]}
        assert listed[account]["plan"] == "pro"

    def test_name_and_email(self, cfg, account):
        result = run_cli(cfg, "accounts", "update", account, "--name", "Acme Ltd",
                         "--email", "billing@acme.test")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"updated account {account} (Acme Ltd, plan default)" in result.stdout

    @pytest.mark.parametrize(
        "args, reason",
        [
            (["--plan", "platinum"], "platinum"),
            (["--email", "nope"], "email"),
            ([], "nothing to change"),
        ],
    )
    def test_refused_input_changes_nothing(self, cfg, account, args, reason):
        result = run_cli(cfg, "accounts", "update", account, *args)
        assert result.returncode == 1
        assert reason in result.stderr
        listed = {a["id"]: a for a in cli_json(cfg, "accounts", "list")["data"]}
        assert listed[account]["plan"] == "default"

    def test_unknown_account(self, cfg):
        result = run_cli(cfg, "accounts", "update", "acct_nope", "--plan", "pro")
        assert result.returncode == 1 and "acct_nope" in result.stderr


# -- usage errors -----------------------------------------------------------------------


class TestUsageErrors:
    @pytest.mark.parametrize(
        "args",
        [
            ["bogus"],
            ["keys"],
            ["keys", "create", "--name", "x"],  # no --account
            ["keys", "create", "--account", "acct_x", "--name", "x", "--mode", "prod"],
        ],
    )
    def test_usage_errors_exit_2(self, cfg, args):
        result = run_cli(cfg, *args)
        assert result.returncode == 2
        assert "usage:" in result.stderr


async def test_names_never_reach_the_terminal_as_control_characters(
    cfg, redis_client, config_data, account
):
    """A name is refused with control or direction characters; one stored before that rule
    (or written straight to the store) is printed escaped, never interpreted."""
    service = service_for(redis_client, parse_config(config_data))
    forged = "evil\x1b[31mRED\x1b[0m\nkey_fake  sk_live_…AAAA  live  active"
    result = run_cli(cfg, "keys", "create", "--account", account, "--name", forged)
    assert result.returncode == 1 and "control or direction" in result.stderr
    result = run_cli(cfg, "accounts", "create", "--name", "a\u202eb", "--email", "a@b.test")
    assert result.returncode == 1 and "control or direction" in result.stderr
    key_id, _ = await new_key(service, account, name="plain")
    record = await service.store.get_key(key_id)
    await service.store.save_key(record.evolve(name=forged))  # as an older record may hold
    for args in (("keys", "list", "--account", account), ("keys", "show", key_id)):
        result = run_cli(cfg, *args)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "key_fake" in result.stdout
        assert "evil\\x1b[31mRED\\x1b[0m\\nkey_fake" in result.stdout
        assert not any(line.startswith("key_fake") for line in result.stdout.splitlines())


async def test_a_listing_cut_short_by_its_reader_ends_quietly(
    cfg, redis_client, config_data, account
):
    service = service_for(redis_client, parse_config(config_data))
    for n in range(30):
        await new_key(service, account, name=f"k{n}")
    listing = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "keys", "list", "--account", account],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.readline()
    listing.stdout.close()  # as `| head -1` does
    _, err = listing.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()

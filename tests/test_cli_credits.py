"""Credits and quota on the command line (SPEC §10, §16): real ``gateway`` processes on the
test Redis, checked against what the store holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import CLI, new_account, run_cli, service_for, write_config

from gateway.config import parse_config
from gateway.config.units import Quota

MONTHLY = {"amount": 1000, "interval": "month"}


@pytest.fixture
def config_data(base_config):
    return base_config(
        plans={
            "default": {"rate_limit": "100000/minute", "quota": "2000/month"},
            "free": {"rate_limit": "100000/minute"},
        }
    )


@pytest.fixture
def cfg(tmp_path, config_data):
    return write_config(tmp_path / "gateway.yaml", config_data)


@pytest.fixture
def service(redis_client, config_data):
    return service_for(redis_client, parse_config(config_data))


@pytest.fixture
async def account(service) -> str:
    return await new_account(service)


def cli_json(cfg, *args: str) -> dict:
    result = run_cli(cfg, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(cfg, *args: str) -> str:
    result = run_cli(cfg, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr


async def test_create_with_credits_and_refill_sets_the_balance(cfg, account, service):
    made = cli_json(
        cfg, "keys", "create", "--account", account, "--name", "metered",
        "--credits", "750", "--refill", "1000/month",
    )  # fmt: skip
    assert made["credits"] == {"remaining": 750, "refill": MONTHLY}
    balance = await service.balances.credits(account, "live", made["id"])
    assert balance.remaining == 750 and str(balance.refill) == "1000/month"

    plain = run_cli(
        cfg, "keys", "create", "--account", account, "--name", "daily",
        "--credits", "5", "--refill", "20/day",
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "credits: 5 left, refilled to 20 each day" in plain.stdout


async def test_show_and_list_show_the_live_balance(cfg, account, service):
    made = cli_json(
        cfg, "keys", "create", "--account", account, "--name", "metered",
        "--credits", "100", "--refill", "1000/month",
    )  # fmt: skip
    unmetered = cli_json(cfg, "keys", "create", "--account", account, "--name", "plain")
    await service.balances.spend(account, "live", None, [(made["id"], 1)] * 9)

    shown = cli_json(cfg, "keys", "show", made["id"])
    assert shown["credits"] == {"remaining": 91, "refill": MONTHLY}
    text = run_cli(cfg, "keys", "show", made["id"])
    assert text.returncode == 0, text.stderr
    assert "credits            91 left, refilled to 1000 each month" in text.stdout

    listed = cli_json(cfg, "keys", "list", "--account", account)
    by_id = {k["id"]: k["credits"] for k in listed["data"]}
    assert by_id == {made["id"]: {"remaining": 91, "refill": MONTHLY}, unmetered["id"]: None}
    table = run_cli(cfg, "keys", "list", "--account", account)
    assert table.returncode == 0, table.stderr
    assert "CREDITS" in table.stdout.splitlines()[0]
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert " 91 (1000/month) " in rows[made["id"]]
    assert " - " in rows[unmetered["id"]]


async def test_update_sets_keeps_and_removes_credits(cfg, account, service):
    made = cli_json(
        cfg, "keys", "create", "--account", account, "--name", "metered", "--credits", "300"
    )
    await service.balances.spend(account, "live", None, [(made["id"], 1)] * 20)

    # --refill alone keeps the balance
    data = cli_json(cfg, "keys", "update", made["id"], "--refill", "1000/month")
    assert data["credits"] == {"remaining": 280, "refill": MONTHLY}
    # --credits alone is a top-up that keeps the refill
    data = cli_json(cfg, "keys", "update", made["id"], "--credits", "5000")
    assert data["credits"] == {"remaining": 5000, "refill": MONTHLY}
    # --no-refill keeps the balance
    data = cli_json(cfg, "keys", "update", made["id"], "--no-refill")
    assert data["credits"] == {"remaining": 5000, "refill": None}
    balance = await service.balances.credits(account, "live", made["id"])
    assert balance.remaining == 5000 and balance.refill is None
    # --no-credits: no longer metered, and its balance is gone from the store
    data = cli_json(cfg, "keys", "update", made["id"], "--no-credits")
    assert data["credits"] is None
    assert await service.balances.credits(account, "live", made["id"]) is None
    assert (await service.store.get_key(made["id"])).credits is None


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--credits", "-5"), "--credits must be a whole number"),
        (("--credits", "lots"), "--credits must be a whole number"),
        (("--credits", "10", "--refill", "10/week"), "--refill must be N/day or N/month"),
        (("--credits", "10", "--refill", "0/day"), "credits.refill.amount"),
        (("--refill", "10/day"), "--refill needs --credits"),
    ],
)
async def test_create_refuses_bad_credits_with_the_reason(cfg, account, service, args, reason):
    stderr = refused(cfg, "keys", "create", "--account", account, "--name", "bad", *args)
    assert reason in stderr
    records, _ = await service.list_keys(CLI, account)
    assert records == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--no-credits", "--credits", "5"), "--no-credits and --credits at once"),
        (("--refill", "5/day", "--no-refill"), "--refill and --no-refill at once"),
        (("--refill", "five/day"), "--refill must be N/day or N/month"),
        (("--refill", "10/day"), "the key has no credits yet"),
        (("--credits", "1.5"), "--credits must be a whole number"),
    ],
)
async def test_update_refuses_bad_credits_with_the_reason(cfg, account, service, args, reason):
    made = cli_json(cfg, "keys", "create", "--account", account, "--name", "plain")
    stderr = refused(cfg, "keys", "update", made["id"], *args)
    assert reason in stderr
    assert (await service.store.get_key(made["id"])).credits is None


async def test_usage_prints_days_quota_and_credits(cfg, account, service):
    made = cli_json(
        cfg, "keys", "create", "--account", account, "--name", "metered",
        "--credits", "40", "--refill", "1000/month",
    )  # fmt: skip
    spent = await service.balances.spend(
        account, "live", Quota(2000, "month"), [(made["id"], 1)] * 3 + [(None, 1)] * 4
    )
    assert all(s.allowed for s in spent)
    now = datetime.now(UTC)
    first = (now.replace(day=28) + timedelta(days=4)).replace(day=1)
    resets_at = f"{first.date().isoformat()}T00:00:00Z"

    data = cli_json(cfg, "keys", "usage", made["id"], "--days", "3")
    assert data["key_id"] == made["id"]
    assert [d["date"] for d in data["days"]] == [
        (now.date() - timedelta(days=n)).isoformat() for n in range(3)
    ]
    assert data["quota"] == {"limit": 2000, "used": 7, "period": "month", "resets_at": resets_at}
    assert data["credits"] == {"remaining": 37, "refill": MONTHLY}

    text = run_cli(cfg, "keys", "usage", made["id"])
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert (
        f"quota:   7 of 2000 used this month (the account's live keys together), resets {resets_at}"
        in out
    )
    assert "credits: 37 left, refilled to 1000 each month" in out
    assert len([line for line in out.splitlines() if line[:4].isdigit()]) == 30


async def test_usage_without_quota_or_credits_and_of_an_unknown_key(cfg, service):
    account = await new_account(service, plan="free")
    made = cli_json(cfg, "keys", "create", "--account", account, "--name", "plain")
    data = cli_json(cfg, "keys", "usage", made["id"])
    assert data["quota"] is None and data["credits"] is None
    text = run_cli(cfg, "keys", "usage", made["id"])
    assert "quota:   none" in text.stdout and "credits: not metered" in text.stdout
    assert "key_nothere" in refused(cfg, "keys", "usage", "key_nothere")
    assert "--days must be from 1 to 90" in refused(cfg, "keys", "usage", made["id"], "--days", "0")

"""Webhook endpoints and deliveries (SPEC §14), to a real receiver process that verifies
each delivery with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import bearer, gateways, new_account, new_key, run_cli, write_config
from realparts import ServiceProcess

from gateway.events.webhooks import WebhookStore, new_endpoint

HERE = Path(__file__).resolve().parent
PRIVATE_OK = {"webhooks": {"allow_private_targets": True, "retry_schedule": ["1s", "1s"]}}


class Receiver:
    """tests/webhook_receiver.py as a real process on a loopback port."""

    def __init__(self) -> None:
        self.process = ServiceProcess(
            "webhook-receiver",
            lambda port: [sys.executable, str(HERE / "webhook_receiver.py"), str(port)],
            ready_path="/_state",
        )

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def configure(self, http: aiohttp.ClientSession, **settings: Any) -> None:
        async with http.post(f"http://127.0.0.1:{self.port}/_configure", json=settings) as resp:
            assert resp.status == 200

    async def received(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with http.get(f"http://127.0.0.1:{self.port}/_state") as resp:
            return (await resp.json())["received"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    made.process.start()
    try:
        yield made
    finally:
        made.process.close()


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s (last: {result!r})")
        await asyncio.sleep(0.05)


async def create_endpoint(http, gw, key: str, **body: Any) -> tuple[int, dict]:
    async with http.post(gw.url + "/v1/webhook-endpoints", headers=bearer(key), json=body) as resp:
        return resp.status, await resp.json()


async def deliveries(http, gw, secret: str, endpoint_id: str) -> list[dict]:
    async with http.get(
        gw.url + f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=bearer(secret)
    ) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["data"]


@pytest.fixture
async def gateway(start_gateway, base_config):
    return await start_gateway(base_config(**PRIVATE_OK))


@pytest.fixture
async def owner(gateway) -> tuple[str, str]:
    account = await new_account(gateway.service)
    _, admin = await new_key(gateway.service, account, permissions=["admin"])
    return account, admin


# -- managing endpoints ------------------------------------------------------------------


async def test_an_endpoint_is_created_with_its_secret_shown_once(gateway, http, owner, receiver):
    account, admin = owner
    status, body = await create_endpoint(
        http, gateway, admin, url=receiver.url, events=["alert.*"], description="ops"
    )
    assert status == 201, body
    data = body["data"]
    assert data["id"].startswith("we_") and data["secret"].startswith("whsec_")
    assert data["events"] == ["alert.*"] and data["description"] == "ops"
    assert data["mode"] == "live" and data["account_id"] == account
    assert data["disabled"] is False
    url = gateway.url + "/v1/webhook-endpoints"
    async with http.get(url + "/" + data["id"], headers=bearer(admin)) as resp:
        shown = await resp.text()
    async with http.get(url, headers=bearer(admin)) as resp:
        listed = await resp.json()
    assert data["secret"] not in shown and "secret" not in shown
    assert [e["id"] for e in listed["data"]] == [data["id"]]
    assert "secret" not in listed["data"][0]
    async with http.patch(
        url + "/" + data["id"], headers=bearer(admin), json={"disabled": True, "events": ["*"]}
    ) as resp:
        changed = (await resp.json())["data"]
    assert changed["disabled"] is True and changed["events"] == ["*"]
    async with http.delete(url + "/" + data["id"], headers=bearer(admin)) as resp:
        assert resp.status == 200
    async with http.get(url + "/" + data["id"], headers=bearer(admin)) as resp:
        assert resp.status == 404


async def test_webhook_keys_manage_endpoints_and_others_cannot_see_them(gateway, http, receiver):
    account = await new_account(gateway.service)
    _, hook_key = await new_key(gateway.service, account, permissions=["webhook"])
    _, reader = await new_key(gateway.service, account, permissions=["read"])
    other = await new_account(gateway.service, name="Other")
    _, stranger = await new_key(gateway.service, other, permissions=["admin"])
    status, body = await create_endpoint(http, gateway, hook_key, url=receiver.url)
    assert status == 201 and body["data"]["events"] == ["*"]
    endpoint_id = body["data"]["id"]
    status, body = await create_endpoint(http, gateway, reader, url=receiver.url)
    assert status == 403 and body["error"]["code"] == "insufficient_permissions"
    url = gateway.url + f"/v1/webhook-endpoints/{endpoint_id}"
    async with http.get(url, headers=bearer(stranger)) as resp:
        assert resp.status == 404
    async with http.post(url + "/test", headers=bearer(stranger)) as resp:
        assert resp.status == 404


async def test_bad_endpoint_input_is_named(gateway, http, owner, receiver):
    _, admin = owner
    for body, field in (
        ({"events": ["*"]}, "url"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": receiver.url, "events": []}, "events"),
        ({"url": receiver.url, "events": ["Not A Type"]}, "events"),
        ({"url": receiver.url, "description": 7}, "description"),
        ({"url": receiver.url, "secret": "whsec_mine"}, "secret"),
    ):
        status, answer = await create_endpoint(http, gateway, admin, **body)
        assert status == 400, body
        assert answer["error"]["code"] == "invalid_request"
        assert answer["error"]["details"]["field"] == field


async def test_private_and_plain_http_targets_are_refused_by_default(start_gateway, base_config,
                                                                     http):  # fmt: skip
    gw = await start_gateway(base_config())
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["webhook"])
    for url, reason in (
        ("http://example.com/hook", "https://"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]:8443/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://10.0.0.7/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://169.254.10.10/hook", "link-local"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://[64:ff9b::7f00:1]/hook", "loopback"),  # NAT64 of 127.0.0.1
        ("https://[2002:7f00:1::]/hook", "loopback"),  # 6to4 of 127.0.0.1
        ("https://[2002:a9fe:a9fe::]/hook", "metadata"),  # 6to4 of 169.254.169.254
        ("https://[64:ff9b::a00:7]/hook", "private"),  # NAT64 of 10.0.0.7
    ):
        status, body = await create_endpoint(http, gw, admin, url=url)
        assert status == 400, url
        assert body["error"]["code"] == "invalid_request"
        assert body["error"]["details"]["field"] == "url"
        assert reason in body["error"]["message"], (url, body["error"]["message"])


# -- delivery ----------------------------------------------------------------------------


async def test_an_event_reaches_the_receiver_signed_within_five_seconds(gateway, http, owner,
                                                                        receiver):  # fmt: skip
    _, admin = owner
    _, body = await create_endpoint(http, gateway, admin, url=receiver.url)
    endpoint = body["data"]
    await receiver.configure(http, secret=endpoint["secret"])
    started = time.monotonic()
    async with http.post(
        gateway.url + "/v1/api-keys", headers=bearer(admin), json={"name": "new"}
    ) as resp:
        key = (await resp.json())["data"]
    got = await until(lambda: receiver.received(http), timeout=5)
    assert time.monotonic() - started < 5
    assert len(got) == 1
    (delivery,) = got
    assert delivery["verified"] is True, delivery
    assert delivery["type"] == "api_key.created"
    assert delivery["event"]["data"]["id"] == key["id"]
    assert key["key"] not in str(delivery)  # the secret is never in an event
    assert delivery["webhook_id"] == delivery["event"]["id"]
    assert abs(int(delivery["timestamp"]) - time.time()) < 10
    listed = await until(lambda: _settled(http, gateway, admin, endpoint["id"]), timeout=5)
    assert listed[0]["event_id"] == delivery["event"]["id"]
    assert listed[0]["status"] == "delivered"
    assert listed[0]["attempts"] == 1 and listed[0]["last_status_code"] == 204
    assert listed[0]["next_attempt_at"] is None


async def _settled(http, gw, secret, endpoint_id):
    found = await deliveries(http, gw, secret, endpoint_id)
    return found if found and all(d["status"] != "pending" for d in found) else None


async def test_an_endpoint_gets_only_the_events_it_asked_for(gateway, http, owner, receiver):
    account, admin = owner
    _, body = await create_endpoint(http, gateway, admin, url=receiver.url, events=["alert.*"])
    endpoint = body["data"]
    await receiver.configure(http, secret=endpoint["secret"])
    await new_key(gateway.service, account)  # api_key.created: not asked for
    await gateway.service.events.emit(
        "alert.denied_burst", account_id=account, mode="test", data={"key_id": "key_x"}
    )  # another mode: not for this endpoint
    alert = await gateway.service.events.emit(
        "alert.usage_spike", account_id=account, mode="live", data={"key_id": "key_x"}
    )
    # deliveries are queued by emit itself: what is not queued now is never sent
    queued = await deliveries(http, gateway, admin, endpoint["id"])
    assert [(d["event_type"], d["event_id"]) for d in queued] == [("alert.usage_spike", alert.id)]
    await until(lambda: _settled(http, gateway, admin, endpoint["id"]))
    got = await receiver.received(http)
    assert [(g["type"], g["webhook_id"]) for g in got] == [("alert.usage_spike", alert.id)]


async def test_a_test_event_is_sent_whatever_the_endpoint_asked_for(gateway, http, owner,
                                                                     receiver):  # fmt: skip
    _, admin = owner
    _, body = await create_endpoint(
        http, gateway, admin, url=receiver.url, events=["alert.new_network"]
    )
    endpoint = body["data"]
    await receiver.configure(http, secret=endpoint["secret"])
    async with http.post(
        gateway.url + f"/v1/webhook-endpoints/{endpoint['id']}/test", headers=bearer(admin)
    ) as resp:
        assert resp.status == 202
        sent = (await resp.json())["data"]
    got = await until(lambda: receiver.received(http))
    assert got[0]["verified"] and got[0]["type"] == "webhook.test"
    assert got[0]["webhook_id"] == sent["event_id"]


async def test_a_failing_receiver_is_retried_with_the_same_id_until_it_recovers(
    gateway, http, owner, receiver
):
    account, admin = owner
    _, body = await create_endpoint(http, gateway, admin, url=receiver.url)
    endpoint = body["data"]
    await receiver.configure(http, secret=endpoint["secret"], fail=2)
    event = await gateway.service.events.emit(
        "alert.usage_spike", account_id=account, mode="live", data={"key_id": "key_x"}
    )
    listed = await until(lambda: _settled(http, gateway, admin, endpoint["id"]), timeout=10)
    got = await receiver.received(http)
    assert [g["answered"] for g in got] == [500, 500, 204]
    assert {g["webhook_id"] for g in got} == {event.id}
    assert all(g["verified"] for g in got)
    assert listed[0]["status"] == "delivered" and listed[0]["attempts"] == 3


async def test_after_the_last_retry_a_delivery_is_failed(gateway, http, owner, receiver):
    account, admin = owner
    _, body = await create_endpoint(http, gateway, admin, url=receiver.url)
    endpoint = body["data"]
    await receiver.configure(http, secret=endpoint["secret"], fail=100)
    await gateway.service.events.emit(
        "alert.usage_spike", account_id=account, mode="live", data={"key_id": "key_x"}
    )
    pending = await until(lambda: deliveries(http, gateway, admin, endpoint["id"]))
    assert pending[0]["status"] == "pending"
    listed = await until(lambda: _settled(http, gateway, admin, endpoint["id"]), timeout=10)
    assert listed[0]["status"] == "failed"
    assert listed[0]["attempts"] == 3  # the first and the two of the retry schedule
    assert listed[0]["last_status_code"] == 500 and listed[0]["next_attempt_at"] is None
    assert len(await receiver.received(http)) == 3


async def test_a_redirect_is_not_followed(gateway, http, owner, receiver):
    account, admin = owner
    _, body = await create_endpoint(http, gateway, admin, url=receiver.url)
    endpoint = body["data"]
    await receiver.configure(
        http, secret=endpoint["secret"], redirect=f"http://127.0.0.1:{receiver.port}/elsewhere"
    )
    await gateway.service.events.emit(
        "alert.usage_spike", account_id=account, mode="live", data={"key_id": "key_x"}
    )
    listed = await until(lambda: _attempted(http, gateway, admin, endpoint["id"]))
    assert listed[0]["last_status_code"] == 307 and listed[0]["status"] == "pending"
    assert "redirect" in listed[0]["last_error"]
    assert [g["path"] for g in await receiver.received(http)] == ["/hook"]


async def _attempted(http, gw, secret, endpoint_id):
    found = await deliveries(http, gw, secret, endpoint_id)
    return found if found and found[0]["attempts"] >= 1 else None


async def test_a_name_that_resolves_to_loopback_at_delivery_is_refused(
    start_gateway, base_config, http, receiver
):
    """An endpoint whose name resolved elsewhere when it was made (written to the store here,
    as a DNS change would leave it) is checked again after resolution and never reached."""
    gw = await start_gateway(base_config(webhooks={"retry_schedule": ["1s"]}))
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["admin"])
    store: WebhookStore = gw.service.events.fan_out
    endpoint = new_endpoint(
        account_id=account, mode="live", url=f"https://localhost:{receiver.port}/hook",
        events=("*",), description="",
    )  # fmt: skip
    await store.add_endpoint(endpoint)
    await gw.service.events.emit(
        "alert.usage_spike", account_id=account, mode="live", data={"key_id": "key_x"}
    )
    listed = await until(lambda: _settled(http, gw, admin, endpoint.id), timeout=10)
    assert listed[0]["status"] == "failed" and listed[0]["last_status_code"] is None
    assert "loopback" in listed[0]["last_error"]
    assert await receiver.received(http) == []


# -- durability --------------------------------------------------------------------------


async def test_a_restart_mid_schedule_loses_and_doubles_nothing(base_config, redis_client, http,
                                                                receiver):  # fmt: skip
    config = base_config(webhooks={"allow_private_targets": True, "retry_schedule": ["2s", "2s"]})
    async with gateways() as start:
        first = await start(config)
        account = await new_account(first.service)
        _, admin = await new_key(first.service, account, permissions=["admin"])
        _, body = await create_endpoint(http, first, admin, url=receiver.url)
        endpoint = body["data"]
        await receiver.configure(http, secret=endpoint["secret"], fail=1)
        event = await first.service.events.emit(
            "alert.usage_spike", account_id=account, mode="live", data={"key_id": "key_x"}
        )
        await until(lambda: _attempted(http, first, admin, endpoint["id"]))
        await first.app.close()  # the retry is due in 2 s: no gateway is running then
    async with gateways() as start:
        second = await start(config)
        listed = await until(lambda: _settled(http, second, admin, endpoint["id"]), timeout=10)
    got = await receiver.received(http)
    assert [(g["webhook_id"], g["answered"]) for g in got] == [(event.id, 500), (event.id, 204)]
    assert listed[0]["status"] == "delivered" and listed[0]["attempts"] == 2


async def test_two_replicas_deliver_each_event_exactly_once(base_config, redis_client, http,
                                                            receiver):  # fmt: skip
    config = base_config(webhooks={"allow_private_targets": True, "poll_interval": "50ms"})
    async with gateways() as start:
        one = await start(config)
        two = await start(config)
        account = await new_account(one.service)
        _, admin = await new_key(one.service, account, permissions=["admin"])
        _, body = await create_endpoint(http, one, admin, url=receiver.url)
        endpoint_id = body["data"]["id"]
        await receiver.configure(http, secret=body["data"]["secret"])
        emitted = []
        for i in range(20):
            replica = (one, two)[i % 2]
            emitted.append(
                await replica.service.events.emit(
                    "alert.usage_spike", account_id=account, mode="live", data={"n": i}
                )
            )

        async def all_settled() -> list | None:
            async with http.get(
                one.url + f"/v1/webhook-endpoints/{endpoint_id}/deliveries?limit=100",
                headers=bearer(admin),
            ) as resp:
                found = (await resp.json())["data"]
            done = len(found) == len(emitted) and all(d["status"] != "pending" for d in found)
            return found if done else None

        settled = await until(all_settled, timeout=10)
        assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in settled)
        got = await receiver.received(http)
        assert sorted(g["webhook_id"] for g in got) == sorted(e.id for e in emitted)
        assert all(g["verified"] and g["answered"] == 204 for g in got)
        attempts = one.runtime.webhooks.attempts + two.runtime.webhooks.attempts
        assert attempts == len(emitted)


async def test_a_change_made_with_the_cli_is_delivered_by_the_running_gateway(
    gateway, http, owner, receiver, tmp_path, base_config
):
    account, admin = owner
    _, body = await create_endpoint(http, gateway, admin, url=receiver.url)
    await receiver.configure(http, secret=body["data"]["secret"])
    cfg = write_config(tmp_path / "gateway.yaml", base_config(**PRIVATE_OK))
    made = await asyncio.to_thread(
        run_cli, cfg, "keys", "create", "--account", account, "--name", "from-cli", "--json"
    )
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    got = await until(lambda: receiver.received(http), timeout=5)
    assert time.monotonic() - started < 5
    assert got[0]["verified"] and got[0]["type"] == "api_key.created"
    assert got[0]["event"]["data"]["name"] == "from-cli"

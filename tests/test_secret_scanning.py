"""Leaked keys reported by GitHub secret scanning (SPEC §15): the test signs reports with
its own P-256 key and serves its own public-keys document from a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import bearer, gateways, new_account, new_key, upstream_url
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.keys.format import generate_secret
from gateway.keys.service import CLI

IDENTIFIER = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"


class GitHub:
    """GitHub's side: a signing key and the public-keys document, served for real."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.identifier = IDENTIFIER
        self.fetches = 0
        self.server: TestServer | None = None

    def document(self) -> dict[str, Any]:
        pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "public_keys": [
                {"key_identifier": self.identifier, "key": pem.decode(), "is_current": True}
            ]
        }

    async def start(self) -> str:
        async def serve(request: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response(self.document())

        app = web.Application()
        app.router.add_get("/meta/public_keys/secret_scanning", serve)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}/meta/public_keys/secret_scanning"

    def sign(self, body: bytes) -> dict[str, str]:
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": self.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }


@pytest.fixture
async def github() -> AsyncIterator[GitHub]:
    side = GitHub()
    yield side
    if side.server is not None:
        await side.server.close()


@pytest.fixture
async def leak_config(base_config, github, upstream):
    url = await github.start()

    def make(action: str = "revoke") -> dict:
        return base_config(
            leak_detection={"action": action, "github": {"public_keys_url": url}},
            routes=[
                {
                    "name": "api",
                    "match": "/api",
                    "upstream": upstream_url(upstream),
                    "strip_prefix": True,
                }
            ],  # fmt: skip
        )

    return make


def report(*tokens: str) -> bytes:
    return json.dumps(
        [
            {
                "token": t,
                "type": "keygate_api_key",
                "url": f"https://github.com/o/r/blob/x#L{i}",
                "source": "content",
            }
            for i, t in enumerate(tokens)
        ]  # fmt: skip
    ).encode()


async def post_report(http, gw, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.post(gw.url + "/v1/secret-scanning/github", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def status_of(http, gw, secret: str) -> tuple[int, str | None]:
    async with http.get(gw.url + "/api/x", headers=bearer(secret)) as resp:
        body = await resp.json()
        return resp.status, (body.get("error") or {}).get("code")


async def test_a_reported_key_is_revoked_on_every_replica_and_answered_githubs_way(
    leak_config, github, http, redis_client
):
    async with gateways() as start:
        one = await start(leak_config())
        two = await start(leak_config())
        account = await new_account(one.service)
        key_id, secret = await new_key(one.service, account)
        _, admin = await new_key(one.service, account, permissions=["admin"])
        assert await status_of(http, two, secret) == (200, None)  # cached on the other replica
        unknown = generate_secret("sk", "live")  # a good checksum, but no key has it
        body = report(secret, unknown, "not a key at all")
        status, answer = await post_report(http, one, body, github.sign(body))
        assert status == 200
        assert answer == [
            {"token_hash": hashlib.sha256(t.encode()).hexdigest(), "token_type": "keygate_api_key",
             "label": label}
            for t, label in ((secret, "true_positive"), (unknown, "false_positive"),
                             ("not a key at all", "false_positive"))
        ]  # fmt: skip
        deadline = time.monotonic() + 1.0
        while await status_of(http, two, secret) != (401, "revoked_api_key"):
            assert time.monotonic() < deadline, "the other replica still lets the key in"
            await asyncio.sleep(0.02)
        assert await status_of(http, one, secret) == (401, "revoked_api_key")

        async with http.get(one.url + "/v1/events", headers=bearer(admin)) as resp:
            events = (await resp.json())["data"]
        leaked = [e for e in events if e["type"] == "api_key.leaked"]
        assert len(leaked) == 1
        assert leaked[0]["data"]["key"]["id"] == key_id
        assert leaked[0]["data"]["url"] == "https://github.com/o/r/blob/x#L0"
        assert leaked[0]["data"]["source"] == "content"
        assert secret not in json.dumps(events)
        async with http.get(one.url + "/v1/audit", headers=bearer(admin)) as resp:
            audit = (await resp.json())["data"]
        assert any(
            a["action"] == "key.leaked" and a["key_id"] == key_id and a["actor"] ==
            "github_secret_scanning" for a in audit
        )  # fmt: skip
        assert github.fetches == 1


async def test_a_leaked_keys_open_stream_on_another_replica_is_cut(leak_config, github, http,
                                                                   redis_client):  # fmt: skip
    async with gateways() as start:
        here, there = await start(leak_config()), await start(leak_config())
        account = await new_account(here.service)
        _, secret = await new_key(here.service, account)
        stream = await http.get(
            there.url + "/api/stream?count=1000&interval=0.05", headers=bearer(secret)
        )
        assert stream.status == 200
        await stream.content.readany()  # flowing
        body = report(secret)
        started = time.monotonic()
        status, _ = await post_report(http, here, body, github.sign(body))
        assert status == 200
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            while time.monotonic() - started < 5:
                if not await stream.content.readany():
                    break
            raise aiohttp.ClientPayloadError("the stream ended on its own")
        assert time.monotonic() - started < 1.5
        stream.close()


async def test_a_missing_or_bad_signature_acts_on_nothing(leak_config, github, http,
                                                          start_gateway):  # fmt: skip
    gw = await start_gateway(leak_config())
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    body = report(secret)
    signed = github.sign(body)
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = {
        **signed,
        "Github-Public-Key-Signature": base64.b64encode(
            stranger.sign(body, ec.ECDSA(hashes.SHA256()))
        ).decode(),
    }
    for headers, sent in (
        ({"Content-Type": "application/json"}, body),
        ({**signed, "Github-Public-Key-Signature": "not base64!"}, body),
        (forged, body),
        (signed, body + b" "),  # the body changed after signing
        ({**signed, "Github-Public-Key-Identifier": "unknown"}, body),
    ):
        status, answer = await post_report(http, gw, sent, headers)
        assert status == 401, headers
        assert answer["error"]["code"] == "invalid_signature"
    assert await status_of(http, gw, secret) == (200, None)
    async with http.get(gw.url + "/v1/secret-scanning/github") as resp:
        assert resp.status == 405


async def test_an_unknown_identifier_refetches_the_keys_at_most_once_a_minute(
    leak_config, github, http, start_gateway
):
    gw = await start_gateway(leak_config())
    (handler,) = [h for p, _, h in gw.runtime.snapshot.local_routes if p.endswith("/github")]
    now = [1000.0]
    handler.public_keys.clock = lambda: now[0]  # the minute passes when the test says so
    body = report("nothing")
    status, _ = await post_report(http, gw, body, github.sign(body))
    assert status == 200 and github.fetches == 1
    github.private = ec.generate_private_key(ec.SECP256R1())  # GitHub rotates its key
    github.identifier = "rotated"
    for _ in range(3):
        status, _ = await post_report(http, gw, body, github.sign(body))
        assert status == 401
    now[0] += 59
    status, _ = await post_report(http, gw, body, github.sign(body))
    assert status == 401 and github.fetches == 1  # not again within the minute
    now[0] += 2
    status, _ = await post_report(http, gw, body, github.sign(body))
    assert status == 200 and github.fetches == 2  # a minute on, the new key is fetched
    status, _ = await post_report(http, gw, body, github.sign(body))
    assert status == 200 and github.fetches == 2  # and then cached


async def test_notify_leaves_live_keys_working_and_revokes_test_keys(leak_config, github, http,
                                                                     start_gateway):  # fmt: skip
    gw = await start_gateway(leak_config(action="notify"))
    account = await new_account(gw.service)
    _, live = await new_key(gw.service, account)
    _, test = await new_key(gw.service, account, mode="test")
    _, admin = await new_key(gw.service, account, permissions=["admin"])
    body = report(live, test)
    status, answer = await post_report(http, gw, body, github.sign(body))
    assert status == 200 and [a["label"] for a in answer] == ["true_positive"] * 2
    assert await status_of(http, gw, live) == (200, None)
    assert await status_of(http, gw, test) == (401, "revoked_api_key")
    async with http.get(gw.url + "/v1/events?type=api_key.leaked", headers=bearer(admin)) as r:
        events = (await r.json())["data"]
    assert sorted(e["data"]["action"] for e in events) == ["notified", "revoked"]


@pytest.mark.parametrize("mode", ["live", "test"])
async def test_a_leaked_last_admin_key_is_revoked_all_the_same(
    leak_config, github, http, start_gateway, mode
):
    """The API keeps an account's last admin key from being revoked; a leak report does not
    stop there (the operator's CLI lets a locked-out account back in)."""
    gw = await start_gateway(leak_config())
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["admin"], mode=mode)
    _, other = await new_key(gw.service, account, mode=mode)
    body = report(admin, other)
    status, answer = await post_report(http, gw, body, github.sign(body))
    assert status == 200 and [a["label"] for a in answer] == ["true_positive"] * 2
    assert await status_of(http, gw, admin) == (401, "revoked_api_key")
    assert await status_of(http, gw, other) == (401, "revoked_api_key")


async def test_a_revoked_key_is_still_a_true_positive(leak_config, github, http, start_gateway):
    gw = await start_gateway(leak_config())
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account)
    await gw.service.revoke_key(CLI, key_id)
    body = report(secret)
    status, answer = await post_report(http, gw, body, github.sign(body))
    assert status == 200 and answer[0]["label"] == "true_positive"


async def test_a_signed_body_that_is_not_a_report_is_refused(leak_config, github, http,
                                                             start_gateway):  # fmt: skip
    gw = await start_gateway(leak_config())
    for body in (b'{"token": "x"}', b"[1, 2]", b"not json"):
        status, answer = await post_report(http, gw, body, github.sign(body))
        assert status == 400 and answer["error"]["code"] == "invalid_request"

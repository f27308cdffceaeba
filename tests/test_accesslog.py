"""The access log: one JSON line per request, and never a secret in any log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import bearer, new_account, new_key, service_for, upstream_url
from http_raw import raw_request

from gateway.config import parse_config
from gateway.keys.format import checksum
from gateway.keys.service import CLI
from gateway.telemetry.accesslog import AccessLog


def routes(upstream):
    return [
        {"name": "api", "match": "/api", "upstream": upstream_url(upstream),
         "permissions": {"GET": "read", "*": "write"}},
        {"name": "public", "match": "/public", "upstream": upstream_url(upstream), "auth": "none"},
        {"name": "bare", "match": "/bare", "upstream": upstream_url(upstream), "auth": "none",
         "strip_prefix": True},
    ]  # fmt: skip


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(base_config(routes=routes(upstream)))


def access_lines(gw, capsys) -> list[dict]:
    gw.runtime.access_log.flush()
    out = capsys.readouterr().out
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "http.request.method" in record:
                lines.append(record)
    return lines


FIELDS = [
    "timestamp", "http.request.method", "url.path", "http.response.status_code",
    "client.address", "user_agent.original", "duration_ms", "upstream_duration_ms",
    "http.request.body.size", "http.response.body.size", "trace_id", "span_id",
    "request_id", "route", "key_id", "account_id", "code",
]  # fmt: skip


class TestAccessLogLines:
    async def test_one_line_per_request_with_its_fields(self, gw, http, capsys):
        account = await new_account(gw.service)
        key_id, secret = await new_key(gw.service, account, permissions=["read"])
        calls = [
            ("GET", "/api/users/7?page=2", bearer(secret), "r-ok", 200, key_id),
            ("POST", "/api/users", bearer(secret), "r-denied", 403, key_id),
            ("GET", "/api/users", {}, "r-missing", 401, None),
            ("GET", "/nowhere", {}, "r-404", 404, None),
            ("GET", "/public/x", {}, "r-public", 200, None),
            # refused by the management API and by forward auth: the key is named too
            ("GET", "/v1/api-keys", bearer(secret), "r-manage", 403, key_id),
            ("GET", "/v1/auth/check", {**bearer(secret), "X-Forwarded-Method": "POST",
                                       "X-Forwarded-Uri": "/api/users"}, "r-check", 403, key_id),
        ]  # fmt: skip
        for method, path, headers, rid, _, _ in calls:
            async with http.request(
                method, gw.url + path, headers={**headers, "X-Request-Id": rid}
            ) as resp:
                await resp.read()
        lines = access_lines(gw, capsys)
        by_id = {}
        for line in lines:
            by_id.setdefault(line["request_id"], []).append(line)
        before = datetime.now(UTC) - timedelta(seconds=1)
        for method, path, _, rid, status, logged_key in calls:
            [line] = by_id[rid]  # exactly one line per request
            assert list(line) == FIELDS
            assert line["http.request.method"] == method
            assert line["url.path"] == path.split("?")[0]  # the query string is never logged
            assert line["http.response.status_code"] == status
            assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
            assert line["key_id"] == logged_key
            assert line["account_id"] == (account if logged_key else None)
            assert line["client.address"] == "127.0.0.1"
            assert (
                line["user_agent.original"].startswith("Python/")
                and "aiohttp" in line["user_agent.original"]
            )
            assert line["timestamp"].endswith("Z")
            stamp = datetime.fromisoformat(line["timestamp"])  # RFC 3339, UTC
            assert stamp.utcoffset() == timedelta(0)
            assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
            assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
            assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
            assert line["http.request.body.size"] == 0
        assert by_id["r-ok"][0]["route"] == "api"
        assert by_id["r-denied"][0]["code"] == "insufficient_permissions"
        # what the upstream answered, and how long it took; none for a refusal
        ok = by_id["r-ok"][0]
        assert ok["upstream_duration_ms"] > 0 and ok["upstream_duration_ms"] <= ok["duration_ms"]
        assert ok["http.response.body.size"] > 0
        refused = by_id["r-denied"][0]
        assert refused["upstream_duration_ms"] is None
        assert refused["http.response.body.size"] > 0  # the error envelope

    async def test_logged_path_is_the_normalised_one(self, gw, capsys):
        await raw_request(gw.url, "GET", "/public/a/../b//c", [("X-Request-Id", "r-norm")])
        [line] = [x for x in access_lines(gw, capsys) if x["request_id"] == "r-norm"]
        assert line["url.path"] == "/public/b/c"

    async def test_access_log_can_be_turned_off(
        self, start_gateway, base_config, upstream, http, capsys
    ):
        gw = await start_gateway(base_config(server={"access_log": False}, routes=routes(upstream)))
        async with http.get(gw.url + "/public/x") as resp:
            assert resp.status == 200
        assert access_lines(gw, capsys) == []

    async def test_client_address_is_the_one_the_ip_restriction_judged(
        self, start_gateway, base_config, upstream, http, capsys
    ):
        """Behind a trusted proxy the logged client is the real one from X-Forwarded-For,
        the address allowed_ips was checked against, not the proxy (the TCP peer)."""
        gw = await start_gateway(
            base_config(server={"trusted_proxies": ["127.0.0.1"]}, routes=routes(upstream))
        )
        account = await new_account(gw.service)
        _, secret = await new_key(
            gw.service, account, permissions=["read"], allowed_ips=["203.0.113.0/24"]
        )
        calls = [
            ("x-allowed", "198.51.100.1, 203.0.113.9", 200),
            ("x-refused", "203.0.113.9, 198.51.100.7", 403),
        ]
        for rid, forwarded, status in calls:
            async with http.get(
                gw.url + "/api/x",
                headers={**bearer(secret), "X-Request-Id": rid, "X-Forwarded-For": forwarded},
            ) as resp:
                assert resp.status == status
        async with http.get(  # no key: the address is still the client's
            gw.url + "/public/x",
            headers={"X-Request-Id": "x-public", "X-Forwarded-For": "192.0.2.4"},
        ) as resp:
            assert resp.status == 200
        by_id = {x["request_id"]: x for x in access_lines(gw, capsys)}
        assert by_id["x-allowed"]["client.address"] == "203.0.113.9"
        assert by_id["x-refused"]["client.address"] == "198.51.100.7"
        assert by_id["x-refused"]["code"] == "ip_not_allowed"
        assert by_id["x-public"]["client.address"] == "192.0.2.4"

    async def test_an_untrusted_peer_cannot_choose_its_logged_address(self, gw, http, capsys):
        async with http.get(
            gw.url + "/public/x",
            headers={"X-Request-Id": "x-spoof", "X-Forwarded-For": "192.0.2.4"},
        ) as resp:
            assert resp.status == 200
        [line] = [x for x in access_lines(gw, capsys) if x["request_id"] == "x-spoof"]
        assert line["client.address"] == "127.0.0.1"

    async def test_body_sizes_as_sent_and_as_relayed(self, gw, http, capsys):
        async def chunks():
            for _ in range(3):
                yield b"y" * 1000

        async with http.post(
            gw.url + "/bare/upload", data=b"x" * 1234, headers={"X-Request-Id": "b-length"}
        ) as resp:
            answer = await resp.read()
            assert json.loads(answer)["received_bytes"] == 1234
        async with http.post(
            gw.url + "/bare/upload", data=chunks(), headers={"X-Request-Id": "b-chunked"}
        ) as resp:
            assert (await resp.json())["received_bytes"] == 3000
        async with http.get(
            gw.url + "/bare/stream?count=3&interval=0.01", headers={"X-Request-Id": "b-stream"}
        ) as resp:
            streamed = await resp.read()
            assert resp.headers.get("Transfer-Encoding") == "chunked"
        async with http.head(gw.url + "/bare/echo", headers={"X-Request-Id": "b-head"}) as resp:
            assert resp.status == 200
        by_id = {x["request_id"]: x for x in access_lines(gw, capsys)}
        assert by_id["b-length"]["http.request.body.size"] == 1234
        assert by_id["b-length"]["http.response.body.size"] == len(answer)
        assert by_id["b-chunked"]["http.request.body.size"] == 3000
        assert by_id["b-stream"]["http.response.body.size"] == len(streamed) > 0
        assert by_id["b-head"]["http.response.body.size"] == 0

    async def test_user_agent_is_logged_escaped_and_masked(self, gw, capsys):
        account = await new_account(gw.service)
        _, secret = await new_key(gw.service, account)
        agent = f'curl/8.0 "quoted" \\ {secret}'
        await raw_request(
            gw.url, "GET", "/public/x", [("User-Agent", agent), ("X-Request-Id", "ua")]
        )
        [line] = [x for x in access_lines(gw, capsys) if x["request_id"] == "ua"]
        assert line["user_agent.original"] == 'curl/8.0 "quoted" \\ sk_***'
        assert secret not in json.dumps(line)

    async def test_trace_ids_are_the_requests_trace(self, gw, http, capsys):
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        async with http.get(
            gw.url + "/public/echo",
            headers={"traceparent": f"00-{trace_id}-{parent}-01", "X-Request-Id": "t-cont"},
        ) as resp:
            sent = dict((await resp.json())["headers"])
        async with http.get(gw.url + "/public/echo", headers={"X-Request-Id": "t-new"}) as resp:
            started = dict((await resp.json())["headers"])
        by_id = {x["request_id"]: x for x in access_lines(gw, capsys)}
        cont, new = by_id["t-cont"], by_id["t-new"]
        assert cont["trace_id"] == trace_id and cont["span_id"] != parent
        assert sent["traceparent"] == f"00-{trace_id}-{cont['span_id']}-01"
        assert started["traceparent"] == f"00-{new['trace_id']}-{new['span_id']}-01"
        assert new["trace_id"] != trace_id


# -- no secret in any log ---------------------------------------------------------------


def gateway_records(caplog) -> str:
    """Every log record but the test servers' own aiohttp access lines (``gateway serve``
    turns that logger off; the process test below reads a real gateway's whole output)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")


def bad_checksum(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


class TestNoSecretInLogs:
    async def test_no_secret_in_the_access_log_or_any_log_record(self, gw, capsys, caplog):
        caplog.set_level(logging.DEBUG)
        account = await new_account(gw.service)
        _, valid = await new_key(gw.service, account, permissions=["read"])
        revoked_id, revoked = await new_key(gw.service, account, permissions=["read"])
        await gw.service.revoke_key(CLI, revoked_id)
        head = "sk_test_" + "Q" * 32
        unknown = head + checksum(head)
        secrets = [valid, revoked, unknown, bad_checksum(valid)]
        attempts = [
            ("/api/x", [("Authorization", f"Bearer {valid}")]),
            ("/api/x", [("Authorization", f"Bearer {revoked}")]),
            ("/api/x", [("Authorization", f"Bearer {unknown}")]),
            ("/api/x", [("Authorization", f"Bearer {bad_checksum(valid)}")]),
            ("/api/x", [("Authorization", f"Bearer {valid} trailing")]),
            ("/api/x", [("Authorization", f"Basic {valid}")]),
            ("/api/x", [("Authorization", valid)]),
            (
                "/api/x",
                [("Authorization", f"Bearer {valid}"), ("Authorization", f"Bearer {revoked}")],
            ),
            (f"/api/x?api_key={valid}", []),
            (f"/api/x?key={revoked}&x=1", []),
            (f"/api/{valid}", []),
            (f"/api/keys/{revoked}/x", [("Authorization", f"Bearer {valid}")]),
            ("/api/" + valid.replace("_", "%5F"), []),
            (f"/public/{unknown}", [("Authorization", f"Bearer {valid}")]),
            (f"/nowhere/{valid}", []),
            (f"/api/{valid}/%2e%2e/%2e%2e/%2e%2e", []),  # refused path
            ("/api/x", [("X-Request-Id", valid)]),
            ("/api/x", [("X-Api-Key", valid), ("Referer", f"https://app.example.com/?k={valid}")]),
        ]
        for target, headers in attempts:
            resp = await raw_request(gw.url, "GET", target, headers)
            assert resp.status < 500
        lines = access_lines(gw, capsys)
        assert len(lines) == len(attempts)
        everything = "\n".join(json.dumps(line) for line in lines)
        everything += "\n" + gateway_records(caplog)
        everything += "\n" + capsys.readouterr().err
        for secret in secrets:
            assert secret not in everything
            assert secret[8:40] not in everything  # not even the random part

    async def test_no_secret_when_an_upstream_breaks_off_a_response(
        self, start_gateway, base_config, http, capsys, caplog
    ):
        """A response cut by its upstream is logged as such, and a key in its path is not."""
        caplog.set_level(logging.DEBUG)

        async def broken(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(1024 * 1024)})
            await response.prepare(request)
            await response.write(b"x" * 100_000)
            await asyncio.sleep(0.05)
            request.transport.abort()
            return response

        app = web.Application()
        app.router.add_get("/{tail:.*}", broken)
        upstream = TestServer(app, host="127.0.0.1")
        await upstream.start_server()
        try:
            gw = await start_gateway(
                base_config(
                    routes=[{"name": "b", "match": "/b", "upstream": upstream_url(upstream)}]
                )
            )
            account = await new_account(gw.service)
            _, secret = await new_key(gw.service, account)
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.get(
                    gw.url + f"/b/{secret}", headers={**bearer(secret), "X-Request-Id": "r-cut"}
                ) as resp:
                    assert resp.status == 200  # the headers had gone out
                    await resp.read()
            await asyncio.sleep(0.1)
        finally:
            await upstream.close()
        lines = access_lines(gw, capsys)
        [line] = [x for x in lines if x["request_id"] == "r-cut"]
        assert (line["http.response.status_code"], line["code"]) == (200, "upstream_unavailable")
        assert 100_000 <= line["http.response.body.size"] < 1024 * 1024  # what was relayed
        records = gateway_records(caplog)
        assert "unexpected error" not in records
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], records
        assert "broke off" in records
        everything = "\n".join(json.dumps(x) for x in lines) + "\n" + records
        assert secret not in everything and secret[8:40] not in everything


class TestProcessLog:
    async def test_gateway_process_writes_json_lines_without_secrets(
        self, gateway_process, base_config, upstream, redis_client
    ):
        data = base_config(routes=routes(upstream))
        service = service_for(redis_client, parse_config(data))
        account = await new_account(service)
        key_id, secret = await new_key(service, account, permissions=["read"])
        proc = gateway_process(data).start()
        async with aiohttp.ClientSession() as session:
            for target, headers, rid in [
                ("/api/x", bearer(secret), "p-ok"),
                (f"/api/x?api_key={secret}", {}, "p-query"),
                ("/api/x", {"Authorization": f"Bearer {bad_checksum(secret)}"}, "p-bad"),
            ]:
                async with session.get(
                    proc.url + target, headers={**headers, "X-Request-Id": rid}
                ) as resp:
                    await resp.read()
        assert proc.stop() == 0
        log = proc.log()
        assert secret not in log and secret[8:40] not in log
        records = {}
        for line in log.splitlines():
            if line.startswith("{") and '"http.request.method"' in line:
                record = json.loads(line)
                records[record["request_id"]] = record
        assert records["p-ok"]["key_id"] == key_id
        assert records["p-ok"]["http.response.status_code"] == 200
        assert records["p-query"]["http.response.status_code"] == 401
        assert records["p-query"]["url.path"] == "/api/x"
        assert records["p-bad"]["key_id"] is None

    async def test_application_logs_as_json_with_the_request_id(
        self, gateway_process, base_config, redis_client
    ):
        """``logging.format: json``: every line the process writes is a JSON object; one
        written while a request was handled carries that request's id."""

        async def broken(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(1024 * 1024)})
            await response.prepare(request)
            await response.write(b"x" * 10_000)
            await asyncio.sleep(0.05)
            request.transport.abort()
            return response

        app = web.Application()
        app.router.add_get("/{tail:.*}", broken)
        upstream = TestServer(app, host="127.0.0.1")
        await upstream.start_server()
        try:
            data = base_config(
                logging={"format": "json"},
                routes=[{"name": "b", "match": "/b", "upstream": upstream_url(upstream),
                         "auth": "none"}],
            )  # fmt: skip
            proc = gateway_process(data).start()
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with session.get(
                        proc.url + "/b/x", headers={"X-Request-Id": "json-cut"}
                    ) as resp:
                        await resp.read()
            assert proc.stop() == 0
        finally:
            await upstream.close()
        records = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
        app_lines = [r for r in records if "level" in r]
        assert app_lines, proc.log()
        for record in app_lines:
            assert set(record) <= {"timestamp", "level", "logger", "message", "request_id",
                                   "worker", "exception"}  # fmt: skip
            assert datetime.fromisoformat(record["timestamp"]).utcoffset() == timedelta(0)
        [cut] = [r for r in app_lines if "broke off" in r["message"]]
        assert (cut["level"], cut["logger"], cut["request_id"]) == (
            "WARNING",
            "gateway.handler",
            "json-cut",
        )
        assert all("request_id" not in r for r in app_lines if r is not cut)  # outside requests
        [access] = [r for r in records if r.get("request_id") == "json-cut" and "level" not in r]
        assert access["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1767225599.9994, "2025-12-31T23:59:59.999Z"),
        (1767225600.0, "2026-01-01T00:00:00.000Z"),
        (1767225600.0004, "2026-01-01T00:00:00.000Z"),
        (1767225600.0015, "2026-01-01T00:00:00.001Z"),
        (1767225601.25, "2026-01-01T00:00:01.250Z"),
    ],
)
def test_timestamps_are_utc_to_the_millisecond_in_order(now, expected):
    log = AccessLog("sk")
    assert log.timestamp(now) == expected
    # the same answer when it comes from what the previous call made
    assert log.timestamp(now) == expected
    later = AccessLog("sk")
    later.timestamp(now - 1.0)
    assert later.timestamp(now) == expected

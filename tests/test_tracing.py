"""Tracing (SPEC §17): W3C trace context to the upstream, and spans to a real OTLP receiver.

The receiver is ``tests/otlp_receiver.py`` in its own process: an aiohttp
server that decodes the OTLP/HTTP protobuf export with ``opentelemetry-proto``
and answers what it recorded. The gateway's exporter is the SDK's own, over
HTTP, batching every 50 ms here (``OTEL_BSP_SCHEDULE_DELAY``).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import (
    ROOT,
    bearer,
    free_port,
    new_account,
    new_key,
    run_cli,
    upstream_url,
    write_config,
)

RECEIVER = ROOT / "tests" / "otlp_receiver.py"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


class Receiver:
    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def spans(self) -> list[dict]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + "/spans") as resp,
        ):
            return await resp.json()

    async def trace(self, trace_id: str, count: int, timeout: float = 15.0) -> list[dict]:
        """The spans of ``trace_id`` once at least ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in await self.spans() if s["trace_id"] == trace_id]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} spans of {trace_id}: {found}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def receiver():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        found = Receiver(port)
        deadline = time.monotonic() + 15
        while True:
            try:
                await found.spans()
                break
            except aiohttp.ClientConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"OTLP receiver did not start: {proc.stderr.read().decode()}"
                    ) from None
                await asyncio.sleep(0.05)
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def routes(upstream) -> list[dict]:
    return [
        {"name": "api", "match": "/api", "upstream": upstream_url(upstream),
         "permissions": {"GET": "read", "*": "write"}},
        {"name": "public", "match": "/public", "upstream": upstream_url(upstream), "auth": "none"},
        {"name": "down", "match": "/down", "upstream": f"http://127.0.0.1:{free_port()}",
         "auth": "none"},
    ]  # fmt: skip


@pytest.fixture
async def traced(start_gateway, base_config, upstream, receiver, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")

    async def start(**tracing):
        return await start_gateway(
            base_config(
                routes=routes(upstream),
                tracing={"otlp_endpoint": receiver.url, **tracing},
            )
        )

    return start


async def echo(http, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Status, and the headers the upstream received (lower-case names)."""
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        if resp.status != 200:
            return resp.status, {}
        return resp.status, {k.lower(): v for k, v in json.loads(body)["headers"]}


def by_name(spans: list[dict]) -> dict[str, dict]:
    out = {}
    for span in spans:
        assert span["name"] not in out, spans
        out[span["name"]] = span
    return out


class TestSpans:
    async def test_a_clients_trace_is_continued_with_children_for_store_and_upstream(
        self, traced, http, receiver, upstream, capsys
    ):
        gw = await traced()
        account = await new_account(gw.service)
        key_id, secret = await new_key(gw.service, account, permissions=["read"])
        status, seen = await echo(
            http,
            gw.url + "/api/items?page=2",
            {
                **bearer(secret),
                "traceparent": f"00-{TRACE}-{PARENT}-01",
                "tracestate": "vendor=abc,other=1",
                "X-Request-Id": "traced-1",
            },
        )
        assert status == 200
        spans = by_name(await receiver.trace(TRACE, 4))
        server = spans["GET api"]
        assert server["kind"] == "server"
        assert server["parent_span_id"] == PARENT
        assert server["trace_state"] == "vendor=abc,other=1"
        assert server["attributes"] == {
            "http.request.method": "GET",
            "url.path": "/api/items",
            "http.response.status_code": 200,
            "http.route": "api",
            "gateway.key_id": key_id,
        }
        assert server["resource"]["service.name"] == "keygate"
        lookup, limit = spans["store keys.lookup"], spans["store ratelimit.check"]
        upstream_span = spans["GET upstream"]
        for child in (lookup, limit, upstream_span):
            assert child["parent_span_id"] == server["span_id"]
            assert child["kind"] == "client"
            assert server["start_ns"] <= child["start_ns"] <= child["end_ns"] <= server["end_ns"]
        assert lookup["attributes"]["db.system.name"] == "redis"
        assert upstream_span["attributes"]["http.response.status_code"] == 200
        assert upstream_span["attributes"]["server.port"] == upstream.port
        # the upstream's parent is the gateway's upstream span; tracestate as sent
        assert seen["traceparent"] == f"00-{TRACE}-{upstream_span['span_id']}-01"
        assert seen["tracestate"] == "vendor=abc,other=1"
        # the access line names the same trace and the server span
        gw.runtime.access_log.flush()
        [line] = [
            json.loads(x)
            for x in capsys.readouterr().out.splitlines()
            if x.startswith("{") and '"traced-1"' in x
        ]
        assert (line["trace_id"], line["span_id"]) == (TRACE, server["span_id"])
        # a cached key: no store lookup the second time
        await echo(
            http,
            gw.url + "/api/items",
            {**bearer(secret), "traceparent": f"00-{TRACE}-{'1' * 16}-01"},
        )
        second = [
            s for s in await receiver.trace(TRACE, 7) if s["parent_span_id"] != PARENT
        ]  # the second request's spans
        names = sorted(s["name"] for s in second if s["span_id"] != server["span_id"])
        assert names.count("store keys.lookup") == 1  # the first request's only

    async def test_a_trace_starts_without_traceparent_and_refusals_carry_their_code(
        self, traced, http, receiver
    ):
        gw = await traced()
        account = await new_account(gw.service)
        key_id, secret = await new_key(gw.service, account, permissions=["read"])
        status, seen = await echo(http, gw.url + "/public/x", {"tracestate": "lonely=1"})
        assert status == 200
        version, trace_id, parent_id, flags = seen["traceparent"].split("-")
        assert (version, flags) == ("00", "01") and HEX32.fullmatch(trace_id)
        assert "tracestate" not in seen  # no trace to belong to
        spans = by_name(await receiver.trace(trace_id, 2))
        server = spans["GET public"]
        assert server["parent_span_id"] is None
        assert spans["GET upstream"]["span_id"] == parent_id
        # refused before a key was identified, and after
        refusals = [
            ("ffffffffffffffffffffffffffffff01", {}, 401, "missing_api_key", None),
            ("ffffffffffffffffffffffffffffff02", {"Authorization": "Bearer nope"}, 401,
             "invalid_api_key", None),
            ("ffffffffffffffffffffffffffffff03", bearer(secret), 403, "insufficient_permissions",
             key_id),
        ]  # fmt: skip
        for trace, headers, code_status, _, _ in refusals:
            async with http.post(
                gw.url + "/api/x", headers={**headers, "traceparent": f"00-{trace}-{PARENT}-01"}
            ) as resp:
                assert resp.status == code_status
        for trace, _, code_status, code, logged_key in refusals:
            [server] = (
                await receiver.trace(trace, 1)
                if logged_key is None
                else [s for s in await receiver.trace(trace, 2) if s["kind"] == "server"]
            )
            attributes = server["attributes"]
            assert server["name"] == "POST api"
            assert attributes["http.response.status_code"] == code_status
            assert attributes["error.type"] == code
            assert attributes.get("gateway.key_id") == logged_key
        upstream_names = [s["name"] for s in await receiver.spans() if s["name"] == "POST upstream"]
        assert upstream_names == []  # a refusal never reaches the upstream

    async def test_an_unreachable_upstream_is_an_error_on_both_spans(self, traced, http, receiver):
        gw = await traced()
        async with http.get(
            gw.url + "/down/x", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
        ) as resp:
            assert resp.status == 502
        spans = by_name(await receiver.trace(TRACE, 2))
        assert spans["GET down"]["attributes"]["error.type"] == "upstream_unavailable"
        assert spans["GET down"]["status_code"] == 2  # error
        assert spans["GET upstream"]["attributes"]["error.type"] == "upstream_unavailable"
        assert "http.response.status_code" not in spans["GET upstream"]["attributes"]

    async def test_sample_ratio_samples_new_traces_and_follows_the_parent(
        self, traced, http, receiver
    ):
        gw = await traced(sample_ratio=0.0)
        _, new = await echo(http, gw.url + "/public/new", {})
        new_trace = new["traceparent"].split("-")[1]
        assert new["traceparent"].endswith("-00")  # not sampled: the upstream is told
        unsampled = "e" * 32
        _, kept_out = await echo(
            http, gw.url + "/public/b", {"traceparent": f"00-{unsampled}-{PARENT}-00"}
        )
        assert kept_out["traceparent"].startswith(f"00-{unsampled}-")
        assert kept_out["traceparent"].endswith("-00")
        _, sampled = await echo(
            http, gw.url + "/public/c", {"traceparent": f"00-{TRACE}-{PARENT}-01"}
        )
        assert sampled["traceparent"].endswith("-01")
        await receiver.trace(TRACE, 2)  # the parent said sampled: recorded
        traces = {s["trace_id"] for s in await receiver.spans()}
        assert traces == {TRACE}  # exported in order: the two before it would be here
        assert new_trace not in traces and unsampled not in traces


class TestWithoutTheSdk:
    def test_an_otlp_endpoint_without_the_tracing_extra_is_a_config_error(
        self, tmp_path: Path, base_config
    ):
        """With the OpenTelemetry SDK not importable, the config names the extra to install."""
        shadow = tmp_path / "shadow" / "opentelemetry"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
        config = write_config(
            tmp_path / "gw.yaml",
            base_config(tracing={"otlp_endpoint": "http://127.0.0.1:4318"}),
        )
        result = run_cli(config, "check-config", env={"PYTHONPATH": str(tmp_path / "shadow")})
        assert result.returncode != 0
        assert "tracing.otlp_endpoint" in result.stderr
        assert "keygate[tracing]" in result.stderr
        # the same file without the endpoint is fine there
        plain = write_config(tmp_path / "plain.yaml", base_config())
        ok = run_cli(plain, "check-config", env={"PYTHONPATH": str(tmp_path / "shadow")})
        assert ok.returncode == 0, ok.stderr

    def test_a_bad_endpoint_or_ratio_is_refused(self, tmp_path: Path, base_config):
        for tracing, named in [
            ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint"),
            (
                {"otlp_endpoint": "http://127.0.0.1:4318", "sample_ratio": 1.5},
                "tracing.sample_ratio",
            ),
        ]:
            config = write_config(tmp_path / "gw.yaml", base_config(tracing=tracing))
            result = run_cli(config, "check-config")
            assert result.returncode != 0 and named in result.stderr, result.stderr


class TestPropagationWithoutTracing:
    """No tracing configured: nothing is recorded, but the trace still goes upstream."""

    @pytest.fixture
    async def gw(self, start_gateway, base_config, upstream):
        return await start_gateway(base_config(routes=routes(upstream)))

    async def test_traceparent_is_continued_with_the_gateways_span(self, gw, http, capsys):
        _, seen = await echo(
            http,
            gw.url + "/public/x",
            {
                "traceparent": f"00-{TRACE}-{PARENT}-00",
                "tracestate": "a=1",
                "X-Request-Id": "plain-1",
            },
        )
        version, trace_id, span_id, flags = seen["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE, "00")  # the client's decision kept
        assert HEX16.fullmatch(span_id) and span_id != PARENT
        assert seen["tracestate"] == "a=1"
        gw.runtime.access_log.flush()
        [line] = [
            json.loads(x)
            for x in capsys.readouterr().out.splitlines()
            if x.startswith("{") and '"plain-1"' in x
        ]
        assert (line["trace_id"], line["span_id"]) == (TRACE, span_id)

    async def test_several_tracestate_lines_are_joined(self, gw, http):
        async with http.get(
            gw.url + "/public/x",
            headers=[
                ("traceparent", f"00-{TRACE}-{PARENT}-01"),
                ("tracestate", "a=1"),
                ("tracestate", "b=2"),
            ],
        ) as resp:
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
        assert seen["tracestate"] == "a=1,b=2"

    @pytest.mark.parametrize(
        "bad",
        [
            f"00-{TRACE}-{PARENT}",  # too short
            f"00-{'0' * 32}-{PARENT}-01",  # zero trace id
            f"00-{TRACE}-{'0' * 16}-01",  # zero parent
            f"ff-{TRACE}-{PARENT}-01",  # forbidden version
            f"00-{TRACE.upper()}-{PARENT}-01",  # upper case
            f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has nothing after the flags
            "garbage",
        ],
    )
    async def test_an_invalid_traceparent_starts_a_new_trace(self, gw, http, bad):
        _, seen = await echo(http, gw.url + "/public/x", {"traceparent": bad, "tracestate": "a=1"})
        version, trace_id, span_id, flags = seen["traceparent"].split("-")
        assert version == "00" and HEX32.fullmatch(trace_id) and trace_id != TRACE
        assert HEX16.fullmatch(span_id) and flags == "01"
        assert "tracestate" not in seen  # it belonged to the trace not continued

    async def test_a_later_version_is_continued(self, gw, http):
        _, seen = await echo(
            http, gw.url + "/public/x", {"traceparent": f"01-{TRACE}-{PARENT}-01-future"}
        )
        assert seen["traceparent"].startswith(f"00-{TRACE}-")

    async def test_every_request_gets_its_own_span_id(self, gw, http):
        ids = set()
        for _ in range(20):
            _, seen = await echo(
                http, gw.url + "/public/x", {"traceparent": f"00-{TRACE}-{PARENT}-01"}
            )
            ids.add(seen["traceparent"].split("-")[2])
        assert len(ids) == 20

    async def test_no_tracer_and_no_trace_sdk_is_loaded(self, base_config, upstream):
        """A gateway without tracing configured loads neither the trace SDK nor an exporter
        (redis-py itself imports parts of the OpenTelemetry API when it is installed)."""
        code = (
            "import asyncio, sys\n"
            "from gateway.app import GatewayApp\n"
            "from gateway.config import parse_config\n"
            f"config = parse_config({base_config(routes=routes(upstream))!r})\n"
            "async def main():\n"
            "    app = GatewayApp(config)\n"
            "    runtime = await app.start()\n"
            "    assert runtime.tracer is None and runtime.pipeline.tracer is None\n"
            "    await app.close()\n"
            "asyncio.run(main())\n"
            "print(sorted(m for m in sys.modules if m.startswith(\n"
            "    ('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "[]"

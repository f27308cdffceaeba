"""/metrics as SPEC §17 lists it, seen from a scraper: what each series measures, and that the
documented table of series and labels (docs/operations.md) is what the admin port really exposes."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import bearer, new_account, new_key, upstream_url
from prometheus_client.parser import text_string_to_metric_families

import gateway
from gateway.app import create_admin_app

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


class Streams:
    """An upstream answering an event stream that goes on until the test releases it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await self.release.wait()
        await response.write(b"data: last\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def streams():
    handler = Streams()
    app = web.Application()
    app.router.add_get("/events", handler.events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield handler, server
    handler.release.set()
    await server.close()


@pytest.fixture
async def gw(start_gateway, base_config, upstream, streams):
    _, stream_server = streams
    return await start_gateway(
        base_config(
            routes=[
                {
                    "name": "api",
                    "match": "/api",
                    "upstream": upstream_url(upstream),
                    "permissions": {"GET": "read", "*": "write"},
                },
                {
                    "name": "sse",
                    "match": "/sse",
                    "upstream": upstream_url(stream_server),
                    "strip_prefix": True,
                },
                {
                    "name": "gone",
                    "match": "/gone",
                    "auth": "none",
                    "upstream": "http://127.0.0.1:9",
                },
            ]
        )  # fmt: skip
    )


@pytest.fixture
async def admin(gw):
    server = TestServer(create_admin_app(lambda: gw.runtime), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def scrape_text(http, admin_url: str) -> str:
    async with http.get(admin_url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_duration_ends_at_the_response_headers_not_at_the_end_of_a_stream(
    gw, admin, http, streams
):
    handler, _ = streams
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    before = samples_of(await scrape_text(http, admin))
    started = time.monotonic()
    async with http.get(gw.url + "/sse/events", headers=bearer(secret)) as resp:
        assert resp.status == 200
        assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
        during = samples_of(await scrape_text(http, admin))
        # The stream is open: one request in flight, and not yet in the histogram.
        assert value(during, "gateway_requests_in_flight") == 1
        assert value(during, "gateway_request_duration_seconds_count", route="sse") == value(
            before, "gateway_request_duration_seconds_count", route="sse"
        )
        await asyncio.sleep(1.2)  # the stream lasts over a second: what is being measured
        handler.release.set()
        assert await resp.content.read() == b"data: last\n\n"
    assert time.monotonic() - started > 1.2

    async def settled():
        after = samples_of(await scrape_text(http, admin))
        if value(after, "gateway_request_duration_seconds_count", route="sse") == value(
            before, "gateway_request_duration_seconds_count", route="sse"
        ):
            return None
        return after

    deadline = time.monotonic() + 5
    while (after := await settled()) is None:
        assert time.monotonic() < deadline, "the stream was never observed"
        await asyncio.sleep(0.05)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "gateway_requests_in_flight") == 0
    assert delta("gateway_request_duration_seconds_count", route="sse") == 1
    # Observed at the response headers: well under the stream's 1.2 s.
    assert delta("gateway_request_duration_seconds_bucket", route="sse", le="0.5") == 1
    assert delta("gateway_request_duration_seconds_sum", route="sse") < 0.5
    assert delta("gateway_upstream_duration_seconds_count", route="sse") == 1
    assert delta("gateway_upstream_duration_seconds_bucket", route="sse", le="0.5") == 1
    assert delta("gateway_requests_total", route="sse", outcome="ok", status="2xx") == 1


async def test_upstream_duration_counts_failures_and_local_answers_have_none(gw, admin, http):
    account = await new_account(gw.service)
    _, reader = await new_key(gw.service, account, permissions=["read"])
    before = samples_of(await scrape_text(http, admin))
    async with http.get(gw.url + "/gone/x") as resp:
        assert resp.status == 502
    async with http.get(gw.url + "/api/x", headers=bearer(reader)) as resp:
        assert resp.status == 200
    async with http.post(gw.url + "/api/x", headers=bearer(reader)) as resp:
        assert resp.status == 403  # refused before the upstream
    after = samples_of(await scrape_text(http, admin))

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_upstream_duration_seconds_count", route="gone") == 1
    assert delta("gateway_upstream_duration_seconds_count", route="api") == 1  # the 200 only
    assert delta("gateway_request_duration_seconds_count", route="api") == 2
    assert delta("gateway_requests_total", route="gone", outcome="upstream_unavailable",
                 status="5xx") == 1  # fmt: skip
    assert delta("gateway_auth_denials_total", route="api", code="insufficient_permissions") == 1
    assert delta("gateway_auth_denials_total", route="gone", code="upstream_unavailable") == 0


async def test_build_info_store_state_and_process_metrics(gw, admin, http):
    samples = samples_of(await scrape_text(http, admin))
    assert value(samples, "gateway_build_info", version=gateway.__version__) == 1
    assert value(samples, "gateway_store_up") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_start_time_seconds") > 0
    assert ("process_cpu_seconds_total", ()) in samples
    assert value(samples, "process_open_fds") > 0
    # counters an alert rule takes increase() of start at zero, so their first rise shows
    for result in ("success", "error"):
        assert samples[("gateway_config_reloads_total", (("result", result),))] == 0


def readme_series() -> dict[str, tuple[str, ...]]:
    """docs/operations.md's table of metrics: name -> labels, for one gateway process."""
    section = OPERATIONS.read_text().split("### Metrics", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([a-z_]+)` \| (\w+) \|([^|]*)\|", line)
        if match is None:
            continue
        name, _, labels = match.groups()
        if "supervisor" in line:
            continue  # only the supervisor of several workers adds these
        rows[name] = tuple(sorted(re.findall(r"`(\w+)`", labels)))
    return rows


async def test_the_docs_list_every_series_with_its_labels(gw, admin, http):
    # Traffic that gives every labelled series at least one sample.
    account = await new_account(gw.service)
    _, reader = await new_key(gw.service, account, permissions=["read"])
    for method, path, headers in [
        ("GET", "/api/x", bearer(reader)),
        ("POST", "/api/x", bearer(reader)),
        ("GET", "/gone/x", {}),
    ]:
        async with http.request(method, gw.url + path, headers=headers) as resp:
            await resp.read()
    gw.runtime.metrics.reloads.labels("success")  # a reload's series, before any reload
    gw.runtime.metrics.websockets.labels("api")
    text = await scrape_text(http, admin)
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("python_"):
            continue  # the interpreter's own; not the gateway's to document
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = exposed.setdefault(name, set())
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
    documented = readme_series()
    assert set(documented) == set(exposed), set(documented) ^ set(exposed)
    for name, labels in documented.items():
        assert tuple(sorted(exposed[name])) == labels, name

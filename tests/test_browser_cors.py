"""A page on another origin calls the gateway from a real headless Chromium (SPEC §12).

The page is served from its own loopback port (another origin than the
gateway's), calls the gateway with ``fetch`` and an ``Authorization`` header
(so Chromium sends a preflight first), reads the error bodies from script,
and logs what it saw; the test asserts that log. Debian's ``chromium``
(scripts/system-deps.sh); Playwright never downloads a browser.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import new_account, new_key, upstream_url
from playwright.async_api import Browser, async_playwright
from ws_upstream import WsUpstream

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.integration

PAGE = """<!doctype html><meta charset="utf-8"><title>app</title>
<script>
window.done = false;
window.seen = [];
async function call(url, key) {
  const headers = key ? {Authorization: "Bearer " + key} : {};
  try {
    const resp = await fetch(url, {headers});
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    window.seen.push({url, status: resp.status, body,
                      requestId: resp.headers.get("X-Request-Id"),
                      retryAfter: resp.headers.get("Retry-After")});
  } catch (e) {
    window.seen.push({url, error: String(e)});
  }
}
async function run(plan) {
  for (const step of plan) { await call(step.url, step.key); }
  window.done = true;
}
</script>"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/system-deps.sh (Debian's chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


async def page_server() -> TestServer:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def pages() -> AsyncIterator[tuple[TestServer, TestServer]]:
    allowed, other = await page_server(), await page_server()
    yield allowed, other
    await allowed.close()
    await other.close()


async def run_page(browser: Browser, page_url: str, plan: list[dict]) -> list[dict]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(page_url)
        await page.evaluate(f"run({json.dumps(plan)})")
        await page.wait_for_function("window.done === true", timeout=15000)
        return await page.evaluate("window.seen")
    finally:
        await context.close()


async def test_a_page_on_another_origin_calls_the_gateway_and_reads_its_errors(
    browser, pages, start_gateway, base_config, upstream
):
    allowed_page, other_page = pages
    origins = [f"http://127.0.0.1:{allowed_page.port}", f"http://127.0.0.1:{other_page.port}"]
    gw = await start_gateway(
        base_config(
            routes=[
                {
                    "name": "api",
                    "match": "/api",
                    "upstream": upstream_url(upstream),
                    "cors": {"allow_origins": origins},
                },
                {
                    "name": "limited",
                    "match": "/limited",
                    "upstream": upstream_url(upstream),
                    "rate_limit": "1/minute",
                    "cors": {"allow_origins": origins},
                },
            ]  # fmt: skip
        )
    )
    account = await new_account(gw.service)
    _, browser_key = await new_key(
        gw.service, account, allowed_referrers=[f"127.0.0.1:{allowed_page.port}"]
    )
    _, plain_key = await new_key(gw.service, account)
    plan = [
        {"url": gw.url + "/api/things", "key": browser_key},  # preflight, then 200
        {"url": gw.url + "/api/things", "key": None},  # 401, readable
        {"url": gw.url + "/limited/x", "key": plain_key},
        {"url": gw.url + "/limited/x", "key": plain_key},  # 429, readable
    ]
    seen = await run_page(browser, f"http://127.0.0.1:{allowed_page.port}/", plan)
    assert [s.get("status") for s in seen] == [200, 401, 200, 429], seen
    assert seen[0]["body"]["path"] == "/api/things"  # the upstream's answer reached the script
    assert seen[1]["body"]["error"]["code"] == "missing_api_key"
    assert seen[1]["requestId"] == seen[1]["body"]["meta"]["request_id"]
    assert seen[3]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert int(seen[3]["retryAfter"]) > 0

    # The same referrer-restricted key from another origin's page: refused, and the page can
    # read why.
    seen = await run_page(browser, f"http://127.0.0.1:{other_page.port}/", plan[:1])
    assert seen[0]["status"] == 403, seen
    assert seen[0]["body"]["error"]["code"] == "referrer_not_allowed"


async def test_without_cors_the_browser_cannot_read_the_answer(
    browser, pages, start_gateway, base_config, upstream
):
    allowed_page, _ = pages
    gw = await start_gateway(
        base_config(routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}])
    )
    account = await new_account(gw.service)
    _, key = await new_key(gw.service, account)
    seen = await run_page(
        browser, f"http://127.0.0.1:{allowed_page.port}/", [{"url": gw.url + "/api/x", "key": key}]
    )
    assert "error" in seen[0] and "Failed to fetch" in seen[0]["error"], seen


async def test_a_page_opens_a_websocket_with_its_key_as_a_subprotocol(
    browser, pages, start_gateway, base_config
):
    upstream = WsUpstream()
    base = await upstream.start()
    try:
        gw = await start_gateway(
            base_config(
                routes=[{"name": "live", "match": "/live", "upstream": base, "websocket": True}]
            )  # fmt: skip
        )
        account = await new_account(gw.service)
        key_id, key = await new_key(gw.service, account)
        page_url = f"http://127.0.0.1:{pages[0].port}/"
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(page_url)
            script = """([url, key]) => new Promise((resolve) => {
                const seen = [];
                const ws = new WebSocket(url, ["bearer." + key, "chat"]);
                ws.onopen = () => { seen.push("open:" + ws.protocol); ws.send("hi"); };
                ws.onmessage = (e) => { seen.push("message:" + e.data); ws.close(4000); };
                ws.onclose = (e) => { seen.push("close:" + e.code); resolve(seen); };
                ws.onerror = () => seen.push("error");
            })"""
            ws_url = gw.url.replace("http://", "ws://") + "/live/feed"
            seen = await page.evaluate(script, [ws_url, key])
        finally:
            await context.close()
        assert seen == ["open:chat", "message:echo:hi", "close:4000"], seen
        handshake = upstream.handshakes[0]["headers"]
        assert handshake["X-Gateway-Key-Id"] == key_id
        assert handshake["Sec-WebSocket-Protocol"] == "chat"
    finally:
        assert upstream.server is not None
        await upstream.server.close()

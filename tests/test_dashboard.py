"""The key-management dashboard in a real headless Chromium (Debian's), driven by Playwright.

Each test runs the real gateway on loopback with the real Redis and a real
upstream, signs in the way a person does (pasting a key), and asserts what the
page shows and what the gateway then does. Every test saves a screenshot to
test-output/. The browser is Debian's ``chromium`` (scripts/system-deps.sh
installs it); Playwright never downloads one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import bearer, gateways, new_account, new_key, upstream_url
from playwright.async_api import Browser, Page, async_playwright, expect
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.config.units import Quota
from gateway.demo.upstream import create_upstream
from gateway.keys.service import CLI as CLI_ACTOR
from gateway.timefmt import isoformat, utcnow

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
SECRET = re.compile(r"^sk_(live|test)_[0-9A-Za-z]{38}$")
XSS_NAME = "<img src=x onerror=alert(1)>"
FAILED_RESOURCE = re.compile(r"status of (\d{3})")

# The browser is launched once for this module, so every test here runs in the module's event
# loop; the fixtures below that start servers are this module's own copies of conftest's, run
# in that same loop.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
in_module_loop = pytest_asyncio.fixture(loop_scope="module")


# -- fixtures -------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/system-deps.sh (Debian's chromium package)"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@in_module_loop
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=key_prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@in_module_loop
async def upstream() -> AsyncIterator[TestServer]:
    server = TestServer(create_upstream("upstream"), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@in_module_loop
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@in_module_loop
async def start_gateway(redis_client: aioredis.Redis) -> AsyncIterator[Any]:
    async with gateways() as start:
        yield start


class Tab:
    """One browser page and everything it reported: console errors, uncaught errors, dialogs."""

    def __init__(self, page: Page, base: str, shots: Path, test_name: str):
        self.page = page
        self.base = base
        self.shots = shots
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.urls: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("dialog", self._dialog)
        page.on("request", lambda request: self.urls.append(request.url))
        self.failed: list[tuple[int, str]] = []
        page.on(
            "response",
            lambda r: self.failed.append((r.status, r.url)) if r.status >= 400 else None,
        )

    def _console(self, message: Any) -> None:
        if message.type in ("error", "assert"):
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        asyncio.ensure_future(dialog.dismiss())

    async def open(self) -> Any:
        return await self.page.goto(self.base + "/dashboard")

    async def sign_in(self, secret: str) -> None:
        await self.open()
        await self.page.get_by_label("API key", exact=True).fill(secret)
        await self.page.get_by_role("button", name="Sign in").click()

    async def sign_in_admin(self, secret: str) -> None:
        await self.sign_in(secret)
        await expect(self.page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
        await expect(self.page.locator("#keys-body tr").first).to_be_visible()

    def row(self, name: str) -> Any:
        return self.page.locator("#keys-body tr").filter(
            has=self.page.locator(".key-name", has_text=re.compile("^" + re.escape(name) + "$"))
        )

    async def shot(self, label: str, **options: Any) -> Path:
        path = self.shots / f"dashboard-{self.test_name}-{label}.png"
        await self.page.screenshot(path=str(path), full_page=True, **options)
        return path

    def assert_clean(self, *expected_statuses: int) -> None:
        """No uncaught error, no alert/confirm/prompt, and no console error except the
        browser's own note of an API answer with one of ``expected_statuses``."""
        assert self.page_errors == []
        assert self.dialogs == []
        unexpected = []
        for text in self.console_errors:
            match = FAILED_RESOURCE.search(text)
            expected = match is not None and int(match.group(1)) in expected_statuses
            if text.startswith("Failed to load resource") and expected:
                continue
            unexpected.append(text)
        assert unexpected == [], self.failed


@in_module_loop
async def dashboard(start_gateway, base_config, upstream, browser, output_dir, request):
    """A gateway with a users route, an account on the pro plan, its admin key, and a tab."""

    class Setup:
        pass

    setup = Setup()
    setup.gw = await start_gateway(
        base_config(
            server={"access_log": False},
            webhooks={"allow_private_targets": True, "retry_schedule": ["1s"]},
            plans={
                "default": {"rate_limit": "100000/minute"},
                "pro": {"rate_limit": "1000000/minute", "quota": "100000/month"},
            },
            routes=[
                {
                    "name": "users",
                    "match": "/v1/users",
                    "upstream": upstream_url(upstream),
                    "permissions": {"GET": "read", "*": "write"},
                }
            ],
        )
    )
    setup.account = await new_account(setup.gw.service, plan="pro", name="Acme Corp")
    setup.admin_id, setup.admin = await new_key(
        setup.gw.service, setup.account, name="Ops admin", permissions=["admin"]
    )
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = await context.new_page()
    setup.tab = Tab(page, setup.gw.url, output_dir, request.node.name)
    yield setup
    await context.close()


async def status_within(
    http, url: str, secret: str, wanted: int, seconds: float
) -> tuple[int, dict]:
    """Poll until ``url`` answers ``wanted`` with ``secret``, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        async with http.get(url, headers=bearer(secret)) as resp:
            body = await resp.json()
            if resp.status == wanted or time.monotonic() >= deadline:
                return resp.status, body
        await asyncio.sleep(0.05)


async def api_get(http, gw, secret: str, path: str) -> dict:
    async with http.get(gw.url + "/v1" + path, headers=bearer(secret)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def chart_totals(page: Page) -> dict[str, Any]:
    """What the chart on the page draws: its labels and each dataset's sum."""
    await page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('usage-chart'))"
    )
    return await page.evaluate(
        """() => {
        const chart = Chart.getChart(document.getElementById('usage-chart'));
        const sums = {};
        for (const set of chart.data.datasets) sums[set.label] = set.data.reduce((a, b) => a + b, 0);
        return {labels: chart.data.labels, sums: sums, points: chart.data.datasets[0].data.length,
                today: chart.data.datasets.map(set => set.data[set.data.length - 1])};
    }"""
    )


# -- the whole life of a key -------------------------------------------------------------


async def test_create_use_watch_rotate_and_revoke_a_key(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page

    response = await tab.open()
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    await tab.sign_in_admin(dashboard.admin)
    await expect(page.locator("#whoami-account")).to_have_text("Acme Corp")
    await expect(tab.row("Ops admin")).to_have_count(1)
    await tab.shot("1-signed-in")

    # Create: name, live, read; the secret is shown once.
    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await expect(create).to_be_visible()
    await create.get_by_label("Name").fill("Billing service")
    await create.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("dialog", name="Your new API key")
    await expect(shown).to_be_visible()
    await expect(shown).to_contain_text("It is shown only once")
    secret_box = shown.get_by_label("Secret key for Billing service")
    secret = await secret_box.input_value()
    assert SECRET.match(secret) and secret.startswith("sk_live_")
    await shown.get_by_role("button", name="Copy").click()
    await expect(shown.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("() => navigator.clipboard.readText()") == secret
    await tab.shot("2-secret-shown-once", mask=[secret_box])
    await shown.get_by_role("button", name="I have stored the key").click()
    await expect(shown).to_be_hidden()
    # Gone from the page, the DOM and storage once the dialog is closed (the
    # dialog's close event, which clears the field, fires just after it hides).
    await expect(page.locator("#secret-value")).to_have_value("")
    assert secret not in await page.content()
    stored = await page.evaluate(
        "() => JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage),"
        " document.cookie, [...document.querySelectorAll('input, textarea')].map(e => e.value)])"
    )
    assert secret not in stored
    row = tab.row("Billing service")
    await expect(row).to_have_count(1)
    await expect(row.locator(".key-mask")).to_have_text(f"sk_live_\u2026{secret[-4:]}")
    await expect(row).to_contain_text("read")
    await expect(row).to_contain_text("active")

    # Use it through the proxy: allowed reads, a denied write.
    for _ in range(3):
        async with http.get(gw.url + "/v1/users/1", headers=bearer(secret)) as resp:
            assert resp.status == 200
    async with http.post(gw.url + "/v1/users", headers=bearer(secret), data=b"{}") as resp:
        assert resp.status == 403

    # Usage: the chart draws the usage endpoint's 30 days.
    await page.get_by_role("link", name="Usage of Billing service").click()
    await expect(
        page.get_by_role("heading", name=re.compile("^Usage of Billing service"))
    ).to_be_visible()
    key_id = await row_key_id(tab, "Billing service")
    usage = await wait_for_usage(http, gw, dashboard.admin, key_id, allowed=3, denied=1)
    await page.reload()
    drawn = await chart_totals(page)
    days = usage["data"]["days"]
    assert drawn["points"] == len(days) == 30
    assert drawn["labels"][-1] == days[0]["date"][5:]  # newest day on the right
    assert drawn["sums"] == {
        "Allowed": sum(d["allowed"] for d in days),
        "Denied": sum(d["denied"] for d in days),
        "Rate-limited": sum(d["rate_limited"] for d in days),
    }
    # Exactly the traffic sent above, on today's bar (the right-most).
    assert drawn["sums"] == {"Allowed": 3, "Denied": 1, "Rate-limited": 0}
    assert drawn["today"] == [3, 1, 0]
    await expect(page.locator('[data-total="allowed"]')).to_have_text(str(drawn["sums"]["Allowed"]))
    await tab.shot("3-usage-chart")

    # Rotate with no grace period: a new secret, once; the old key answers 401 within a second.
    await page.get_by_role("button", name="Back to keys").click()
    await tab.row("Billing service").get_by_role("button", name="Rotate Billing service").click()
    rotate = page.get_by_role("dialog", name="Rotate key Billing service?")
    await expect(rotate).to_be_visible()
    await rotate.get_by_label("Grace period for the current key").fill("0s")
    await rotate.get_by_role("button", name="Rotate key").click()
    await expect(shown).to_be_visible()
    rotated = await shown.get_by_label("Secret key for Billing service").input_value()
    assert SECRET.match(rotated) and rotated != secret
    await shown.get_by_role("button", name="I have stored the key").click()
    status, body = await status_within(http, gw.url + "/v1/users/1", secret, 401, 1.0)
    assert (status, body["error"]["code"]) == (401, "expired_api_key")
    async with http.get(gw.url + "/v1/users/1", headers=bearer(rotated)) as resp:
        assert resp.status == 200
    await expect(page.locator("#keys-body tr.status-expired")).to_have_count(1)

    # Revoke the new key, behind a confirmation; it answers 401 within a second.
    active = page.locator("#keys-body tr.status-active").filter(has_text="Billing service")
    await active.get_by_role("button", name="Revoke Billing service").click()
    revoke = page.get_by_role("dialog", name="Revoke key Billing service?")
    await expect(revoke).to_contain_text("cannot be undone")
    await revoke.get_by_role("button", name="Revoke key").click()
    await expect(page.get_by_role("status").filter(has_text="revoked")).to_have_text(
        "Key \u201cBilling service\u201d revoked."
    )
    status, body = await status_within(http, gw.url + "/v1/users/1", rotated, 401, 1.0)
    assert (status, body["error"]["code"]) == (401, "revoked_api_key")
    await expect(page.locator("#keys-body tr.status-revoked")).to_have_count(1)
    await tab.shot("4-after-revoke")

    # The key never travelled in a URL, and nothing complained.
    for value in (dashboard.admin, secret, rotated):
        assert not any(value in url for url in tab.urls)
    tab.assert_clean()


async def row_key_id(tab: Tab, name: str) -> str:
    return await tab.row(name).first.get_attribute("data-key-id")


async def wait_for_usage(http, gw, admin: str, key_id: str, *, allowed: int, denied: int) -> dict:
    """The usage endpoint's answer once it counts the traffic sent (counts may lag 10 s)."""
    deadline = time.monotonic() + 12
    while True:
        usage = await api_get(http, gw, admin, f"/api-keys/{key_id}/usage")
        days = usage["data"]["days"]
        counted = (sum(d["allowed"] for d in days), sum(d["denied"] for d in days))
        if (counted[0] >= allowed and counted[1] >= denied) or time.monotonic() > deadline:
            assert counted[0] >= allowed and counted[1] >= denied, counted
            return usage
        await asyncio.sleep(0.2)


# -- create: the API's validation, shown beside each field --------------------------------


async def submit_create(page: Page, dialog: Any) -> tuple[int, dict]:
    async with page.expect_response(
        lambda r: r.url.endswith("/v1/api-keys") and r.request.method == "POST"
    ) as info:
        await dialog.get_by_role("button", name="Create key").click()
    response = await info.value
    return response.status, await response.json()


async def test_create_shows_each_api_error_beside_its_field(dashboard):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await tab.sign_in_admin(dashboard.admin)
    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await create.get_by_text("Restrictions, rate limit and metadata").click()

    name = create.get_by_label("Name")
    extra = create.get_by_label("Other permissions, comma-separated")
    expires = create.get_by_label("Expires (optional, your local time)")
    ips = create.get_by_label("Allowed IP addresses or CIDRs (one per line)")
    referrers = create.get_by_label("Allowed referrers (one per line)")
    endpoints = create.get_by_label("Allowed endpoints (one per line)")
    rate = create.get_by_label("Rate limit (optional)")
    metadata = create.get_by_label("Metadata (a flat JSON object)")
    cases = [  # (control, bad value, good value, the field the API names)
        (name, "", "Reporting job", "name"),
        (extra, "Users:Read", "users:read", "permissions"),
        (expires, "2020-01-01T00:00", "", "expires_at"),
        (ips, "10.0.0.300/8", "10.0.0.0/8\n2001:db8::/32", "allowed_ips"),
        (referrers, "ftp://files.example.com/*", "https://app.example.com/*", "allowed_referrers"),
        (endpoints, "BREW /coffee", "GET /v1/users/**", "allowed_endpoints"),
        (rate, "lots", "100/minute", "rate_limit"),
        (metadata, '{"team": {"nested": true}}', '{"team": "billing", "tier": 2}', "metadata"),
        (metadata, "team=billing", '{"team": "billing", "tier": 2}', "metadata"),
    ]
    await name.fill("Reporting job")
    for control, bad, good, field in cases:
        await control.fill(bad)
        status, body = await submit_create(page, create)
        assert status == 400, body
        assert body["error"]["code"] == "invalid_request"
        assert body["error"]["details"]["field"] == field
        error = create.locator(f"#err-{field}")
        await expect(error).to_be_visible()
        await expect(error).to_have_text(body["error"]["message"])
        await expect(control).to_have_attribute("aria-invalid", "true")
        assert f"err-{field}" in (await control.get_attribute("aria-describedby")).split()
        await expect(control).to_be_focused()
        await expect(create.locator(".field-error:visible")).to_have_count(1)
        if field == "metadata" and bad.startswith("{"):
            await tab.shot("field-error")
        await control.fill(good)
    status, body = await submit_create(page, create)
    assert status == 201, body
    await expect(page.get_by_role("dialog", name="Your new API key")).to_be_visible()
    created = await gw.service.get_key(CLI_ACTOR, body["data"]["id"])
    assert created.name == "Reporting job"
    assert created.permissions == ("read", "users:read")
    assert created.allowed_ips == ("10.0.0.0/8", "2001:db8::/32")
    assert created.allowed_referrers == ("https://app.example.com/*",)
    assert created.allowed_endpoints == ("GET /v1/users/**",)
    assert created.rate_limit == "100/minute"
    assert created.metadata == {"team": "billing", "tier": 2}
    assert created.expires_at is None
    tab.assert_clean(400)


# -- safe by construction -----------------------------------------------------------------


async def test_hostile_names_and_metadata_show_as_text_and_run_nothing(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await page.add_init_script("window.__ran = [];")
    key_id, _ = await new_key(
        gw.service,
        dashboard.account,
        name=XSS_NAME,
        permissions=["read"],
        metadata={"note": "<script>window.__ran.push(2)</script>", "<b>k</b>": "<i>v</i>"},
        allowed_referrers=["https://app.example.com/<svg onload=window.__ran.push(3)>*"],
    )
    await tab.sign_in_admin(dashboard.admin)
    row = tab.row(XSS_NAME)
    await expect(row).to_have_count(1)
    await expect(row.locator(".key-name")).to_have_text(XSS_NAME)
    await tab.shot("table")

    # Its page: name in the heading, metadata and referrer pattern as text.
    await page.get_by_role("link", name=f"Usage of {XSS_NAME}").click()
    await expect(page.locator("#usage-title")).to_contain_text(XSS_NAME)
    settings = page.locator("#usage-key")
    await expect(settings).to_contain_text("note: <script>window.__ran.push(2)</script>")
    await expect(settings).to_contain_text("<b>k</b>: <i>v</i>")
    await expect(settings).to_contain_text(
        "https://app.example.com/<svg onload=window.__ran.push(3)>*"
    )
    await chart_totals(page)
    await tab.shot("usage")

    # The confirmation dialogs and the audit trail name it as text too.
    await page.get_by_role("button", name="Back to keys").click()
    await row.get_by_role("button", name=f"Revoke {XSS_NAME}").click()
    await expect(page.locator("#revoke-name")).to_have_text(XSS_NAME)
    await page.get_by_role("button", name="Cancel").click()
    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await create.get_by_label("Name").fill(XSS_NAME + "<script>window.__ran.push(4)</script>")
    await create.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("dialog", name="Your new API key")
    await expect(shown.locator("#secret-name")).to_have_text(
        XSS_NAME + "<script>window.__ran.push(4)</script>"
    )
    await shown.get_by_role("button", name="I have stored the key").click()
    await page.get_by_role("link", name="Audit trail").click()
    await expect(page.locator("#audit-body")).to_contain_text(f"name: {XSS_NAME}")
    await tab.shot("audit")

    assert await page.evaluate("() => window.__ran") == []
    injected = await page.evaluate(
        "() => document.querySelectorAll('main img, main svg, main i, main b, dialog script').length"
    )
    assert injected == 0
    assert key_id in await page.locator("#audit-body").inner_text()
    tab.assert_clean()


async def test_page_and_assets_carry_a_strict_csp_the_browser_enforces(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    for path in [
        "/dashboard",
        "/dashboard/",
        "/dashboard/static/app.js",
        "/dashboard/static/app.css",
        "/dashboard/static/chart.umd.min.js",
        "/dashboard/static/missing.js",
    ]:
        async with http.get(gw.url + path) as resp:
            assert resp.headers["Content-Security-Policy"] == (
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
            ), path
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.status == (404 if "missing" in path else 200)
    async with http.get(gw.url + "/dashboard") as resp:
        html = await resp.text()
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None  # no inline script
    assert re.search(r"<style|\sstyle=|\son[a-z]+=", html) is None  # no inline style or handler
    assert "http://" not in html and "https://app" not in html.split("placeholder")[0]

    # The management API keeps answering no cross-origin caller.
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    async with http.options(gw.url + "/v1/api-keys", headers=headers) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(
        gw.url + "/v1/account",
        headers={**bearer(dashboard.admin), "Origin": "https://evil.example"},
    ) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers

    # In the browser: inline script and style attributes are refused.
    await tab.sign_in_admin(dashboard.admin)
    outcome = await page.evaluate(
        """async () => {
        const violations = [];
        document.addEventListener('securitypolicyviolation', e => violations.push(e.violatedDirective));
        const script = document.createElement('script');
        script.textContent = 'window.__inline = true';
        document.body.appendChild(script);
        const p = document.createElement('p');
        p.setAttribute('style', 'color: rgb(255, 0, 0)');
        p.textContent = 'x';
        document.body.appendChild(p);
        await new Promise(r => setTimeout(r, 100));
        return {inline: window.__inline === true, color: getComputedStyle(p).color, violations};
    }"""
    )
    assert outcome["inline"] is False
    assert outcome["color"] != "rgb(255, 0, 0)"
    assert any(v.startswith("script-src") for v in outcome["violations"])
    assert any(v.startswith("style-src") for v in outcome["violations"])
    await tab.shot("signed-in")
    # The browser reports exactly the two refusals provoked above, and nothing else.
    for _ in range(40):
        blocked = [t for t in tab.console_errors if "Content Security Policy" in t]
        if len(blocked) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(blocked) == 2 and all("has been blocked" in t for t in blocked)
    tab.console_errors = [t for t in tab.console_errors if t not in blocked]
    tab.assert_clean()

    # Framing is refused: another page cannot put the dashboard in a frame.
    framer = await page.context.new_page()
    await framer.set_content(f'<iframe src="{gw.url}/dashboard" title="framed"></iframe>')
    await framer.wait_for_timeout(500)
    framed = [f for f in framer.frames if f != framer.main_frame]
    assert len(framed) == 1
    assert not framed[0].url.startswith(gw.url)
    assert await framed[0].evaluate("() => document.querySelector('#signin-form') === null")
    await framer.close()


async def test_script_never_parses_strings_as_html():
    source = (Path(__file__).parent.parent / "gateway/dashboard/static/app.js").read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ):
        assert sink not in source, sink
    assert "console." not in source  # nothing, and so never a key, goes to the console
    assert "localStorage" not in source and "document.cookie" not in source


async def test_path_is_configurable_and_the_dashboard_can_be_off(start_gateway, base_config, http):
    gw = await start_gateway(base_config(dashboard={"path": "/keys-ui"}))
    async with http.get(gw.url + "/keys-ui") as resp:
        assert resp.status == 200
        html = await resp.text()
        etag = resp.headers["ETag"]
    assert 'src="/keys-ui/static/app.js"' in html and 'data-api-prefix="/v1"' in html
    async with http.get(gw.url + "/keys-ui/static/app.js", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        etag = resp.headers["ETag"]
    async with http.get(gw.url + "/keys-ui/static/app.js", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with http.post(gw.url + "/keys-ui") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"
    async with http.head(gw.url + "/keys-ui") as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/dashboard") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "route_not_found"

    off = await start_gateway(base_config(dashboard={"enabled": False}))
    async with http.get(off.url + "/dashboard") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "route_not_found"


# -- who may sign in ----------------------------------------------------------------------


async def test_sign_in_keeps_the_key_in_this_tab_only_and_turns_away_other_keys(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page

    # A refused key is named as refused, and not kept.
    await tab.sign_in("sk_live_" + "A" * 38)
    await expect(page.locator("#signin-error")).to_have_text(
        "This key was refused: Invalid API key provided"
    )
    await expect(page.get_by_label("API key", exact=True)).to_have_attribute("aria-invalid", "true")
    assert await page.evaluate("() => sessionStorage.length") == 0
    await tab.shot("1-refused")

    # A valid key without admin gets a clear page, and never asks for the keys.
    _, reader = await new_key(
        gw.service, dashboard.account, name="Read only", permissions=["read", "write"]
    )
    await tab.sign_in(reader)
    await expect(page.get_by_role("heading", name="This key cannot manage keys")).to_be_visible()
    await expect(page.locator("#view-denied")).to_contain_text("Read only")
    await expect(page.locator("#view-denied")).to_contain_text("read, write")
    await expect(page.locator("#view-app")).to_be_hidden()
    await tab.shot("2-cannot-manage")
    assert not any("/api-keys" in url for url in tab.urls)
    await page.get_by_role("button", name="Sign out and use another key").click()
    await expect(page.get_by_label("API key", exact=True)).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0

    # The admin key: in this tab's sessionStorage, nowhere else; sign-out forgets it.
    await tab.sign_in_admin(dashboard.admin)
    storage = await page.evaluate(
        "() => ({session: Object.values(sessionStorage), local: localStorage.length,"
        " cookie: document.cookie})"
    )
    assert storage == {"session": [dashboard.admin], "local": 0, "cookie": ""}
    assert await page.context.cookies() == []
    assert dashboard.admin not in page.url
    await page.reload()  # a reload keeps this tab signed in ...
    await expect(tab.row("Ops admin")).to_have_count(1)
    other = await page.context.new_page()  # ... another tab is not
    await other.goto(gw.url + "/dashboard")
    await expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    await other.close()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0
    assert await page.get_by_label("API key", exact=True).input_value() == ""
    await page.reload()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await tab.shot("3-signed-out")

    # An admin key revoked elsewhere while signed in: the next call signs the page out.
    await tab.sign_in_admin(dashboard.admin)
    await gw.service.revoke_key(CLI_ACTOR, dashboard.admin_id)
    status, _ = await status_within(http, gw.url + "/v1/account", dashboard.admin, 401, 1.0)
    assert status == 401
    await page.get_by_role("link", name="Audit trail").click()
    await expect(page.locator("#signin-error")).to_have_text(
        "Your key is no longer accepted (revoked_api_key). Sign in again."
    )
    assert await page.evaluate("() => sessionStorage.length") == 0
    await tab.shot("4-revoked-while-signed-in")
    for secret in (dashboard.admin, reader):
        assert not any(secret in url for url in tab.urls)
    tab.assert_clean(401)


async def test_a_test_mode_admin_key_manages_only_test_keys(dashboard):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await new_key(gw.service, dashboard.account, name="Live worker", mode="live")
    await new_key(gw.service, dashboard.account, name="Test worker", mode="test")
    _, test_admin = await new_key(
        gw.service,
        dashboard.account,
        name="Sandbox admin",
        mode="test",
        permissions=["admin"],
        rate_limit="500/minute",
    )
    await tab.sign_in(test_admin)
    await expect(tab.row("Test worker")).to_have_count(1)
    await expect(tab.row("Sandbox admin")).to_have_count(1)
    await expect(tab.row("Live worker")).to_have_count(0)
    await expect(tab.row("Ops admin")).to_have_count(0)
    await expect(page.locator("#keys-body tr")).to_have_count(2)
    await expect(page.locator("#test-mode-notice")).to_be_visible()
    await expect(page.locator("#whoami-mode")).to_have_text("test mode")
    await expect(page.get_by_role("radio", name="Live")).to_be_disabled()
    await expect(page.get_by_role("radio", name="Test")).to_be_checked()
    await tab.shot("test-mode")

    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await expect(create.get_by_role("radio", name="Live")).to_be_disabled()
    await expect(create.get_by_role("radio", name="Test (sandboxed)")).to_be_checked()
    await create.get_by_label("Name").fill("Sandbox job")
    status, body = await submit_create(page, create)
    assert status == 201
    secret = await page.get_by_label("Secret key for Sandbox job").input_value()
    assert secret.startswith("sk_test_")
    assert (await gw.service.get_key(CLI_ACTOR, body["data"]["id"])).mode == "test"
    await page.get_by_role("button", name="I have stored the key").click()
    await expect(page.locator("#keys-body tr")).to_have_count(3)
    modes = await page.locator("#keys-body tr td[data-label='Mode']").all_inner_texts()
    assert modes == ["test", "test", "test"]
    await page.get_by_role("link", name="Account").click()
    await expect(page.locator("#account-limits")).to_contain_text(
        "This key's own rate limit500 requests per minute"
    )
    tab.assert_clean()


async def test_the_last_admin_key_is_not_revoked_and_the_dialog_says_why(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await tab.sign_in(dashboard.admin)  # "Ops admin", the account's only admin key
    await tab.row("Ops admin").get_by_role("button", name="Revoke Ops admin").click()
    revoke = page.get_by_role("dialog", name="Revoke key Ops admin?")
    await revoke.get_by_role("button", name="Revoke key").click()
    await expect(revoke.locator("#revoke-error")).to_contain_text(
        "the account's last active live admin key"
    )
    await expect(revoke.locator("#revoke-error")).to_contain_text("create another admin key first")
    await tab.shot("last-admin-key")
    await page.keyboard.press("Escape")
    await expect(revoke).to_be_hidden()
    # Nothing changed: the key is active and still signs the page in.
    await expect(
        page.locator("#keys-body tr.status-active").filter(has_text="Ops admin")
    ).to_have_count(1)
    async with http.get(gw.url + "/v1/api-keys", headers=bearer(dashboard.admin)) as resp:
        assert resp.status == 200
    tab.assert_clean(409)


async def test_rotating_the_signed_in_key_at_once_shows_its_new_secret_and_stays_in(
    dashboard, http
):
    """With a grace of 0s the old key stops at once: the page goes on with the new one."""
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await tab.sign_in(dashboard.admin)
    await tab.row("Ops admin").get_by_role("button", name="Rotate Ops admin").click()
    rotate = page.get_by_role("dialog", name="Rotate key Ops admin?")
    await rotate.get_by_label("Grace period for the current key").fill("0s")
    await rotate.get_by_role("button", name="Rotate key").click()
    shown = page.get_by_role("dialog", name="Your new API key")
    await expect(shown).to_be_visible()
    await page.wait_for_timeout(500)  # the list reloads behind the dialog meanwhile
    await expect(shown).to_be_visible()
    rotated = await shown.get_by_label("Secret key for Ops admin").input_value()
    assert SECRET.match(rotated) and rotated != dashboard.admin
    await tab.shot("rotated-own-key", mask=[shown.locator("#secret-value")])
    await shown.get_by_role("button", name="I have stored the key").click()
    await expect(
        page.locator("#keys-body tr.status-active").filter(has_text="Ops admin")
    ).to_have_count(1)
    assert await page.evaluate("() => sessionStorage.length") == 1  # the new key, not the old
    async with http.get(gw.url + "/v1/api-keys", headers=bearer(rotated)) as resp:
        assert resp.status == 200
    status, _ = await status_within(http, gw.url + "/v1/api-keys", dashboard.admin, 401, 1.0)
    assert status == 401
    await page.reload()  # still signed in, with the new key
    await expect(
        page.locator("#keys-body tr.status-active").filter(has_text="Ops admin")
    ).to_have_count(1)
    tab.assert_clean()


# -- keys table: paging, filter, rotation due, account, audit ---------------------------------


async def test_paging_and_the_live_test_filter(dashboard):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    for n in range(6):
        await new_key(gw.service, dashboard.account, name=f"live {n}", mode="live")
        await new_key(gw.service, dashboard.account, name=f"test {n}", mode="test")
    await tab.sign_in_admin(dashboard.admin)
    rows = page.locator("#keys-body tr")
    await expect(rows).to_have_count(10)
    first_page = await page.locator("#keys-body .key-name").all_inner_texts()
    await expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    await page.get_by_role("button", name="Next page").click()
    await expect(rows).to_have_count(3)
    second_page = await page.locator("#keys-body .key-name").all_inner_texts()
    assert set(first_page).isdisjoint(second_page)
    assert sorted(first_page + second_page) == sorted(
        ["Ops admin"] + [f"live {n}" for n in range(6)] + [f"test {n}" for n in range(6)]
    )
    await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    await page.get_by_role("button", name="Previous page").click()
    await expect(rows).to_have_count(10)
    assert await page.locator("#keys-body .key-name").all_inner_texts() == first_page

    await page.get_by_role("radio", name="Test").check()
    await expect(rows).to_have_count(6)
    assert set(await page.locator("#keys-body td[data-label='Mode']").all_inner_texts()) == {"test"}
    await page.get_by_role("radio", name="Live").check()
    await expect(rows).to_have_count(7)
    assert set(await page.locator("#keys-body td[data-label='Mode']").all_inner_texts()) == {"live"}
    await page.get_by_label("Keys per page").select_option("25")
    await page.get_by_role("radio", name="All").check()
    await expect(rows).to_have_count(13)
    await tab.shot("all-keys")
    tab.assert_clean()


async def test_rotation_due_badge_account_plan_and_audit_trail(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    old_id, _ = await new_key(gw.service, dashboard.account, name="Old key")
    old = await gw.service.get_key(CLI_ACTOR, old_id)
    created = utcnow() - timedelta(days=gw.config.keys.rotation_days + 1)
    await gw.runtime.store.save_key(old.evolve(created_at=isoformat(created)))
    await tab.sign_in_admin(dashboard.admin)
    await expect(tab.row("Old key").locator(".badge.due")).to_have_text("rotation due")
    await expect(tab.row("Ops admin").locator(".badge.due")).to_have_count(0)

    await page.get_by_role("link", name="Account").click()
    account = page.locator("#account-details")
    await expect(account).to_contain_text("Acme Corp")
    await expect(account).to_contain_text("pro")
    await expect(account).to_contain_text("ops@acme.test")
    async with http.get(gw.url + "/v1/account", headers=bearer(dashboard.admin)) as resp:
        limit = resp.headers.get("X-RateLimit-Limit")
    limits = page.locator("#account-limits")
    await expect(limits).to_contain_text("every 90 days")
    assert limit == "1000000"  # the pro plan's, as the gateway applies it to this key
    await expect(limits).to_contain_text("Plan rate limit, per key1,000,000 requests per minute")
    await expect(page.locator("#account-key")).to_contain_text("Ops admin")
    await tab.shot("account")

    # Create and revoke through the page; the trail names both, by the admin key.
    await page.get_by_role("link", name="Keys").click()
    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await create.get_by_label("Name").fill("Audited")
    await create.get_by_role("button", name="Create key").click()
    await page.get_by_role("button", name="I have stored the key").click()
    await tab.row("Audited").get_by_role("button", name="Revoke Audited").click()
    await page.get_by_role("button", name="Revoke key").click()
    await expect(tab.row("Audited").locator(".badge.revoked")).to_have_count(1)
    audited_id = await row_key_id(tab, "Audited")
    await page.get_by_role("link", name="Audit trail").click()
    audit = page.locator("#audit-body tr")
    await expect(audit.first).to_contain_text("key.revoke")
    first = await audit.nth(0).locator("td").all_inner_texts()
    second = await audit.nth(1).locator("td").all_inner_texts()
    assert first[1:4] == ["key.revoke", audited_id, dashboard.admin_id]
    assert second[1:4] == ["key.create", audited_id, dashboard.admin_id]
    assert "name: Audited" in second[4]
    await expect(page.locator("#audit-body")).to_contain_text(old_id)
    await tab.shot("audit")
    tab.assert_clean()


# -- keyboard, focus, small and large screens ------------------------------------------------

FOCUSED = """() => {
    const e = document.activeElement;
    if (!e || e === document.body) return null;
    const style = getComputedStyle(e);
    return {
        name: e.getAttribute('aria-label') || (e.labels && e.labels[0] && e.labels[0].textContent.trim())
            || e.textContent.trim() || e.id,
        id: e.id, tag: e.tagName, outline: style.outlineStyle, width: parseFloat(style.outlineWidth),
    };
}"""


async def assert_tables_fit(page: Page) -> None:
    """No table is wider than its box: every column, and so every action, is in view."""
    overflowing = await page.evaluate(
        "() => [...document.querySelectorAll('.table-wrap')]"
        ".filter(w => w.offsetParent !== null && w.scrollWidth > w.clientWidth)"
        ".map(w => [w.parentElement.id, w.scrollWidth, w.clientWidth, innerWidth])"
    )
    assert overflowing == []


async def tab_through(page: Page, presses: int) -> list[dict]:
    seen = []
    for _ in range(presses):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(FOCUSED)
        if focused is not None:
            seen.append(focused)
    return seen


async def test_keyboard_alone_reaches_and_runs_every_action(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    _, worker = await new_key(gw.service, dashboard.account, name="Worker", permissions=["read"])
    await tab.open()
    await expect(page.get_by_label("API key", exact=True)).to_be_focused()
    await page.keyboard.type(dashboard.admin)
    await page.keyboard.press("Enter")
    await expect(tab.row("Worker")).to_have_count(1)

    seen = await tab_through(page, 30)
    names = [f["name"] for f in seen]
    for action in [
        "Sign out",
        "Keys",
        "Account",
        "Audit trail",
        "Create key",
        "All",
        "Keys per page",
        "Usage of Worker",
        "Rotate Worker",
        "Revoke Worker",
        "Usage of Ops admin",
        "Rotate Ops admin",
        "Revoke Ops admin",
    ]:
        assert action in names, (action, names)
    # Focus is always visible: a solid outline of at least 2 px.
    for focused in seen:
        assert focused["outline"] != "none" and focused["width"] >= 2, focused

    # Create a key with the keyboard only.
    await page.get_by_role("button", name="Create key").focus()
    await page.keyboard.press("Enter")
    create = page.get_by_role("dialog", name="Create an API key")
    await expect(create.get_by_label("Name")).to_be_focused()
    await page.keyboard.type("Typed")
    inside = await tab_through(page, 25)
    inside_names = {f["name"] for f in inside}
    for control in ["Live", "read", "write", "webhook", "admin (manages keys)",
                    "Other permissions, comma-separated", "Cancel", "Create key"]:  # fmt: skip
        assert control in inside_names, (control, inside_names)
    await create.get_by_role("button", name="Create key").focus()
    await page.keyboard.press("Enter")
    shown = page.get_by_role("dialog", name="Your new API key")
    await expect(shown.get_by_role("button", name="Copy")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(shown.get_by_role("button", name="I have stored the key")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(shown).to_be_hidden()
    await expect(tab.row("Typed")).to_have_count(1)

    # Rotate with Enter, then Escape out of a revoke confirmation: nothing is revoked.
    await tab.row("Worker").get_by_role("button", name="Rotate Worker").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Grace period for the current key")).to_be_focused()
    await page.keyboard.press("Control+a")
    await page.keyboard.type("0s")
    await page.keyboard.press("Enter")
    await expect(shown).to_be_visible()
    await tab.shot("rotated-by-keyboard", mask=[shown.locator("#secret-value")])
    await assert_tables_fit(page)  # four keys, one expired by the rotation, at 1280 px
    await page.keyboard.press("Escape")
    await expect(shown).to_be_hidden()
    await expect(page.locator("#secret-value")).to_have_value("")  # cleared on the close event
    status, _ = await status_within(http, gw.url + "/v1/users/1", worker, 401, 1.0)
    assert status == 401
    revoke_button = tab.row("Ops admin").get_by_role("button", name="Revoke Ops admin")
    await revoke_button.focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog", name="Revoke key Ops admin?")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(revoke_button).to_be_focused()
    async with http.get(gw.url + "/v1/account", headers=bearer(dashboard.admin)) as resp:
        assert resp.status == 200

    # The usage page and the other tabs by keyboard.
    await tab.row("Typed").get_by_role("link", name="Usage of Typed").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#usage-title")).to_contain_text("Typed")
    await chart_totals(page)
    names = [f["name"] for f in await tab_through(page, 12)]
    assert "Back to keys" in names and "Daily numbers" in names
    tab.assert_clean()


async def test_readable_on_a_phone_and_a_wide_screen(dashboard):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await new_key(
        gw.service,
        dashboard.account,
        name="Nightly export to the data warehouse (production)",
        permissions=["read", "reports:read", "exports:*"],
        expires_at=isoformat(utcnow() + timedelta(days=30)),
    )
    await new_key(gw.service, dashboard.account, name="Sandbox", mode="test", permissions=["write"])
    await tab.sign_in_admin(dashboard.admin)
    for width in (360, 1440):
        await page.set_viewport_size({"width": width, "height": 900})
        await page.goto(gw.url + "/dashboard#keys")
        await looks_right_at(tab, width)
    tab.assert_clean()


async def looks_right_at(tab: Tab, width: int) -> None:
    page = tab.page
    await expect(page.locator("#keys-body tr")).to_have_count(3)

    async def fits() -> None:
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        await assert_tables_fit(page)
        for box in await page.locator("button:visible, a:visible, input:visible").all():
            rect = await box.bounding_box()
            if rect is not None:
                assert rect["x"] >= 0 and rect["x"] + rect["width"] <= width + 0.5

    await fits()
    display = await page.evaluate(
        "() => getComputedStyle(document.querySelector('#keys-body tr')).display"
    )
    assert display == ("table-row" if width > 760 else "block")  # narrow: cards of labelled lines
    size = await page.evaluate(
        "() => parseFloat(getComputedStyle(document.querySelector('#keys-body td')).fontSize)"
    )
    assert size >= 14
    await tab.shot(f"{width}-keys")

    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await create.get_by_text("Restrictions, rate limit and metadata").click()
    box = await create.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    await tab.shot(f"{width}-create")
    await create.get_by_role("button", name="Cancel").click()

    await tab.row("Sandbox").get_by_role("link", name="Usage of Sandbox").click()
    chart = await page.locator("#usage-chart").bounding_box()
    await chart_totals(page)
    assert 0 < chart["width"] <= width
    await page.get_by_text("Daily numbers").click()
    await expect(page.locator("#usage-body tr")).to_have_count(30)
    await fits()
    await tab.shot(f"{width}-usage")
    await page.get_by_role("link", name="Audit trail").click()
    await expect(page.locator("#audit-body tr").first).to_be_visible()
    await fits()
    await tab.shot(f"{width}-audit")


# -- alerts and webhooks -----------------------------------------------------------------


async def test_alerts_panel_says_what_happened_and_revokes_or_rotates_in_one_click(dashboard, http):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    billing_id, billing = await new_key(gw.service, dashboard.account, name="Billing worker")
    export_id, _ = await new_key(gw.service, dashboard.account, name="Nightly export")
    emit = gw.service.events.emit
    await emit("alert.denied_burst", account_id=dashboard.account, mode="live",
               data={"key_id": billing_id, "count": 25, "codes": {"ip_not_allowed": 25},
                     "ips": ["203.0.113.9"], "window": 300})  # fmt: skip
    await emit("alert.rotation_due", account_id=dashboard.account, mode="live",
               data={"key_id": export_id, "created_at": "2026-01-02T03:04:05Z"})  # fmt: skip
    await emit("alert.new_network", account_id=dashboard.account, mode="live",
               data={"key_id": billing_id, "network": "198.51.100.0/24",
                     "ip": "198.51.100.7"})  # fmt: skip
    await tab.sign_in_admin(dashboard.admin)
    await page.get_by_role("link", name="Alerts").click()
    rows = page.locator("#alerts-body tr")
    await expect(rows).to_have_count(3)
    # newest first, saying what happened to which key
    await expect(rows.nth(0)).to_contain_text("New network")
    await expect(rows.nth(0)).to_contain_text("Billing worker")
    await expect(rows.nth(0)).to_contain_text("198.51.100.7")
    await expect(rows.nth(1)).to_contain_text("Rotation due")
    await expect(rows.nth(1)).to_contain_text("Nightly export")
    await expect(rows.nth(2)).to_contain_text("Burst of refusals")
    await expect(rows.nth(2)).to_contain_text("ip_not_allowed")
    await tab.shot("1-alerts")

    await rows.nth(0).get_by_role("button", name="Revoke Billing worker").click()
    revoke = page.get_by_role("dialog", name=re.compile("^Revoke key"))
    await revoke.get_by_role("button", name="Revoke key").click()
    await expect(page.locator("#flash")).to_contain_text("revoked")
    await expect(rows.nth(0).get_by_role("button", name="Revoke Billing worker")).to_have_count(0)
    await expect(rows.nth(0)).to_contain_text("revoked")
    status, body = await status_within(http, gw.url + "/v1/users/1", billing, 401, 2.0)
    assert (status, body["error"]["code"]) == (401, "revoked_api_key")

    await rows.nth(1).get_by_role("button", name="Rotate Nightly export").click()
    rotate = page.get_by_role("dialog", name=re.compile("^Rotate key"))
    await rotate.get_by_role("button", name="Rotate key").click()
    shown = page.get_by_role("dialog", name="Your new API key")
    await expect(shown).to_be_visible()
    assert SECRET.match(await shown.get_by_label(re.compile("^Secret key for")).input_value())
    await tab.shot("2-rotated-from-an-alert", mask=[shown.locator("input")])
    await shown.get_by_role("button", name="I have stored the key").click()
    listed = await api_get(http, gw, dashboard.admin, f"/api-keys/{export_id}")
    assert listed["data"]["rotated_to"]
    tab.assert_clean()


class HookReceiver:
    """A webhook receiver that verifies every delivery with `standardwebhooks`."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.received: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(self.secret or "whsec_AAAA").verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.received.append({"verified": False})
            return web.Response(status=400)
        self.received.append({"verified": True, "type": payload["type"]})
        return web.Response(status=204)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}/hook"


@in_module_loop
async def hook_receiver() -> AsyncIterator[HookReceiver]:
    receiver = HookReceiver()
    yield receiver
    if receiver.server is not None:
        await receiver.server.close()


async def test_webhook_endpoints_created_tested_disabled_and_deleted(dashboard, http,
                                                                      hook_receiver):  # fmt: skip
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    url = await hook_receiver.start()
    await tab.sign_in_admin(dashboard.admin)
    await page.get_by_role("link", name="Webhooks").click()
    await expect(page.locator("#webhooks-empty")).to_be_visible()

    form = page.locator("#webhook-form")
    await form.get_by_label("Endpoint URL").fill("ftp://example.com/hook")
    await form.get_by_role("button", name="Add endpoint").click()
    await expect(page.locator("#err-url")).to_contain_text("http(s)://")
    await tab.shot("1-refused-url")

    await form.get_by_label("Endpoint URL").fill(url)
    await form.get_by_label("Description (optional)").fill("ops pager")
    await form.get_by_role("button", name="Add endpoint").click()
    shown = page.get_by_role("dialog", name="Your endpoint's signing secret")
    await expect(shown).to_be_visible()
    await expect(shown).to_contain_text("shown only once")
    secret = await shown.get_by_label("Signing secret").input_value()
    assert secret.startswith("whsec_")
    await tab.shot("2-secret-shown-once", mask=[shown.locator("input")])
    await shown.get_by_role("button", name="I have stored the secret").click()
    await expect(page.locator("#whsecret-value")).to_have_value("")
    assert secret not in await page.content()
    hook_receiver.secret = secret

    row = page.locator("#webhooks-body tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text(url)
    await expect(row).to_contain_text("enabled")

    await row.get_by_role("button", name=f"Send a test event to {url}").click()
    await expect(page.locator("#flash")).to_contain_text("test event")
    deliveries = page.locator("#deliveries-body tr")
    await expect(deliveries).to_have_count(1)
    await expect(deliveries.first).to_contain_text("webhook.test")
    deadline = time.monotonic() + 10
    while "delivered" not in await deliveries.first.inner_text():
        assert time.monotonic() < deadline, await deliveries.first.inner_text()
        await row.get_by_role("button", name=f"Deliveries to {url}").click()
        await page.wait_for_timeout(200)
    await expect(deliveries.first).to_contain_text("204")
    assert hook_receiver.received == [{"verified": True, "type": "webhook.test"}]
    await tab.shot("3-delivered")

    await row.get_by_role("button", name=f"Disable {url}").click()
    await expect(row).to_contain_text("disabled")
    listed = await api_get(http, gw, dashboard.admin, "/webhook-endpoints")
    assert listed["data"][0]["disabled"] is True
    await tab.shot("4-disabled")

    await page.set_viewport_size({"width": 360, "height": 900})  # a phone
    await expect(row).to_be_visible()
    await assert_tables_fit(page)
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    await tab.shot("5-phone")
    await page.get_by_role("link", name="Alerts").click()
    await page.get_by_role("link", name="Webhooks").click()

    await row.get_by_role("button", name=f"Delete {url}").click()
    await expect(page.locator("#webhooks-empty")).to_be_visible()
    assert (await api_get(http, gw, dashboard.admin, "/webhook-endpoints"))["data"] == []
    tab.assert_clean(400)


# -- credits and quota (SPEC §16) --------------------------------------------------------


async def test_credits_in_the_table_the_create_dialog_the_usage_cards_and_their_dialog(
    dashboard, http
):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await tab.sign_in_admin(dashboard.admin)
    await expect(page.get_by_role("columnheader", name="Credits")).to_be_visible()
    await expect(tab.row("Ops admin").locator('[data-label="Credits"]')).to_have_text("\u2014")

    # A bad balance is refused by the API, and said beside its field.
    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await create.get_by_label("Name").fill("Metered")
    await create.get_by_text("Credits (metered key)").click()
    await create.get_by_label("Credits to start with (optional)").fill("lots")
    status, body = await submit_create(page, create)
    assert (status, body["error"]["details"]) == (400, {"field": "credits.remaining"})
    await expect(page.locator("#err-credits")).to_contain_text("credits.remaining must be")
    await expect(create.get_by_label("Credits to start with (optional)")).to_have_attribute(
        "aria-invalid", "true"
    )

    # Create with 500 credits refilled to 1000 each month.
    await create.get_by_label("Credits to start with (optional)").fill("500")
    await create.get_by_label("Refill to (optional)").fill("1000")
    await expect(create.get_by_label("Refilled")).to_have_value("month")
    status, body = await submit_create(page, create)
    assert status == 201, body
    key_id = body["data"]["id"]
    assert body["data"]["credits"] == {
        "remaining": 500,
        "refill": {"amount": 1000, "interval": "month"},
    }
    await page.get_by_role("button", name="I have stored the key").click()
    await expect(tab.row("Metered").locator('[data-label="Credits"]')).to_have_text(
        "500 / 1,000 per month"
    )
    await tab.shot("1-credits-column")

    # Requests spend the balance and the plan's quota; the usage cards show both.
    spent = await gw.service.balances.spend(
        dashboard.account, "live", Quota(100000, "month"), [(key_id, 1)] * 12
    )
    assert all(s.allowed for s in spent)
    await page.get_by_role("link", name="Usage of Metered").click()
    await expect(page.locator("#usage-quota-figure")).to_have_text("12 of 100,000")
    usage = await api_get(http, gw, dashboard.admin, f"/api-keys/{key_id}/usage")
    resets = usage["data"]["quota"]["resets_at"]
    assert resets.endswith("-01T00:00:00Z")
    year = resets[:4]
    await expect(page.locator("#usage-quota-note")).to_have_text(
        re.compile(
            rf"^calls this month by all of the account's live keys; resets 1 \w+ {year}, "
            r"00:00 UTC$"
        )
    )
    assert await page.locator("#usage-quota-bar").evaluate("b => [b.value, b.max]") == [12, 100000]
    await expect(page.locator("#usage-credits-figure")).to_have_text("488 left")
    await expect(page.locator("#usage-credits-note")).to_have_text("Refilled to 1,000 each month.")
    await expect(page.locator("#usage-chart")).to_be_visible()
    await tab.shot("2-usage-cards")

    # Top up to 2000 and stop refilling.
    await page.get_by_role("button", name="Change credits").click()
    dialog = page.get_by_role("dialog", name="Credits of Metered")
    await expect(dialog).to_contain_text("Now: 488 left, refilled to 1,000 each month.")
    await expect(dialog.get_by_label("Refill to")).to_have_value("1000")
    await dialog.get_by_label("Set remaining credits to").fill("2000")
    await dialog.get_by_label("Refill to").fill("")
    await tab.shot("3-credits-dialog")
    await dialog.get_by_role("button", name="Save credits").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("status").filter(has_text="saved")).to_have_text(
        "Credits of \u201cMetered\u201d saved."
    )
    await expect(page.locator("#usage-credits-figure")).to_have_text("2,000 left")
    await expect(page.locator("#usage-credits-note")).to_have_text("No refill.")
    shown = await api_get(http, gw, dashboard.admin, f"/api-keys/{key_id}")
    assert shown["data"]["credits"] == {"remaining": 2000, "refill": None}

    # Only a refill: the balance is kept, whatever was spent meanwhile.
    await gw.service.balances.spend(dashboard.account, "live", None, [(key_id, 1)] * 5)
    await page.get_by_role("button", name="Change credits").click()
    await dialog.get_by_label("Refill to").fill("50")
    await dialog.get_by_label("Refilled").select_option("day")
    await dialog.get_by_role("button", name="Save credits").click()
    await expect(page.locator("#usage-credits-figure")).to_have_text("1,995 left")
    await expect(page.locator("#usage-credits-note")).to_have_text("Refilled to 50 each day.")

    # Stop metering: the card and the table say so, and so does the API.
    await page.get_by_role("button", name="Change credits").click()
    await dialog.get_by_label("Stop metering this key by credits").check()
    await dialog.get_by_role("button", name="Save credits").click()
    await expect(page.locator("#usage-credits-figure")).to_have_text("Not metered")
    await expect(page.get_by_role("button", name="Add credits")).to_be_visible()
    shown = await api_get(http, gw, dashboard.admin, f"/api-keys/{key_id}")
    assert shown["data"]["credits"] is None
    await page.get_by_role("button", name="Back to keys").click()
    await expect(tab.row("Metered").locator('[data-label="Credits"]')).to_have_text("\u2014")
    tab.assert_clean(400)

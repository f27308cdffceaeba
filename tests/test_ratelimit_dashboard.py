"""Several rate-limit windows in the dashboard, in the real headless Chromium.

The browser, the servers and the signed-in tab are those of ``test_dashboard``
(its fixtures, run in this module's own event loop).
"""

from __future__ import annotations

import pytest
import test_dashboard
from conftest import new_key
from playwright.async_api import expect

from gateway.keys.service import CLI as CLI_ACTOR

# the dashboard tests' fixtures, by name
browser = test_dashboard.browser
redis_client = test_dashboard.redis_client
upstream = test_dashboard.upstream
http = test_dashboard.http
start_gateway = test_dashboard.start_gateway
dashboard = test_dashboard.dashboard
submit_create = test_dashboard.submit_create
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_a_key_with_several_windows_is_created_and_shown(dashboard):
    tab, gw, page = dashboard.tab, dashboard.gw, dashboard.tab.page
    await tab.sign_in_admin(dashboard.admin)
    await page.get_by_role("button", name="Create key").click()
    create = page.get_by_role("dialog", name="Create an API key")
    await create.get_by_text("Restrictions, rate limit and metadata").click()
    await create.get_by_label("Name").fill("Batch job")
    rate = create.get_by_label("Rate limit (optional)")
    await rate.fill("10/second, 10/second")
    status, body = await submit_create(page, create)
    assert status == 400 and body["error"]["details"]["field"] == "rate_limit"
    await expect(create.locator("#err-rate_limit")).to_have_text(body["error"]["message"])
    await rate.fill("10/second, 1000/hour")
    status, body = await submit_create(page, create)
    assert status == 201, body
    assert body["data"]["rate_limit"] == ["10/second", "1000/hour"]
    stored = await gw.service.get_key(CLI_ACTOR, body["data"]["id"])
    assert stored.rate_limit == ("10/second", "1000/hour")
    await page.get_by_role("button", name="I have stored the key").click()
    await tab.row("Batch job").get_by_role("link", name="Usage of Batch job").click()
    await expect(page.locator("#usage-key")).to_contain_text(
        "Rate limit10 requests per second, 1,000 requests per hour"
    )
    await tab.shot("usage")
    tab.assert_clean(400)


async def test_the_account_page_shows_every_window_of_the_key(dashboard):
    tab, gw = dashboard.tab, dashboard.gw
    _, secret = await new_key(
        gw.service,
        dashboard.account,
        name="Windowed admin",
        permissions=["admin"],
        rate_limit=["600/minute", "20/second"],
    )
    await tab.sign_in(secret)
    await tab.page.get_by_role("link", name="Account").click()
    limits = tab.page.locator("#account-limits")
    await expect(limits).to_contain_text(
        "This key's own rate limit600 requests per minute, 20 requests per second"
    )
    await tab.shot("account")
    tab.assert_clean()

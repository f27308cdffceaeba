"""Rate limits seen from outside: 429s, headers, plans, routes, modes, several processes.

Every request here goes through the real gateway to the real echo upstream.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import bearer, new_account, new_key, service_for, statuses_across, upstream_url

from gateway.config import parse_config

RATE_HEADERS = (
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)
POLICY = re.compile(r'^"(?P<name>[^"]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
STATE = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def routes(upstream, **extra_route):
    return [
        {"name": "items", "match": "/items", "upstream": upstream_url(upstream)},
        {"name": "search", "match": "/search", "upstream": upstream_url(upstream),
         "rate_limit": "3/second"},
        {"name": "open", "match": "/open", "upstream": upstream_url(upstream), "auth": "none"},
        *([extra_route] if extra_route else []),
    ]  # fmt: skip


def policies(headers) -> dict[str, tuple[int, int]]:
    """``RateLimit-Policy`` (every limit that applies) as {name: (q, w)}."""
    out = {}
    for item in headers["RateLimit-Policy"].split(", "):
        policy = POLICY.match(item)
        assert policy, headers["RateLimit-Policy"]
        out[policy["name"]] = (int(policy["q"]), int(policy["w"]))
    return out


def parsed(headers) -> dict:
    """The limit ``RateLimit`` describes (the one closest to running out), with its policy."""
    state = STATE.match(headers["RateLimit"])
    assert state, headers["RateLimit"]
    listed = policies(headers)
    assert state["name"] in listed, (headers["RateLimit-Policy"], headers["RateLimit"])
    q, w = listed[state["name"]]
    out = {
        "name": state["name"],
        "q": q,
        "w": w,
        "r": int(state["r"]),
        "t": int(state["t"]),
    }
    # the X- headers say the same
    assert int(headers["X-RateLimit-Limit"]) == out["q"]
    assert int(headers["X-RateLimit-Remaining"]) == out["r"]
    assert int(headers["X-RateLimit-Reset"]) == out["t"]
    return out


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(
        base_config(
            plans={"default": {"rate_limit": "5/minute"}, "pro": {"rate_limit": "1000/minute"}},
            routes=routes(upstream),
        )
    )


async def test_over_the_plan_limit_answers_429_with_retry_after(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    seen = []
    for _ in range(5):
        async with http.get(gw.url + "/items/1", headers=bearer(secret)) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["path"] == "/items/1"  # it reached the upstream
            seen.append(parsed(resp.headers))
    assert [s["r"] for s in seen] == [4, 3, 2, 1, 0]
    assert all(s["name"] == "default" and s["q"] == 5 and s["w"] == 60 for s in seen)
    assert all(0 < s["t"] <= 60 for s in seen)
    async with http.get(gw.url + "/items/1", headers=bearer(secret)) as resp:
        assert resp.status == 429
        body = await resp.json()
        retry_after = int(resp.headers["Retry-After"])
        state = parsed(resp.headers)
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]
    details = body["error"]["details"]
    assert details["limit"] == "5/minute" and details["scope"] == "plan"
    assert details["plan"] == "default" and details["retry_after"] == retry_after
    assert 1 <= retry_after <= 60
    assert state["r"] == 0 and state["t"] == retry_after


async def test_plans_and_a_keys_own_limit(gw, http):
    pro = await new_account(gw.service, plan="pro")
    _, pro_secret = await new_key(gw.service, pro)
    _, own_secret = await new_key(gw.service, pro, rate_limit="2/hour")
    async with http.get(gw.url + "/items", headers=bearer(pro_secret)) as resp:
        assert parsed(resp.headers)["q"] == 1000
    statuses = []
    for _ in range(3):
        async with http.get(gw.url + "/items", headers=bearer(own_secret)) as resp:
            statuses.append(resp.status)
            state = parsed(resp.headers)
    assert statuses == [200, 200, 429]
    assert state["name"] == "key" and state["q"] == 2 and state["w"] == 3600


async def test_a_routes_limit_applies_per_key_on_top_of_the_plan(gw, http):
    pro = await new_account(gw.service, plan="pro")
    _, first = await new_key(gw.service, pro)
    _, second = await new_key(gw.service, pro)
    statuses = []
    for _ in range(4):
        async with http.get(gw.url + "/search?q=x", headers=bearer(first)) as resp:
            statuses.append(resp.status)
            state = parsed(resp.headers)
            body = await resp.json()
    assert statuses == [200, 200, 200, 429]
    assert state["name"] == "route-search" and state["q"] == 3 and state["w"] == 1
    assert body["error"]["details"]["route"] == "search"
    assert resp.headers["Retry-After"] == "1"
    # the same key elsewhere, and another key on this route, are not held back
    async with http.get(gw.url + "/items", headers=bearer(first)) as resp:
        assert resp.status == 200 and parsed(resp.headers)["name"] == "pro"
    async with http.get(gw.url + "/search", headers=bearer(second)) as resp:
        assert resp.status == 200
    await asyncio.sleep(1.05)
    async with http.get(gw.url + "/search", headers=bearer(first)) as resp:
        assert resp.status == 200


async def test_live_and_test_keys_of_one_account_are_counted_apart(gw, http):
    account = await new_account(gw.service)
    _, live = await new_key(gw.service, account, mode="live")
    _, test = await new_key(gw.service, account, mode="test")
    for secret in (live, test):
        statuses = []
        for _ in range(6):
            async with http.get(gw.url + "/items", headers=bearer(secret)) as resp:
                statuses.append(resp.status)
        assert statuses == [200] * 5 + [429]


async def test_refusals_before_the_limit_do_not_spend_it_and_open_routes_are_unlimited(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, allowed_endpoints=["/items/**"])
    for _ in range(8):
        async with http.get(gw.url + "/search", headers=bearer(secret)) as resp:
            assert resp.status == 403
            assert "RateLimit" not in resp.headers
    for _ in range(8):
        async with http.get(gw.url + "/open", headers=bearer(secret)) as resp:
            assert resp.status == 200 and "RateLimit" not in resp.headers
    async with http.get(gw.url + "/items/a", headers=bearer(secret)) as resp:
        assert resp.status == 200 and parsed(resp.headers)["r"] == 4


async def test_management_endpoints_count_too(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    statuses, remaining = [], []
    for _ in range(6):
        async with http.get(gw.url + "/v1/auth/verify", headers=bearer(secret)) as resp:
            statuses.append(resp.status)
            remaining.append(parsed(resp.headers)["r"])
    assert statuses == [200] * 5 + [429]
    assert remaining == [4, 3, 2, 1, 0, 0]


async def test_an_upstream_failure_still_carries_the_headers(start_gateway, base_config, http):
    gw = await start_gateway(
        base_config(routes=[{"name": "down", "match": "/down", "upstream": "http://127.0.0.1:9"}])
    )
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    async with http.get(gw.url + "/down", headers=bearer(secret)) as resp:
        assert resp.status == 502
        assert parsed(resp.headers)["q"] == 100000


# -- several processes on one Redis -----------------------------------------------------


async def test_two_gateway_processes_share_one_exact_budget(
    gateway_process, base_config, upstream, redis_client
):
    data = base_config(
        plans={"default": {"rate_limit": "40/minute"}},
        routes=routes(upstream),
    )
    service = service_for(redis_client, parse_config(data))
    account = await new_account(service)
    _, secret = await new_key(service, account)
    replicas = [gateway_process(data, name=f"gw{n}") for n in range(2)]
    await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))

    statuses = await statuses_across([r.url for r in replicas], "/items", secret, 100)
    assert statuses.count(200) == 40
    assert statuses.count(429) == 60

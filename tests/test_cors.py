"""Browsers (SPEC §12): preflights answered by the gateway, CORS headers on every answer."""

from __future__ import annotations

import pytest
from conftest import bearer, new_account, new_key, upstream_url

from gateway.checks.cors import CorsPolicy
from gateway.config import parse_config
from gateway.config.loader import ConfigError

APP = "https://app.example.com"


# -- the policy, on its own -------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),  # the default port is the same origin
        ("http://app.example.com", False),  # another scheme
        ("https://app.example.com:8443", False),  # another port
        ("https://a.shop.example.com", True),  # *.example.com: any depth
        ("https://shop.example.com", True),
        ("https://example.com", False),  # never the apex
        ("https://evilexample.com", False),
        ("https://shop.example.com.evil.net", False),
        ("null", False),  # only when listed literally
        ("", False),
    ],
)
def test_origins_match_on_scheme_host_and_port(origin, allowed):
    policy = CorsPolicy(allow_origins=[APP, "https://*.example.com"])
    assert policy.allows_origin(origin) is allowed


def test_a_route_taking_any_method_allows_the_one_a_preflight_asks_for():
    policy = CorsPolicy(allow_origins=[APP])  # no methods: the route takes any
    allowed = policy.preflight(APP, "PURGE", "")
    assert isinstance(allowed, dict)
    assert [m.strip() for m in allowed["Access-Control-Allow-Methods"].split(",")] == [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "PURGE"
    ]  # fmt: skip
    assert "PURGE" not in policy.preflight(APP, "GET", "")["Access-Control-Allow-Methods"]
    limited = CorsPolicy(allow_origins=[APP], methods=frozenset({"GET"}))
    assert not isinstance(limited.preflight(APP, "PURGE", ""), dict)


def test_null_and_star():
    assert CorsPolicy(allow_origins=["null"]).allows_origin("null")
    star = CorsPolicy(allow_origins=["*"])
    assert star.allows_origin("https://anything.test") and not star.allows_origin("null")
    assert star.headers_for("https://x.test")["Access-Control-Allow-Origin"] == "*"


def test_preflight_checks_origin_method_and_every_requested_header():
    policy = CorsPolicy(allow_origins=[APP], methods=frozenset({"GET", "POST"}))
    allowed = policy.preflight(APP, "POST", "authorization, Content-Type")
    assert isinstance(allowed, dict)
    assert allowed["Access-Control-Allow-Origin"] == APP
    assert allowed["Access-Control-Max-Age"] == "600"
    assert allowed["Vary"] == "Origin"
    for refused in (
        policy.preflight("https://other.example.com", "GET", ""),
        policy.preflight(APP, "DELETE", ""),
        policy.preflight(APP, "GET", "Authorization, X-Custom"),
    ):
        assert not isinstance(refused, dict) and refused.code == "cors_not_allowed"


@pytest.mark.parametrize(
    ("cors", "error"),
    [
        ({"allow_origins": ["*"], "allow_credentials": True}, "allow_credentials"),
        ({"allow_origins": ["https://app.example.com/path"]}, "no path"),
        ({"allow_origins": ["app.example.com"]}, "is not an origin"),
        ({"allow_origins": ["https://a.*.example.com"]}, "subdomains"),
        ({"allow_origins": []}, "at least one origin"),
    ],
)
def test_check_config_refuses_bad_cors(cors, error):
    data = {"routes": [{"name": "api", "match": "/api", "upstream": "http://x", "cors": cors}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(e.startswith("routes[0].cors") and error in e for e in caught.value.errors), (
        caught.value.errors
    )


# -- through the gateway ----------------------------------------------------------------


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(
        base_config(
            routes=[
                {
                    "name": "api",
                    "match": "/api",
                    "upstream": upstream_url(upstream),
                    "methods": ["GET", "POST"],
                    "permissions": {"GET": "read", "POST": "write"},
                    "cors": {"allow_origins": [APP], "expose_headers": ["X-Custom"]},
                },
                {
                    "name": "slow",
                    "match": "/limited",
                    "upstream": upstream_url(upstream),
                    "rate_limit": "1/minute",
                    "cors": {"allow_origins": ["*"]},
                },
                {"name": "plain", "match": "/plain", "upstream": upstream_url(upstream)},
                {
                    "name": "respond",  # the demo upstream's answer with the headers asked for
                    "match": "/respond",
                    "upstream": upstream_url(upstream),
                    "cors": {"allow_origins": [APP]},
                },
            ],
            management={"cors": {"allow_origins": [APP]}},
        )
    )


@pytest.fixture
async def key(gw):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    return secret


def preflight_headers(method="GET", headers="Authorization", origin=APP):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def cors_headers_of(resp) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


async def test_an_allowed_preflight_is_answered_without_a_key_and_never_forwarded(gw, http):
    async with http.options(gw.url + "/api/things", headers=preflight_headers("POST")) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert resp.headers["Access-Control-Max-Age"] == "600"
        assert resp.headers["Vary"] == "Origin"
        assert "X-Request-Id" in resp.headers
        assert await resp.read() == b""  # the gateway's answer, not the upstream's echo


async def test_a_refused_preflight_is_403_with_no_cors_headers(gw, http):
    for headers in (
        preflight_headers(origin="https://evil.example.net"),
        preflight_headers(method="DELETE"),  # the route does not allow it
        preflight_headers(headers="Authorization, X-Secret"),
    ):
        async with http.options(gw.url + "/api/things", headers=headers) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "cors_not_allowed"
            assert cors_headers_of(resp) == {}


async def test_every_answer_to_a_listed_origin_carries_the_cors_headers(gw, http, key):
    origin = {"Origin": APP}
    async with http.get(gw.url + "/api/things", headers=origin) as resp:  # no key: 401
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        exposed = resp.headers["Access-Control-Expose-Headers"]
        for name in ("X-Request-Id", "Retry-After", "RateLimit", "X-Credits-Remaining", "X-Custom"):
            assert name in exposed
    async with http.post(gw.url + "/api/things", headers={**origin, **bearer(key)}) as resp:
        assert resp.status == 403  # a read key cannot POST
        assert resp.headers["Access-Control-Allow-Origin"] == APP
    async with http.get(gw.url + "/api/things", headers={**origin, **bearer(key)}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert resp.headers["Vary"] == "Origin"


@pytest.mark.parametrize(
    ("upstream_vary", "expected"),
    [
        (["Accept-Encoding"], ["Accept-Encoding", "Origin"]),
        (["Accept-Encoding, Origin"], ["Accept-Encoding, Origin"]),
        ([], ["Origin"]),
    ],
)
async def test_origin_joins_the_upstreams_vary_never_replaces_it(
    gw, http, key, upstream_vary, expected
):
    """A shared cache keyed on the upstream's Vary must still tell the encodings apart."""
    query = "&".join(f"header=Vary:{value}" for value in upstream_vary)
    async with http.get(
        gw.url + f"/respond?{query}", headers={"Origin": APP, **bearer(key)}
    ) as resp:
        assert resp.status == 200
        assert resp.headers.getall("Vary") == expected
        assert resp.headers["Access-Control-Allow-Origin"] == APP


async def test_a_refusal_before_the_route_is_looked_up_carries_the_routes_cors(gw, http):
    """Sizes and the request target are judged before any route: the answer to a listed
    origin carries the CORS headers of the route the path names all the same."""
    async with http.get(gw.url + "/api/" + "x" * 9000, headers={"Origin": APP}) as resp:
        assert resp.status == 414
        assert resp.headers["Access-Control-Allow-Origin"] == APP
    async with http.get(gw.url + "/plain/" + "x" * 9000, headers={"Origin": APP}) as resp:
        assert resp.status == 414  # a route without CORS: none
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_429_can_be_read_by_the_page(gw, http, key):
    headers = {"Origin": "https://any.test", **bearer(key)}
    statuses = []
    for _ in range(2):
        async with http.get(gw.url + "/limited/x", headers=headers) as resp:
            statuses.append(resp.status)
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    assert statuses == [200, 429]


async def test_the_upstreams_own_cors_headers_are_replaced_never_doubled(gw, http, key):
    url = (
        gw.url + "/api/respond?header=Access-Control-Allow-Origin:*"
        "&header=Access-Control-Allow-Credentials:true&header=X-Custom:1"
    )
    async with http.get(url, headers={"Origin": APP, **bearer(key)}) as resp:
        assert resp.status == 200
        assert resp.headers.getall("Access-Control-Allow-Origin") == [APP]
        assert "Access-Control-Allow-Credentials" not in resp.headers
    async with http.get(url, headers={"Origin": "https://unlisted.test", **bearer(key)}) as resp:
        assert cors_headers_of(resp) == {}  # an unlisted origin is served without any


async def test_a_route_without_cors_treats_options_as_any_method(gw, http, key):
    async with http.options(
        gw.url + "/plain/x", headers={**preflight_headers(), **bearer(key)}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["method"] == "OPTIONS"  # forwarded, like any method
        assert cors_headers_of(resp) == {}
    async with http.options(gw.url + "/plain/x", headers=preflight_headers()) as resp:
        assert resp.status == 401  # and authenticated like any method


async def test_the_management_api_answers_browsers_too(gw, http, key):
    async with http.options(gw.url + "/v1/auth/verify", headers=preflight_headers()) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
    async with http.get(gw.url + "/v1/auth/verify", headers={"Origin": APP}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == APP
    async with http.get(gw.url + "/v1/auth/verify", headers={"Origin": APP, **bearer(key)}) as resp:
        assert resp.status == 200 and (await resp.json())["valid"] is True
        assert resp.headers["Access-Control-Allow-Origin"] == APP


async def test_preflights_are_not_counted_against_the_rate_limit(gw, http, key):
    for _ in range(3):
        async with http.options(gw.url + "/limited/x", headers=preflight_headers()) as resp:
            assert resp.status == 204
    async with http.get(gw.url + "/limited/x", headers=bearer(key)) as resp:
        assert resp.status == 200  # the one request of the minute is still there


async def test_the_api_warns_about_a_referrer_pattern_with_a_path(gw, http):
    account = await new_account(gw.service)
    _, admin = await new_key(gw.service, account, permissions=["admin"])
    body = {"name": "browser", "allowed_referrers": ["https://app.example.com/checkout/*"]}
    async with http.post(gw.url + "/v1/api-keys", json=body, headers=bearer(admin)) as resp:
        assert resp.status == 201
        warnings = (await resp.json())["meta"]["warnings"]
    assert len(warnings) == 1 and "allowed_referrers[0]" in warnings[0]
    body = {"name": "host", "allowed_referrers": ["app.example.com", "https://app.example.com/*"]}
    async with http.post(gw.url + "/v1/api-keys", json=body, headers=bearer(admin)) as resp:
        assert resp.status == 201
        assert "warnings" not in (await resp.json())["meta"]

"""Forward authentication (SPEC §11) in-process: every outcome, and parity with the proxy mode.

Each refusal is asked twice, once through the proxy and once through
``/v1/auth/check`` describing the same request in the headers a proxy sends;
the client must see the same status, envelope, ``WWW-Authenticate``,
``Retry-After``, ``Allow`` and ``X-Request-Id`` either way.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from conftest import bearer, new_account, new_key, upstream_url
from http_raw import RawResponse, raw_request
from multidict import CIMultiDict

from gateway.forward_auth import OriginalRequestError, original_method, original_path
from gateway.keys.service import CLI

CHECK = "/v1/auth/check"
STYLES = ("traefik", "nginx", "ingress-nginx", "envoy")
COMPARED = ("WWW-Authenticate", "Retry-After", "Allow", "X-Request-Id", "Content-Type")


def routes(upstream, **extra):
    url = upstream_url(upstream)
    return [
        {
            "name": "users",
            "match": "/v1/users",
            "upstream": url,
            "methods": ["GET", "POST", "DELETE"],
            "permissions": {"GET": "read", "*": "write"},
            **extra,
        },
        {"name": "public", "match": "/public", "upstream": url, "auth": "none"},
    ]


@pytest.fixture
async def gw(start_gateway, base_config, upstream):
    return await start_gateway(base_config(routes=routes(upstream)))


def rid() -> str:
    return "req-" + uuid.uuid4().hex


async def ask(http, gw, method, uri, headers=None, style="traefik"):
    """The same request asked as forward auth, in the header dialect of one proxy."""
    headers = dict(headers or {})
    if style == "traefik":
        headers.update({"X-Forwarded-Method": method, "X-Forwarded-Uri": uri})
        url, own = gw.url + CHECK, "GET"
    elif style == "nginx":
        headers.update({"X-Original-Method": method, "X-Original-URI": uri})
        url, own = gw.url + CHECK, "GET"
    elif style == "ingress-nginx":
        headers.update(
            {"X-Original-Method": method, "X-Original-URL": "https://api.example.com" + uri}
        )
        url, own = gw.url + CHECK, "GET"
    else:  # envoy ext_authz: the original method and path after the prefix
        url, own = gw.url + CHECK + uri, method
    async with http.request(own, url, headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def proxied(http, gw, method, uri, headers=None):
    async with http.request(method, gw.url + uri, headers=headers or {}) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def assert_same_refusal(http, gw, method, uri, headers, code, status):
    headers = {"X-Request-Id": rid(), **headers}
    p_status, p_headers, p_body = await proxied(http, gw, method, uri, headers)
    for style in STYLES:
        f_status, f_headers, f_body = await ask(http, gw, method, uri, headers, style)
        assert (f_status, f_body) == (p_status, p_body), style
        for name in COMPARED:
            assert f_headers.get(name) == p_headers.get(name), (style, name)
    assert p_status == status
    assert f'"code":"{code}"' in p_body.decode()
    assert p_headers["X-Request-Id"] == headers["X-Request-Id"]
    if code != "https_required":  # decided before any route, for every path alike
        # The envelope again in a header, for proxies that cannot relay a body.
        assert json.loads(f_headers["X-Gateway-Error"]) == json.loads(p_body)
    return p_headers


async def test_valid_key_is_200_empty_with_the_identity_the_upstream_would_get(gw, http):
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, permissions=["read"], metadata={"t": 1})
    async with http.get(gw.url + "/v1/users/7", headers=bearer(secret)) as resp:
        upstream_saw = {
            k: v for k, v in (await resp.json())["headers"] if k.startswith("X-Gateway-")
        }
    for style in STYLES:
        status, headers, body = await ask(http, gw, "GET", "/v1/users/7?x=1", bearer(secret), style)
        assert (status, body) == (200, b""), style
        assert {
            k: v for k, v in headers.items() if k.lower().startswith("x-gateway-")
        } == upstream_saw
        assert headers["X-Gateway-Key-Id"] == key_id
        assert headers["X-Gateway-Account-Id"] == account
        assert headers["X-Gateway-Key-Metadata"] == '{"t":1}'
        assert headers["X-Request-Id"].startswith("req_")


async def test_any_method_asks_and_the_request_id_is_kept(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["write"])
    for own in ("GET", "POST", "HEAD", "PUT"):
        given = rid()
        headers = {**bearer(secret), "X-Request-Id": given}
        headers.update({"X-Forwarded-Method": "DELETE", "X-Forwarded-Uri": "/v1/users/1"})
        async with http.request(own, gw.url + CHECK, headers=headers) as resp:
            assert resp.status == 200, own
            assert resp.headers["X-Request-Id"] == given


async def test_missing_malformed_invalid_and_unknown_keys_refuse_as_the_proxy_does(gw, http):
    await assert_same_refusal(http, gw, "GET", "/v1/users", {}, "missing_api_key", 401)
    for header in ("Basic abc", "Bearer", "Bearer a b", "sk_live_x"):
        h = await assert_same_refusal(
            http,
            gw,
            "GET",
            "/v1/users",
            {"Authorization": header},
            "invalid_authorization_header",
            401,
        )
        assert h["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_request"'
    h = await assert_same_refusal(
        http, gw, "GET", "/v1/users", bearer("sk_live_" + "a" * 38), "invalid_api_key", 401
    )
    assert h["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_token"'
    # Well-formed, right checksum, never issued.
    from gateway.keys.format import generate_secret

    await assert_same_refusal(
        http, gw, "GET", "/v1/users", bearer(generate_secret("sk", "live")), "invalid_api_key", 401
    )


async def test_revoked_key_is_refused_within_a_second_of_revocation(gw, http):
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, permissions=["read"])
    assert (await ask(http, gw, "GET", "/v1/users", bearer(secret)))[0] == 200
    await gw.service.revoke_key(CLI, key_id)
    deadline = time.monotonic() + 1.0
    while (await ask(http, gw, "GET", "/v1/users", bearer(secret)))[0] == 200:
        assert time.monotonic() < deadline, "still allowed a second after revocation"
        await asyncio.sleep(0.02)
    await assert_same_refusal(http, gw, "GET", "/v1/users", bearer(secret), "revoked_api_key", 401)


async def test_expired_key_refuses_as_the_proxy_does(gw, http):
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, permissions=["read"])
    record = await gw.runtime.store.get_key(key_id)
    await gw.runtime.store.save_key(record.evolve(expires_at="2020-01-01T00:00:00Z"))
    await assert_same_refusal(http, gw, "GET", "/v1/users", bearer(secret), "expired_api_key", 401)


async def test_permission_is_for_the_original_method(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    assert (await ask(http, gw, "GET", "/v1/users/1", bearer(secret)))[0] == 200
    h = await assert_same_refusal(
        http, gw, "POST", "/v1/users/1", bearer(secret), "insufficient_permissions", 403
    )
    assert h["WWW-Authenticate"] == 'Bearer realm="api", error="insufficient_scope", scope="write"'


async def test_endpoint_restriction_is_matched_on_the_normalised_original_uri(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(
        gw.service, account, permissions=["write"], allowed_endpoints=["GET /v1/users/*"]
    )
    for uri in ("/v1/users/7", "/v1/users/7?q=/secret", "/v1/./users//7", "/v1/users/x/../7"):
        for style in ("traefik", "nginx", "ingress-nginx"):
            assert (await ask(http, gw, "GET", uri, bearer(secret), style))[0] == 200, (uri, style)
    assert (await ask(http, gw, "GET", "/v1/users/7", bearer(secret), "envoy"))[0] == 200
    for method, uri in (
        ("GET", "/v1/users/7/secrets"),
        ("POST", "/v1/users/7"),
        ("GET", "/v1/users"),
    ):
        await assert_same_refusal(
            http, gw, method, uri, bearer(secret), "endpoint_not_allowed", 403
        )


async def test_a_parameter_only_segment_does_not_move_a_uri_off_its_route(gw, http):
    """``/;x/v1/users`` is ``/v1/users`` to a backend that cuts ``;`` parameters (SPEC §6)."""
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    for uri in ("/;x/v1/users/1", "/;/v1/;y/users/1"):
        assert (await ask(http, gw, "GET", uri, bearer(secret)))[0] == 200, uri
        await assert_same_refusal(
            http, gw, "POST", uri, bearer(secret), "insufficient_permissions", 403
        )
        await assert_same_refusal(http, gw, "GET", uri, {}, "missing_api_key", 401)


async def test_the_envoy_form_judges_the_path_after_the_check_path_on_its_own(gw, http):
    """``/v1/auth/check/../x`` describes ``/../x`` (escapes the root: 400), never ``/v1/auth/x``:
    the check is not normalised together with the check path, nor proxied, nor answered by
    another local path."""
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    key = [("Authorization", f"Bearer {secret}")]
    for uri in ("/../v1/users/1", "/x/../../verify", "/../../account", "/../public/x"):
        for method in ("GET", "POST"):  # sent as is: an HTTP client library would resolve the dots
            resp = await raw_request(gw.url, method, CHECK + uri, key)
            assert resp.status == 400, (uri, method, resp.body)
            assert resp.json()["error"]["code"] == "bad_request"
    assert (await raw_request(gw.url, "GET", CHECK + "/v1/x/../users/1", key)).status == 200
    resp = await raw_request(gw.url, "GET", "/v1/auth/x/../check/v1/users/1", key)
    assert resp.status == 400  # the check path itself not as sent: not a description


@pytest.mark.parametrize("method", ["delete", "Delete", "post"])
async def test_a_method_not_in_upper_case_is_refused_as_the_proxy_refuses_it(gw, http, method):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    for style in ("traefik", "nginx"):
        status, _, body = await ask(http, gw, method, "/v1/users/1", bearer(secret), style)
        assert status == 400, (style, body)


async def test_referrer_restriction_reads_the_original_referer(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(
        gw.service, account, permissions=["read"], allowed_referrers=["https://app.example.com/*"]
    )
    ok = {**bearer(secret), "Referer": "https://app.example.com/page"}
    assert (await ask(http, gw, "GET", "/v1/users", ok))[0] == 200
    for bad in ({"Referer": "https://app.example.com.evil.net/"}, {}):
        await assert_same_refusal(
            http, gw, "GET", "/v1/users", {**bearer(secret), **bad}, "referrer_not_allowed", 403
        )


async def test_ip_restriction_believes_x_forwarded_for_only_from_trusted_proxies(
    start_gateway, base_config, upstream, http
):
    trusted = await start_gateway(
        base_config(routes=routes(upstream), server={"trusted_proxies": ["127.0.0.1/32"]})
    )
    untrusted = await start_gateway(base_config(routes=routes(upstream)))
    account = await new_account(trusted.service)
    _, secret = await new_key(
        trusted.service, account, permissions=["read"], allowed_ips=["203.0.113.0/24"]
    )
    client = {**bearer(secret), "X-Forwarded-For": "203.0.113.9"}
    assert (await ask(http, trusted, "GET", "/v1/users", client))[0] == 200
    # The right-most entry that is not a trusted proxy is the client.
    spoofed = {**bearer(secret), "X-Forwarded-For": "203.0.113.9, 198.51.100.4"}
    await assert_same_refusal(http, trusted, "GET", "/v1/users", spoofed, "ip_not_allowed", 403)
    # From an untrusted peer the header changes nothing: the client is 127.0.0.1.
    await assert_same_refusal(http, untrusted, "GET", "/v1/users", client, "ip_not_allowed", 403)


async def test_route_method_and_path_failures_refuse_as_the_proxy_does(gw, http):
    await assert_same_refusal(http, gw, "GET", "/nowhere", {}, "route_not_found", 404)
    await assert_same_refusal(http, gw, "GET", "/v1/usersX", {}, "route_not_found", 404)
    h = await assert_same_refusal(http, gw, "PATCH", "/v1/users/1", {}, "method_not_allowed", 405)
    assert h["Allow"] == "DELETE, GET, HEAD, POST"
    for uri in ("/v1/users/%2e%2e/%2e%2e/%2e%2e/etc", "/v1/users/a%2fb", "/v1/users/a%00"):
        for style in ("traefik", "nginx", "ingress-nginx"):
            status, headers, body = await ask(http, gw, "GET", uri, {}, style)
            assert status == 400, (uri, style)
            assert b'"code":"bad_request"' in body
            assert headers["X-Request-Id"].startswith("req_")


async def test_a_bad_description_of_the_original_request_is_400(gw, http):
    for extra in (
        {"X-Forwarded-Uri": "v1/users"},
        {"X-Forwarded-Uri": "ftp://host/v1/users"},
        {"X-Forwarded-Method": "GE T", "X-Forwarded-Uri": "/v1/users"},
    ):
        async with http.get(gw.url + CHECK, headers=extra) as resp:
            assert resp.status == 400, extra
            assert (await resp.json())["error"]["code"] == "bad_request"
    async with http.get(
        gw.url + CHECK, headers=[("X-Forwarded-Uri", "/public"), ("X-Forwarded-Uri", "/v1/users")]
    ) as resp:
        assert resp.status == 400


async def test_absolute_original_uri_is_read_for_its_path(gw, http):
    status, _, body = await ask(http, gw, "GET", "https://api.example.com/v1/users/1", {})
    assert status == 401 and b"missing_api_key" in body
    status, _, _ = await ask(http, gw, "GET", "https://api.example.com/public/x", {})
    assert status == 200


async def test_auth_none_route_is_allowed_without_identity_even_with_a_bad_header(gw, http):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["admin"])
    for headers in ({}, {"Authorization": "Basic zzz"}, bearer(secret)):
        for style in STYLES:
            status, out, body = await ask(http, gw, "GET", "/public/page", headers, style)
            assert (status, body) == (200, b"")
            assert not [k for k in out if k.lower().startswith("x-gateway-")]
            assert out["X-Request-Id"]


async def test_https_required_reads_the_trusted_proxys_scheme(
    start_gateway, base_config, upstream, http
):
    cfg = dict(require_https=True, trusted_proxies=["127.0.0.1/32"])
    gw = await start_gateway(base_config(routes=routes(upstream), server=cfg))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    https = {**bearer(secret), "X-Forwarded-Proto": "https"}
    assert (await ask(http, gw, "GET", "/v1/users", https))[0] == 200
    await assert_same_refusal(
        http,
        gw,
        "GET",
        "/v1/users",
        {**bearer(secret), "X-Forwarded-Proto": "http"},
        "https_required",
        403,
    )
    other = await start_gateway(
        base_config(routes=routes(upstream), server={**cfg, "trusted_proxies": ["10.9.9.9/32"]})
    )
    await assert_same_refusal(http, other, "GET", "/v1/users", https, "https_required", 403)


async def test_the_check_path_is_not_a_prefix_match_for_lookalikes(gw, http):
    async with http.get(
        gw.url + "/v1/auth/checker", headers={"X-Forwarded-Uri": "/public"}
    ) as resp:
        assert resp.status == 404  # no route, not the check endpoint


async def test_rate_limit_headers_when_allowed_and_429_when_spent(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(base_config(routes=routes(upstream, rate_limit="3/hour")))
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    remaining = []
    for _ in range(2):
        status, headers, _ = await ask(http, gw, "GET", "/v1/users", bearer(secret))
        assert status == 200
        remaining.append(headers["X-RateLimit-Remaining"])
        assert headers["RateLimit-Policy"] and headers["RateLimit"] and headers["X-RateLimit-Reset"]
        assert headers["X-RateLimit-Limit"] == "3"
    assert remaining == ["2", "1"]
    # The proxy and forward auth spend from the same allowance.
    async with http.get(gw.url + "/v1/users", headers=bearer(secret)) as resp:
        assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "0"
    given = rid()
    p_status, p_headers, p_body = await proxied(
        http, gw, "GET", "/v1/users", {**bearer(secret), "X-Request-Id": given}
    )
    for style in STYLES:
        f_status, f_headers, f_body = await ask(
            http, gw, "GET", "/v1/users", {**bearer(secret), "X-Request-Id": given}, style
        )
        assert f_status == p_status == 429
        assert f_headers["X-Request-Id"] == given
        assert "WWW-Authenticate" not in f_headers
        # Retry-After counts down: the same within the second that may tick between the two.
        assert abs(int(f_headers["Retry-After"]) - int(p_headers["Retry-After"])) <= 1
        assert int(f_headers["Retry-After"]) > 3000
        forwarded, direct = json.loads(f_body), json.loads(p_body)
        for body in (forwarded, direct):
            body["error"]["details"].pop("retry_after")
        assert forwarded == direct
        assert forwarded["error"]["code"] == "rate_limit_exceeded"
        assert f_headers["X-RateLimit-Remaining"] == "0"


async def test_decisions_are_counted_in_usage_like_proxied_requests(gw, http):
    account = await new_account(gw.service)
    key_id, secret = await new_key(
        gw.service, account, permissions=["read"], allowed_endpoints=["/v1/users"]
    )
    assert (await ask(http, gw, "GET", "/v1/users", bearer(secret)))[0] == 200
    assert (await ask(http, gw, "GET", "/v1/users", bearer(secret), "envoy"))[0] == 200
    assert (await ask(http, gw, "GET", "/v1/users/9", bearer(secret)))[0] == 403
    await gw.runtime.usage.flush()
    record = await gw.runtime.store.get_key(key_id)
    today = (await gw.service.usage_days(record, 1))[0]
    assert (today["allowed"], today["denied"], today["rate_limited"]) == (2, 1, 0)


def assert_bad_request(response: RawResponse, *context) -> None:
    """400 ``bad_request`` in the JSON envelope, with the request id and X-Gateway-Error."""
    assert response.status == 400, (context, response.status, response.body)
    body = response.json()
    assert body["error"]["code"] == "bad_request", context
    assert body["error"]["type"] == "invalid_request_error"
    assert body["meta"]["request_id"] == response.headers["X-Request-Id"]
    assert json.loads(response.headers["X-Gateway-Error"]) == body


# Two descriptions of the original request that disagree: a client-sent one beside the
# proxy's (SPEC §11). The first named is what a client might add, the second the proxy's.
CONFLICTS = [
    [("X-Forwarded-Uri", "/public/x"), ("X-Original-URI", "/v1/users/7")],
    [("X-Original-URI", "/public/x"), ("X-Forwarded-Uri", "/v1/users/7")],
    [("X-Forwarded-Uri", "/public/x"), ("X-Original-URL", "https://api.example.com/v1/users/7")],
    [("X-Original-URI", "/public/x"), ("X-Original-URL", "https://api.example.com/v1/users/7")],
    [("X-Original-URL", "https://api.example.com/public/x"), ("X-Original-URI", "/v1/users/7")],
    [("X-Forwarded-Uri", "/v1/users/7?a=1"), ("X-Original-URI", "/v1/users/7?a=2")],
    [("X-Forwarded-Method", "GET"), ("X-Original-Method", "DELETE")],
    [("X-Original-Method", "GET"), ("X-Forwarded-Method", "DELETE")],
    [("X-Forwarded-Method", "get"), ("X-Original-Method", "GET")],  # methods are case-sensitive
]


@pytest.mark.parametrize("pair", CONFLICTS, ids=lambda pair: "+".join(n for n, _ in pair))
async def test_two_descriptions_that_disagree_are_400_whatever_their_order(gw, pair):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    for headers in (pair, pair[::-1]):
        for extra in ([], [("Authorization", f"Bearer {secret}")]):
            response = await raw_request(gw.url, "GET", CHECK, [*headers, *extra])
            assert_bad_request(response, headers, extra)


async def test_descriptions_that_agree_are_one_description(gw):
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    key = [("Authorization", f"Bearer {secret}")]
    agreeing = [
        ("X-Forwarded-Uri", "/v1/users/7?a=1"),
        ("X-Original-URI", "/v1/users/7?a=1"),
        ("X-Original-URL", "https://api.example.com/v1/users/7?a=1"),
        ("X-Forwarded-Method", "POST"),
        ("X-Original-Method", "POST"),
    ]
    refused = await raw_request(gw.url, "GET", CHECK, [*agreeing, *key])
    assert (refused.status, refused.json()["error"]["code"]) == (403, "insufficient_permissions")
    reading = [(n, "GET") if n.endswith("Method") else (n, v) for n, v in agreeing]
    allowed = await raw_request(gw.url, "POST", CHECK, [*reading, *key])
    assert (allowed.status, allowed.body) == (200, b"")
    missing = await raw_request(gw.url, "GET", CHECK, reading)
    assert (missing.status, missing.json()["error"]["code"]) == (401, "missing_api_key")


async def test_an_empty_description_is_no_description(gw):
    """nginx sends no header set to ""; a proxy that sends it empty means the same."""
    blank = [(name, "") for name in ("X-Forwarded-Uri", "X-Forwarded-Method", "X-Original-URL")]
    keyless = await raw_request(
        gw.url,
        "GET",
        CHECK,
        [*blank, ("X-Original-URI", "/v1/users/7"), ("X-Original-Method", "GET")],
    )
    assert (keyless.status, keyless.json()["error"]["code"]) == (401, "missing_api_key")
    public = await raw_request(gw.url, "GET", CHECK, [*blank, ("X-Original-URI", "/public/x")])
    assert (public.status, public.body) == (200, b"")
    # Every description empty: the path after /auth/check and the check's own method (Envoy).
    everything = blank + [("X-Original-URI", ""), ("X-Original-Method", "")]
    envoy = await raw_request(gw.url, "PATCH", CHECK + "/v1/users/7", everything)
    assert (envoy.status, envoy.json()["error"]["code"]) == (405, "method_not_allowed")
    assert (await raw_request(gw.url, "GET", CHECK + "/public/x", everything)).status == 200


# URIs HTTP does not allow in a request line (SPEC §6), each naming a public path if cut
# or tidied where the gateway used to, and a key-protected one as a proxy may read it.
UNSAFE = {
    "fragment": "/public/x#/../../v1/users/7",
    "fragment-only": "/v1/users#",
    "space": "/public/a b",
    "tab": "/public/a\tb",
    "utf-8": "/public/\xc3\xa9",  # raw bytes: the request line is sent as latin-1
    "non-utf-8": "/public/\xff",
}


@pytest.mark.parametrize("header", ["X-Forwarded-Uri", "X-Original-URI", "X-Original-URL"])
@pytest.mark.parametrize("uri", UNSAFE.values(), ids=UNSAFE.keys())
async def test_an_unsafe_uri_handed_over_is_400(gw, header, uri):
    value = "https://api.example.com" + uri if header == "X-Original-URL" else uri
    response = await raw_request(gw.url, "GET", CHECK, [(header, value)])
    assert_bad_request(response, header, uri)


@pytest.mark.parametrize("byte", ["\x00", "\x01", "\x1f", "\x7f"], ids=repr)
async def test_a_control_byte_in_a_uri_handed_over_never_passes(gw, byte):
    """aiohttp's parser refuses these bytes in any header before the gateway reads it."""
    response = await raw_request(gw.url, "GET", CHECK, [("X-Forwarded-Uri", f"/public/{byte}x")])
    assert response.status == 400
    if response.headers.get("Content-Type", "").startswith("application/json"):
        assert response.json()["error"]["code"] in ("bad_request", "invalid_request")


def test_the_uri_check_itself_refuses_every_unsafe_character():
    """What a parser may let through still never reaches a decision."""
    controls = [f"/public/{chr(c)}x" for c in (*range(0x20), 0x7F)]
    for uri in (*UNSAFE.values(), *controls, "/public/\udcff", "/public/\u00a0"):
        for name in ("X-Forwarded-Uri", "X-Original-URI"):
            with pytest.raises(OriginalRequestError):
                original_path(CIMultiDict({name: uri}), CHECK, CHECK)


def test_an_absolute_url_must_put_its_path_right_after_the_host():
    """ingress-nginx builds X-Original-URL from the client's Host: ``Host: x?`` must not turn
    the path into ``/``."""
    for url in ("http://x?/v1/users/7", "http://[::1/v1/users", "ftp://x/v1/users"):
        with pytest.raises(OriginalRequestError):
            original_path(CIMultiDict({"X-Original-URL": url}), CHECK, CHECK)
    for url, path in (("https://x", "/"), ("https://x:8443/v1/./users", "/v1/users")):
        assert original_path(CIMultiDict({"X-Original-URL": url}), CHECK, CHECK) == path


def test_a_method_description_is_a_token_and_agrees():
    assert original_method(CIMultiDict(), "PUT") == "PUT"
    assert original_method(CIMultiDict({"X-Original-Method": ""}), "PUT") == "PUT"
    assert original_method(CIMultiDict({"X-Forwarded-Method": "DELETE"}), "GET") == "DELETE"
    for headers in (
        {"X-Forwarded-Method": "GE T"},
        {"X-Original-Method": "GET\x01"},
        {"X-Forwarded-Method": "GET", "X-Original-Method": "POST"},
    ):
        with pytest.raises(OriginalRequestError):
            original_method(CIMultiDict(headers), "GET")

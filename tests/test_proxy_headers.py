"""What the upstream receives and what comes back (SPEC §5): headers, paths, query, bodies."""

from __future__ import annotations

import pytest
from conftest import bearer, new_account, new_key, upstream_url
from http_raw import raw_request

from gateway.demo.upstream import GZIP_BODY


def seen_headers(body: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


@pytest.fixture
async def gw(start_gateway, base_config, upstream, test_upstream):
    up, test_up = upstream_url(upstream), upstream_url(test_upstream)
    return await start_gateway(
        base_config(
            server={"trusted_proxies": ["10.0.0.0/8"]},
            routes=[
                {"name": "api", "match": "/api", "upstream": up, "test_upstream": test_up},
                {"name": "bare", "match": "/bare", "upstream": up, "strip_prefix": True},
                {"name": "fwd", "match": "/fwd", "upstream": up, "forward_authorization": True},
                {"name": "notest", "match": "/notest", "upstream": up},
            ],
        )
    )


@pytest.fixture
async def account(gw):
    return await new_account(gw.service)


@pytest.fixture
async def key(gw, account):
    return await new_key(gw.service, account, permissions=["read", "orders:*"])


def auth(secret: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {secret}")


async def upstream_view(gw, secret, target="/api/x", headers=(), method="GET", body=b""):
    resp = await raw_request(gw.url, method, target, [auth(secret), *headers], body)
    assert resp.status == 200, resp.body
    return resp.json(), seen_headers(resp.json())


# -- removed ----------------------------------------------------------------------------


class TestRemovedHeaders:
    async def test_hop_by_hop_headers_are_dropped(self, gw, key):
        _, seen = await upstream_view(
            gw, key[1],
            headers=[("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-Checksum"),
                     ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic eDp5"),
                     ("X-Kept", "yes")],
        )  # fmt: skip
        for name in ("keep-alive", "te", "trailer", "proxy-connection", "proxy-authorization"):
            assert name not in seen, name
        assert seen["x-kept"] == ["yes"]
        assert seen.get("connection", ["keep-alive"]) != [
            "close"
        ]  # the client's own is not passed on

    async def test_headers_named_in_connection_are_dropped(self, gw, key):
        _, seen = await upstream_view(
            gw, key[1],
            headers=[("Connection", "keep-alive, X-Internal-Token"), ("Connection", "x-debug"),
                     ("X-Internal-Token", "s3cret"), ("X-Debug", "1"), ("X-Kept", "yes")],
        )  # fmt: skip
        assert "x-internal-token" not in seen
        assert "x-debug" not in seen
        assert seen["x-kept"] == ["yes"]

    async def test_connection_cannot_drop_the_gateways_own_headers(self, gw, key):
        key_id, secret = key
        names = "X-Gateway-Key-Id, X-Gateway-Account-Id, X-Gateway-Permissions, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, Host"
        _, seen = await upstream_view(gw, secret, headers=[("Connection", names)])
        assert seen["x-gateway-key-id"] == [key_id]
        assert seen["x-gateway-permissions"] == ["read,orders:*"]
        assert seen["x-forwarded-for"] == ["127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert "x-forwarded-host" in seen
        assert seen["x-request-id"][0]
        assert "host" in seen

    @pytest.mark.parametrize(
        "name",
        ["X-Gateway-Key-Id", "x-gateway-key-id", "X-GATEWAY-ACCOUNT-ID", "X_Gateway_Key_Id",
         "x_gateway_permissions", "X-Gateway-Whatever", "X_GATEWAY_ROLE", "x-Gateway-key-MODE"],
    )  # fmt: skip
    async def test_client_gateway_headers_are_dropped_in_any_case(self, gw, key, name):
        key_id, secret = key
        _, seen = await upstream_view(gw, secret, headers=[(name, "forged")])
        for header, values in seen.items():
            if header.startswith(("x-gateway", "x_gateway")):
                assert "forged" not in values, header
        assert seen["x-gateway-key-id"] == [key_id]

    async def test_authorization_is_not_forwarded(self, gw, key):
        _, seen = await upstream_view(gw, key[1])
        assert "authorization" not in seen

    async def test_forward_authorization_passes_it_on(self, gw, key):
        _, seen = await upstream_view(gw, key[1], target="/fwd/x")
        assert seen["authorization"] == [f"Bearer {key[1]}"]

    async def test_proxy_authorization_is_never_forwarded(self, gw, key):
        _, seen = await upstream_view(
            gw, key[1], target="/fwd/x", headers=[("Proxy-Authorization", "Basic eDp5")]
        )
        assert "proxy-authorization" not in seen


# -- added ------------------------------------------------------------------------------


class TestAddedHeaders:
    async def test_identity_headers(self, gw, account, key):
        key_id, secret = key
        _, seen = await upstream_view(gw, secret)
        assert seen["x-gateway-key-id"] == [key_id]
        assert seen["x-gateway-key-name"] == ["test key"]
        assert seen["x-gateway-key-mode"] == ["live"]
        assert seen["x-gateway-account-id"] == [account]
        assert seen["x-gateway-permissions"] == ["read,orders:*"]

    async def test_forwarded_for_is_appended_to_what_the_client_sent(self, gw, key):
        _, seen = await upstream_view(
            gw, key[1],
            headers=[("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", "198.51.100.7, 10.1.1.1")],
        )  # fmt: skip
        assert seen["x-forwarded-for"] == ["203.0.113.5, 198.51.100.7, 10.1.1.1, 127.0.0.1"]

    async def test_forwarded_for_is_the_peer_when_none_was_sent(self, gw, key):
        _, seen = await upstream_view(gw, key[1])
        assert seen["x-forwarded-for"] == ["127.0.0.1"]

    async def test_forwarded_host_is_the_clients_host(self, gw, key):
        resp = await raw_request(gw.url, "GET", "/api/x", [auth(key[1])])
        host = gw.url.removeprefix("http://")
        seen = seen_headers(resp.json())
        assert seen["x-forwarded-host"] == [host]
        assert seen["host"] != [host] or host.startswith("127.0.0.1")  # the upstream's own Host

    async def test_forwarded_host_and_proto_from_an_untrusted_client_are_replaced(self, gw, key):
        _, seen = await upstream_view(
            gw,
            key[1],
            headers=[("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https")],
        )
        assert seen["x-forwarded-host"] == [gw.url.removeprefix("http://")]
        assert seen["x-forwarded-proto"] == ["http"]

    async def test_request_id_is_forwarded(self, gw, key):
        resp = await raw_request(gw.url, "GET", "/api/x", [auth(key[1])])
        assert seen_headers(resp.json())["x-request-id"] == [resp.headers["X-Request-Id"]]

    async def test_metadata_header_is_compact_json(self, gw, account):
        _, secret = await new_key(
            gw.service, account, metadata={"plan": "gold", "seats": 5, "trial": False}
        )
        _, seen = await upstream_view(gw, secret)
        assert seen["x-gateway-key-metadata"] == ['{"plan":"gold","seats":5,"trial":false}']

    async def test_non_ascii_name_and_metadata_stay_ascii_headers(self, gw, account):
        _, secret = await new_key(
            gw.service, account, name="Zoë's key", metadata={"city": "Zürich"}
        )
        _, seen = await upstream_view(gw, secret)
        assert seen["x-gateway-key-metadata"] == ['{"city":"Z\\u00fcrich"}']
        assert seen["x-gateway-key-name"][0].isascii()


# -- routing, paths and query -----------------------------------------------------------


class TestWhereItGoes:
    async def test_test_keys_go_to_the_test_upstream(self, gw, account):
        _, live = await new_key(gw.service, account)
        _, test = await new_key(gw.service, account, mode="test")
        assert test.startswith("sk_test_")
        body, _ = await upstream_view(gw, live)
        assert body["service"] == "upstream"
        body, seen = await upstream_view(gw, test)
        assert body["service"] == "test-upstream"
        assert seen["x-gateway-key-mode"] == ["test"]

    async def test_test_key_without_test_upstream_uses_the_upstream(self, gw, account):
        _, test = await new_key(gw.service, account, mode="test")
        body, _ = await upstream_view(gw, test, target="/notest/x")
        assert body["service"] == "upstream"

    @pytest.mark.parametrize(
        "target, forwarded",
        [
            ("/bare/users/7", "/users/7"),
            ("/bare", "/"),
            ("/bare/", "/"),
            ("/bare/a//b/../c", "/a/c"),
        ],
    )
    async def test_strip_prefix(self, gw, key, target, forwarded):
        body, _ = await upstream_view(gw, key[1], target=target)
        assert body["path"] == forwarded

    @pytest.mark.parametrize(
        "target, forwarded",
        [
            ("/api//users/./7/../8", "/api/users/8"),
            ("/api/%75sers/%2e%2e/orders", "/api/orders"),
            ("/api/a%20b/caf%c3%a9", "/api/a%20b/caf%C3%A9"),
            ("/api/%252e%252e/x", "/api/%252e%252e/x"),
            ("/api/x;v=1", "/api/x;v=1"),
        ],
    )
    async def test_normalised_path_is_forwarded(self, gw, key, target, forwarded):
        body, _ = await upstream_view(gw, key[1], target=target)
        assert body["path"] == forwarded

    @pytest.mark.parametrize(
        "query",
        ["b=2&a=1&a=%2F", "empty=&flag&sp=a+b%20c", "pct=%7e%7E&raw=~!$'()*,;:@/?", "x=%2e%2e%2f",
         "q=%E2%9C%93&q2=%e2%9c%93", "=&&=x"],
    )  # fmt: skip
    async def test_query_is_forwarded_byte_for_byte(self, gw, key, query):
        body, _ = await upstream_view(gw, key[1], target="/api/x?" + query)
        assert body["query"] == query

    async def test_method_and_body_are_forwarded(self, gw, key):
        body, _ = await upstream_view(gw, key[1], method="PATCH", body=b'{"name":"n"}',
                                      headers=[("Content-Type", "application/json")])  # fmt: skip
        assert body["method"] == "PATCH"
        assert body["body"] == '{"name":"n"}'


# -- what comes back --------------------------------------------------------------------


class TestResponses:
    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    async def test_redirects_are_passed_back_not_followed(self, gw, key, http, status):
        target = f"{gw.url}/bare/redirect?status={status}&to=http://elsewhere.invalid/next%3Fa=1"
        async with http.get(target, headers=bearer(key[1]), allow_redirects=False) as resp:
            assert resp.status == status
            assert resp.headers["Location"] == "http://elsewhere.invalid/next?a=1"

    async def test_every_set_cookie_line_is_kept(self, gw, key):
        resp = await raw_request(gw.url, "GET", "/bare/cookies", [auth(key[1])])
        assert resp.status == 200
        assert resp.headers.getall("Set-Cookie") == [
            "session=session-value; Path=/; HttpOnly",
            "theme=theme-value; Path=/; HttpOnly",
            "csrf=csrf-value; Path=/; HttpOnly",
        ]

    async def test_gzip_body_passes_byte_for_byte(self, gw, key, http):
        headers = {"Accept-Encoding": "gzip", **bearer(key[1])}
        async with http.get(gw.url + "/bare/gzip", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == "gzip"
            assert await resp.read() == GZIP_BODY

    async def test_status_and_headers_come_back_unchanged(self, gw, key):
        resp = await raw_request(
            gw.url, "GET",
            "/bare/respond?status=418&header=X-Custom:yes&header=Cache-Control:max-age%3D60&header=X-Multi:1&header=X-Multi:2",
            [auth(key[1])],
        )  # fmt: skip
        assert resp.status == 418
        assert resp.headers["X-Custom"] == "yes"
        assert resp.headers["Cache-Control"] == "max-age=60"
        assert resp.headers.getall("X-Multi") == ["1", "2"]
        assert resp.body == b"respond"

    async def test_hop_by_hop_response_headers_are_dropped(self, gw, key):
        resp = await raw_request(
            gw.url, "GET",
            "/bare/respond?header=Connection:X-Internal&header=X-Internal:secret&header=Keep-Alive:timeout%3D99&header=X-Public:1",
            [auth(key[1])],
        )  # fmt: skip
        assert resp.status == 200
        assert "X-Internal" not in resp.headers
        assert resp.headers.get("Keep-Alive") is None
        assert resp.headers["X-Public"] == "1"

    async def test_head_gets_headers_without_a_body(self, gw, key, http):
        async with http.head(gw.url + "/api/x", headers=bearer(key[1])) as resp:
            assert resp.status == 200
            assert await resp.read() == b""


class TestBehindATrustedProxy:
    async def test_forwarded_host_and_proto_from_a_trusted_proxy_are_kept(
        self, start_gateway, base_config, upstream
    ):
        gw = await start_gateway(
            base_config(
                server={"trusted_proxies": ["127.0.0.1"]},
                routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
            )
        )
        account = await new_account(gw.service)
        _, secret = await new_key(gw.service, account)
        _, seen = await upstream_view(
            gw, secret,
            headers=[("X-Forwarded-Host", "api.example.com"), ("X-Forwarded-Proto", "https"),
                     ("X-Forwarded-For", "203.0.113.5")],
        )  # fmt: skip
        assert seen["x-forwarded-host"] == ["api.example.com"]
        assert seen["x-forwarded-proto"] == ["https"]
        assert seen["x-forwarded-for"] == ["203.0.113.5, 127.0.0.1"]

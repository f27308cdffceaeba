"""Key restrictions (SPEC §3) and the ways around them that must not work.

The test client connects from 127.0.0.1: CIDRs include or exclude it, and a
``trusted_proxies`` holding 127.0.0.1 makes the client play a proxy.
"""

from __future__ import annotations

import pytest
from conftest import bearer, new_account, new_key, upstream_url
from http_raw import raw_request


def config(base_config, upstream, trusted=()):
    return base_config(
        server={"trusted_proxies": list(trusted)},
        routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
    )


@pytest.fixture
async def direct(start_gateway, base_config, upstream):
    """A gateway with no trusted proxies: the peer is the client."""
    return await start_gateway(config(base_config, upstream))


@pytest.fixture
async def proxied(start_gateway, base_config, upstream):
    """A gateway that trusts 127.0.0.1 and 10.0.0.0/8 as proxies."""
    return await start_gateway(config(base_config, upstream, ["127.0.0.1/32", "10.0.0.0/8"]))


async def key_on(gw, **restrictions) -> str:
    account = await new_account(gw.service)
    return (await new_key(gw.service, account, **restrictions))[1]


async def status_of(gw, path="/api/x", headers=(), method="GET") -> tuple[int, str | None]:
    resp = await raw_request(gw.url, method, path, list(headers))
    code = resp.json()["error"]["code"] if resp.status >= 400 else None
    if code is not None and code != "insufficient_permissions":
        assert "WWW-Authenticate" not in resp.headers or resp.status == 401
    return resp.status, code


def auth(secret: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {secret}")


IP_DENIED = (403, "ip_not_allowed")
REFERRER_DENIED = (403, "referrer_not_allowed")
ENDPOINT_DENIED = (403, "endpoint_not_allowed")
OK = (200, None)


# -- allowed_ips ------------------------------------------------------------------------


class TestAllowedIpsDirect:
    @pytest.mark.parametrize(
        "allowed, expected",
        [
            (["127.0.0.1"], OK),
            (["127.0.0.0/8"], OK),
            (["10.0.0.0/8", "127.0.0.1/32"], OK),
            (["10.0.0.0/8"], IP_DENIED),
            (["127.0.0.2"], IP_DENIED),
            (["::1"], IP_DENIED),
            (["::/0"], IP_DENIED),  # an IPv6 range never holds an IPv4 peer
            ([], OK),
        ],
    )
    async def test_peer_address(self, direct, allowed, expected):
        secret = await key_on(direct, allowed_ips=allowed)
        assert await status_of(direct, headers=[auth(secret)]) == expected

    async def test_denial_body(self, direct, http):
        secret = await key_on(direct, allowed_ips=["10.0.0.0/8"])
        async with http.get(direct.url + "/api/x", headers=bearer(secret)) as resp:
            body = await resp.json()
        assert resp.status == 403
        assert body["error"]["type"] == "permission_error"
        assert body["error"]["code"] == "ip_not_allowed"

    @pytest.mark.parametrize(
        "spoof",
        [
            [("X-Forwarded-For", "203.0.113.5")],
            [("X-Forwarded-For", "127.0.0.1, 203.0.113.5")],
            [("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-For", "203.0.113.6")],
            [("X-Real-IP", "203.0.113.5")],
            [("Forwarded", "for=203.0.113.5")],
            [("True-Client-IP", "203.0.113.5"), ("CF-Connecting-IP", "203.0.113.5")],
        ],
    )
    async def test_headers_from_an_untrusted_peer_change_nothing(self, direct, spoof):
        allowed_elsewhere = await key_on(direct, allowed_ips=["203.0.113.0/24"])
        assert await status_of(direct, headers=[auth(allowed_elsewhere), *spoof]) == IP_DENIED
        allowed_here = await key_on(direct, allowed_ips=["127.0.0.1"])
        assert await status_of(direct, headers=[auth(allowed_here), *spoof]) == OK


class TestAllowedIpsBehindTrustedProxies:
    async def test_client_is_the_forwarded_address(self, proxied):
        secret = await key_on(proxied, allowed_ips=["203.0.113.0/24"])
        headers = [auth(secret), ("X-Forwarded-For", "203.0.113.5")]
        assert await status_of(proxied, headers=headers) == OK

    async def test_the_proxy_itself_is_not_the_client(self, proxied):
        secret = await key_on(proxied, allowed_ips=["127.0.0.1"])
        headers = [auth(secret), ("X-Forwarded-For", "203.0.113.5")]
        assert await status_of(proxied, headers=headers) == IP_DENIED

    async def test_no_forwarded_for_means_the_peer(self, proxied):
        secret = await key_on(proxied, allowed_ips=["127.0.0.1"])
        assert await status_of(proxied, headers=[auth(secret)]) == OK

    async def test_right_most_untrusted_entry_is_the_client(self, proxied):
        xff = ("X-Forwarded-For", "198.51.100.1, 203.0.113.5, 10.0.0.2")
        right = await key_on(proxied, allowed_ips=["203.0.113.5"])
        assert await status_of(proxied, headers=[auth(right), xff]) == OK
        spoofed_left = await key_on(proxied, allowed_ips=["198.51.100.1"])
        assert await status_of(proxied, headers=[auth(spoofed_left), xff]) == IP_DENIED
        trusted_hop = await key_on(proxied, allowed_ips=["10.0.0.2"])
        assert await status_of(proxied, headers=[auth(trusted_hop), xff]) == IP_DENIED

    async def test_several_forwarded_for_lines_are_one_list(self, proxied):
        lines = [
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.5, 10.0.0.9"),
        ]
        right = await key_on(proxied, allowed_ips=["203.0.113.5"])
        assert await status_of(proxied, headers=[auth(right), *lines]) == OK
        first_line = await key_on(proxied, allowed_ips=["198.51.100.1"])
        assert await status_of(proxied, headers=[auth(first_line), *lines]) == IP_DENIED

    async def test_client_prepending_a_fake_address_gains_nothing(self, proxied):
        # The client sent "X-Forwarded-For: 203.0.113.77"; its proxy appended the real address.
        xff = ("X-Forwarded-For", "203.0.113.77, 198.51.100.9")
        secret = await key_on(proxied, allowed_ips=["203.0.113.77"])
        assert await status_of(proxied, headers=[auth(secret), xff]) == IP_DENIED

    @pytest.mark.parametrize(
        "header", [("X-Real-IP", "203.0.113.5"), ("Forwarded", "for=203.0.113.5;proto=https")]
    )
    async def test_other_client_ip_headers_are_ignored(self, proxied, header):
        secret = await key_on(proxied, allowed_ips=["203.0.113.5"])
        assert await status_of(proxied, headers=[auth(secret), header]) == IP_DENIED

    @pytest.mark.parametrize(
        "forwarded, allowed, expected",
        [
            ("2001:db8::7", ["2001:db8::/32"], OK),
            ("2001:db8::7", ["2001:db9::/32"], IP_DENIED),
            ("2001:DB8:0:0::7", ["2001:db8::7"], OK),
            ("[2001:db8::7]:4711", ["2001:db8::7"], OK),
            ("::ffff:203.0.113.5", ["203.0.113.0/24"], OK),  # IPv4-mapped is the IPv4 address
            ("2001:db8::7", ["0.0.0.0/0"], IP_DENIED),
            ("203.0.113.5", ["::/0"], IP_DENIED),
        ],
    )
    async def test_ipv6(self, proxied, forwarded, allowed, expected):
        secret = await key_on(proxied, allowed_ips=allowed)
        headers = [auth(secret), ("X-Forwarded-For", forwarded)]
        assert await status_of(proxied, headers=headers) == expected

    @pytest.mark.parametrize("junk", ["unknown", "203.0.113.5, not-an-ip", "_hidden"])
    async def test_unreadable_hop_is_refused_when_ips_are_restricted(self, proxied, junk):
        secret = await key_on(proxied, allowed_ips=["0.0.0.0/0", "::/0"])
        headers = [auth(secret), ("X-Forwarded-For", junk)]
        assert await status_of(proxied, headers=headers) == IP_DENIED

    async def test_unreadable_hop_does_not_matter_without_restriction(self, proxied):
        secret = await key_on(proxied)
        headers = [auth(secret), ("X-Forwarded-For", "unknown")]
        assert await status_of(proxied, headers=headers) == OK


# -- allowed_referrers ------------------------------------------------------------------


class TestAllowedReferrers:
    @pytest.mark.parametrize(
        "pattern, referer, allowed",
        [
            # a pattern with a scheme matches the whole URL, scheme included
            ("https://app.example.com/*", "https://app.example.com/page?x=1", True),
            ("https://app.example.com/*", "https://app.example.com/", True),
            ("https://app.example.com/*", "http://app.example.com/page", False),
            ("https://app.example.com/*", "https://app.example.com.evil.net/page", False),
            ("https://app.example.com/*", "https://evil.net/https://app.example.com/", False),
            ("https://app.example.com/*", "https://app.example.com@evil.net/", False),
            ("https://app.example.com/billing/*", "https://app.example.com/admin", False),
            ("https://app.example.com/billing/*", "https://app.example.com/billing/x", True),
            # a bare host matches the URL's host only, any scheme and port
            ("app.example.com", "https://app.example.com/any/path", True),
            ("app.example.com", "http://app.example.com:8443/x", True),
            ("app.example.com", "https://APP.Example.COM/x", True),
            ("app.example.com", "https://evilapp.example.com/", False),
            ("app.example.com", "https://app.example.com.evil.net/", False),
            ("app.example.com", "https://sub.app.example.com/", False),
            ("app.example.com", "https://app.example.com@evil.net/", False),
            ("app.example.com", "https://evil.net/?r=app.example.com", False),
            # *. is any subdomain, never the bare domain or a look-alike
            ("*.example.com", "https://a.example.com/", True),
            ("*.example.com", "https://a.b.example.com/", True),
            ("*.example.com", "https://example.com/", False),
            ("*.example.com", "https://evilexample.com/", False),
            ("*.example.com", "https://a.example.com.evil.net/", False),
            ("*.example.com", "https://a.example.company/", False),
            ("*.example.com", "not a url", False),
            ("*.example.com", "null", False),
        ],
    )
    async def test_patterns(self, direct, pattern, referer, allowed):
        secret = await key_on(direct, allowed_referrers=[pattern])
        result = await status_of(direct, headers=[auth(secret), ("Referer", referer)])
        assert result == (OK if allowed else REFERRER_DENIED)

    async def test_any_of_several_patterns(self, direct):
        secret = await key_on(
            direct, allowed_referrers=["app.example.com", "https://docs.example.org/*"]
        )
        for referer, expected in [
            ("https://docs.example.org/guide", OK),
            ("https://app.example.com/", OK),
            ("http://docs.example.org/guide", REFERRER_DENIED),
        ]:
            assert await status_of(direct, headers=[auth(secret), ("Referer", referer)]) == expected

    async def test_origin_is_used_without_referer(self, direct):
        secret = await key_on(direct, allowed_referrers=["*.example.com"])
        good = [auth(secret), ("Origin", "https://app.example.com")]
        assert await status_of(direct, headers=good) == OK
        bad = [auth(secret), ("Origin", "https://evilexample.com")]
        assert await status_of(direct, headers=bad) == REFERRER_DENIED

    async def test_referer_wins_over_origin(self, direct):
        secret = await key_on(direct, allowed_referrers=["*.example.com"])
        headers = [
            auth(secret),
            ("Referer", "https://evil.net/"),
            ("Origin", "https://app.example.com"),
        ]
        assert await status_of(direct, headers=headers) == REFERRER_DENIED

    async def test_neither_referer_nor_origin_is_refused(self, direct):
        secret = await key_on(direct, allowed_referrers=["*.example.com"])
        assert await status_of(direct, headers=[auth(secret)]) == REFERRER_DENIED

    async def test_no_list_means_no_restriction(self, direct):
        secret = await key_on(direct)
        assert await status_of(direct, headers=[auth(secret)]) == OK


# -- allowed_endpoints ------------------------------------------------------------------


class TestAllowedEndpoints:
    @pytest.mark.parametrize(
        "patterns, method, path, allowed",
        [
            # * is exactly one segment
            (["/api/users/*"], "GET", "/api/users/7", True),
            (["/api/users/*"], "GET", "/api/users/7/", True),
            (["/api/users/*"], "GET", "/api/users", False),
            (["/api/users/*"], "GET", "/api/users/7/posts", False),
            (["/api/*/posts"], "GET", "/api/users/posts", True),
            (["/api/*/posts"], "GET", "/api/a/b/posts", False),
            # ** is one or more segments
            (["/api/users/**"], "GET", "/api/users/7/posts/1", True),
            (["/api/users/**"], "GET", "/api/users/7", True),
            (["/api/users/**"], "GET", "/api/users", False),
            # segment boundaries
            (["/api/a/**"], "GET", "/api/aX/y", False),
            (["/api/a/**"], "GET", "/api/a/y", True),
            (["/api/users"], "GET", "/api/users", True),
            (["/api/users"], "GET", "/api/usersX", False),
            (["/api/users"], "GET", "/api/users/7", False),
            # METHOD prefix
            (["GET /api/users/*"], "GET", "/api/users/7", True),
            (["GET /api/users/*"], "POST", "/api/users/7", False),
            (["GET /api/users/*", "POST /api/orders"], "POST", "/api/orders", True),
            (["get /api/users/*"], "GET", "/api/users/7", True),
            # the query string is ignored
            (["/api/users/*"], "GET", "/api/users/7?next=/api/admin", True),
            (["/api/admin"], "GET", "/api/users/7?p=/api/admin", False),
            # case-sensitive
            (["/api/users/*"], "GET", "/api/Users/7", False),
        ],
    )
    async def test_patterns(self, direct, patterns, method, path, allowed):
        secret = await key_on(direct, allowed_endpoints=patterns)
        result = await status_of(direct, path=path, method=method, headers=[auth(secret)])
        assert result == (OK if allowed else ENDPOINT_DENIED)

    @pytest.mark.parametrize(
        "target",
        [
            "/api/public/../admin",
            "/api/public/%2e%2e/admin",
            "/api/public/%2E%2e/admin",
            "/api/public/.%2e/admin",
            "/api/public//../admin",
            "/api/public;/../admin",
            "/api/public/./../admin",
            "//api/admin",
            "/api/./admin",
            "/api/public/x/../../admin",
        ],
    )
    async def test_dot_segments_cannot_escape_the_allowed_tree(self, direct, target):
        secret = await key_on(direct, allowed_endpoints=["/api/public/**"])
        assert await status_of(direct, path=target, headers=[auth(secret)]) == ENDPOINT_DENIED

    @pytest.mark.parametrize(
        "target",
        [
            "/api/public/..;/admin",
            "/api/public/%2e%2e;/admin",
            "/api/public%2f..%2fadmin",
            "/api/public/..%2fadmin",
            "/api/public/..%5cadmin",
            "/api/public/%2e%2e%2f%2e%2e%2fadmin",
            "/api/public/x%00/../../admin",
        ],
    )
    async def test_tricks_that_cannot_be_normalised_are_refused(self, direct, target):
        secret = await key_on(direct, allowed_endpoints=["/api/public/**"])
        status, code = await status_of(direct, path=target, headers=[auth(secret)])
        assert (status, code) == (400, "bad_request")

    async def test_double_encoding_stays_inside_the_allowed_tree(self, direct):
        secret = await key_on(direct, allowed_endpoints=["/api/public/**"])
        resp = await raw_request(direct.url, "GET", "/api/public/%252e%252e/admin", [auth(secret)])
        assert resp.status == 200
        assert resp.json()["path"] == "/api/public/%252e%252e/admin"

    async def test_allowed_request_reaches_the_normalised_path(self, direct):
        secret = await key_on(direct, allowed_endpoints=["/api/public/**"])
        resp = await raw_request(direct.url, "GET", "/api/admin/../public//x", [auth(secret)])
        assert resp.status == 200
        assert resp.json()["path"] == "/api/public/x"


# -- order ------------------------------------------------------------------------------


class TestRestrictionOrder:
    async def test_ip_then_referrer_then_endpoint_then_permission(
        self, start_gateway, base_config, upstream
    ):
        gw = await start_gateway(
            base_config(
                routes=[
                    {
                        "name": "api",
                        "match": "/api",
                        "upstream": upstream_url(upstream),
                        "permissions": {"*": "admin"},
                    }
                ]  # fmt: skip
            )
        )
        every = {
            "allowed_ips": ["10.0.0.0/8"],
            "allowed_referrers": ["app.example.com"],
            "allowed_endpoints": ["/api/only"],
            "permissions": ["read"],
        }
        secret = await key_on(gw, **every)
        assert await status_of(gw, headers=[auth(secret)]) == IP_DENIED
        secret = await key_on(gw, **{**every, "allowed_ips": ["127.0.0.1"]})
        assert await status_of(gw, headers=[auth(secret)]) == REFERRER_DENIED
        secret = await key_on(gw, **{**every, "allowed_ips": [], "allowed_referrers": []})
        assert await status_of(gw, headers=[auth(secret)]) == ENDPOINT_DENIED
        secret = await key_on(gw, permissions=["read"])
        assert await status_of(gw, headers=[auth(secret)]) == (403, "insufficient_permissions")

    async def test_restrictions_are_checked_after_revocation(self, direct):
        from gateway.keys.service import CLI

        account = await new_account(direct.service)
        key_id, secret = await new_key(direct.service, account, allowed_ips=["10.0.0.0/8"])
        await direct.service.revoke_key(CLI, key_id)
        resp = await raw_request(direct.url, "GET", "/api/x", [auth(secret)])
        assert (resp.status, resp.json()["error"]["code"]) == (401, "revoked_api_key")

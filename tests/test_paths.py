"""Path normalisation and route matching (SPEC §6)."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.proxy.paths import (
    PathError,
    match_form,
    match_prefix,
    normalise_path,
    split_target,
)
from gateway.routing import Router


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("/v1/users", "/v1/users"),
        ("/", "/"),
        # dot segments, literal and encoded in any case
        ("/v1/admin/../users", "/v1/users"),
        ("/v1/admin/%2e%2e/users", "/v1/users"),
        ("/v1/admin/%2E%2E/users", "/v1/users"),
        ("/v1/admin/.%2e/users", "/v1/users"),
        ("/v1/admin/%2e./users", "/v1/users"),
        ("/v1/./users", "/v1/users"),
        ("/v1/%2e/users", "/v1/users"),
        ("/v1/users/7/..", "/v1/users/"),
        ("/v1/users/.", "/v1/users/"),
        ("/v1/...", "/v1/..."),  # not a dot segment
        # repeated slashes collapse
        ("/v1//users", "/v1/users"),
        ("//v1///users//7", "/v1/users/7"),
        ("/v1/users/", "/v1/users/"),
        # decoded once: %252e is the literal text %2e, never a dot
        ("/v1/%252e%252e/admin", "/v1/%252e%252e/admin"),
        ("/v1/%25", "/v1/%25"),
        # unreserved characters decoded, the rest re-encoded in one canonical form
        ("/v1/%75sers", "/v1/users"),
        ("/v1/caf%c3%a9", "/v1/caf%C3%A9"),
        ("/v1/a b", "/v1/a%20b"),
        ("/v1/a%3Fb", "/v1/a%3Fb"),
        ("/v1/a%23b", "/v1/a%23b"),
        ("/v1/~me", "/v1/~me"),
        # matrix parameters stay part of their segment
        ("/v1/users;v=2/7", "/v1/users;v=2/7"),
        ("/v1/x;/../users", "/v1/users"),
        # case is kept
        ("/V1/Users", "/V1/Users"),
    ],
)
def test_normalised_form(raw, normalised):
    assert normalise_path(raw) == normalised
    assert normalise_path(normalised) == normalised  # idempotent


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("/..", "escapes the root"),
        ("/v1/../..", "escapes the root"),
        ("/%2e%2e", "escapes the root"),
        ("/v1/%2e%2e/%2e%2e/etc/passwd", "escapes the root"),
        ("/v1/..;/admin", "dot-segment with parameters"),
        ("/v1/.;x/admin", "dot-segment with parameters"),
        ("/v1/%2e%2e;/admin", "dot-segment with parameters"),
        ("/v1/users%2f..%2fadmin", "encoded slash"),
        ("/v1/users%2F7", "encoded slash"),
        ("/v1/users%5c7", "backslash"),
        ("/v1/users%5C..%5Cadmin", "backslash"),
        ("/v1/users\\7", "backslash"),
        ("/v1/users%00.json", "NUL"),
        ("/v1/%zz", "malformed percent-escape"),
        ("/v1/%", "malformed percent-escape"),
        ("/v1/%2", "malformed percent-escape"),
        ("v1/users", "must start with /"),
        ("*", "must start with /"),
    ],
)
def test_unsafe_paths_are_refused(raw, reason):
    with pytest.raises(PathError) as caught:
        normalise_path(raw)
    assert reason in str(caught.value)


def test_split_target_keeps_the_query_untouched():
    assert split_target("/a/b?x=%2e%2e&y=1") == ("/a/b", "x=%2e%2e&y=1")
    assert split_target("/a") == ("/a", "")


@pytest.mark.parametrize(
    "path, prefix, matches",
    [
        ("/v1/users", "/v1/users", True),
        ("/v1/users/7", "/v1/users", True),
        ("/v1/users/", "/v1/users", True),
        ("/v1/usersX", "/v1/users", False),
        ("/v1/user", "/v1/users", False),
        ("/V1/users", "/v1/users", False),
        ("/anything", "/", True),
    ],
)
def test_prefix_matches_on_a_segment_boundary(path, prefix, matches):
    assert match_prefix(path, prefix) is matches


def _router(*routes):
    return Router(
        parse_config(
            {
                "routes": [
                    {"name": n, "match": m, "upstream": "http://127.0.0.1:1", **extra}
                    for n, m, extra in routes
                ]
            }  # fmt: skip
        )
    )


def test_longest_match_wins_whatever_the_order():
    router = _router(("root", "/", {}), ("v1", "/v1", {}), ("users", "/v1/users", {}))
    assert router.match("/v1/users/7").name == "users"
    assert router.match("/v1/usersX").name == "v1"
    assert router.match("/v2").name == "root"


def test_no_route_matches():
    router = _router(("users", "/v1/users", {}))
    assert router.match("/v1/usersX") is None
    assert router.match("/v1") is None


@pytest.mark.parametrize(
    "path, forwarded",
    [("/api/users/7", "/users/7"), ("/api", "/"), ("/api/", "/")],
)
def test_strip_prefix_removes_the_match(path, forwarded):
    route = _router(("api", "/api", {"strip_prefix": True})).match(path)
    assert route.upstream_path(path) == forwarded


@pytest.mark.parametrize(
    "path, matched",
    [
        ("/v1/users/7", "/v1/users/7"),
        ("/admin;x/secret", "/admin/secret"),
        ("/;x/admin/secret", "/admin/secret"),  # not //admin/secret: no route prefix matches that
        ("/;a/;b/admin;c/x", "/admin/x"),
        ("/a;x/", "/a/"),
        ("/a/;x", "/a/"),
        ("/;x", "/"),
        ("/v1/files;jsessionid=1/a;b", "/v1/files/a"),
    ],
)
def test_the_match_form_cuts_parameters_and_leaves_no_empty_segment(path, matched):
    assert match_form(path) == matched


@pytest.mark.parametrize(
    "path, forwarded",
    [
        ("/api;v=1/users/7", "/users/7"),
        ("/;x/api/users/7", "/users/7"),
        ("/;x/api/;y/v1/users", "/users"),
    ],
)
def test_strip_prefix_counts_segments_as_routes_match_them(path, forwarded):
    prefix = "/api/v1" if "v1" in path else "/api"
    route = _router(("api", prefix, {"strip_prefix": True})).match(match_form(path))
    assert route is not None and route.name == "api"
    assert route.upstream_path(path) == forwarded


def test_without_strip_prefix_the_path_is_forwarded_whole():
    route = _router(("api", "/api", {})).match("/api/users")
    assert route.upstream_path("/api/users") == "/api/users"

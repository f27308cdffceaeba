"""The permission algebra of SPEC §2, case by case and over the whole relation."""

from __future__ import annotations

import itertools

import pytest

from gateway.checks.permission import permission_denial
from gateway.config import parse_config
from gateway.permissions import any_satisfies, satisfies, validate_permission
from gateway.routing import Route

# (held, required, satisfied) — every rule of SPEC §2 and the cases it rules out.
TABLE = [
    # P == R
    ("read", "read", True),
    ("webhook", "webhook", True),
    ("users:read", "users:read", True),
    ("users:delete", "users:delete", True),
    ("users:*", "users:*", True),
    # admin satisfies everything
    ("admin", "read", True),
    ("admin", "write", True),
    ("admin", "webhook", True),
    ("admin", "users:delete", True),
    ("admin", "users:*", True),
    # write satisfies read
    ("write", "read", True),
    ("read", "write", False),
    ("write", "admin", False),
    ("write", "webhook", False),
    ("read", "admin", False),
    ("webhook", "read", False),
    ("read", "webhook", False),
    # res:* satisfies anything under res:
    ("users:*", "users:read", True),
    ("users:*", "users:write", True),
    ("users:*", "users:delete", True),
    ("users:*", "orders:read", False),
    ("users:*", "usersx:read", False),
    # res:write satisfies res:read
    ("users:write", "users:read", True),
    ("users:read", "users:write", False),
    ("users:write", "users:delete", False),
    ("users:write", "orders:read", False),
    # a bare read/write satisfies res:read/res:write
    ("read", "users:read", True),
    ("read", "users:write", False),
    ("write", "users:write", True),
    ("write", "users:read", True),  # transitively: write -> read -> users:read
    ("write", "users:delete", False),
    ("read", "users:delete", False),
    # res:* and res:read never satisfy a bare level
    ("users:*", "read", False),
    ("users:*", "write", False),
    ("users:read", "read", False),
    ("users:write", "write", False),
    ("users:write", "read", False),
    # a resource-scoped permission never satisfies admin or webhook
    ("users:*", "admin", False),
    ("webhook", "users:read", False),
]


@pytest.mark.parametrize("held, required, expected", TABLE)
def test_single_permission(held, required, expected):
    assert satisfies(held, required) is expected


UNIVERSE = [
    "read", "write", "admin", "webhook",
    "users:read", "users:write", "users:delete", "users:*",
    "orders:read", "orders:write", "orders:*",
]  # fmt: skip


def test_relation_is_reflexive():
    for p in UNIVERSE:
        assert satisfies(p, p), p


def test_relation_is_transitive():
    for a, b, c in itertools.product(UNIVERSE, repeat=3):
        if satisfies(a, b) and satisfies(b, c):
            assert satisfies(a, c), (a, b, c)


def test_admin_is_the_only_permission_satisfying_everything():
    top = [p for p in UNIVERSE if all(satisfies(p, r) for r in UNIVERSE)]
    assert top == ["admin"]


def test_nothing_crosses_resources():
    for held, required in itertools.product(UNIVERSE, repeat=2):
        if ":" in held and ":" in required and held.split(":")[0] != required.split(":")[0]:
            assert not satisfies(held, required), (held, required)


@pytest.mark.parametrize(
    "held, required, expected",
    [
        (("users:read", "orders:write"), "orders:read", True),
        (("users:read", "orders:write"), "orders:delete", False),
        (("webhook", "read"), "users:read", True),
        (("webhook", "users:*"), "write", False),
        ((), "read", False),
    ],
)
def test_any_of_several_permissions_passes(held, required, expected):
    assert any_satisfies(held, required) is expected


def test_denial_names_the_required_permission():
    denial = permission_denial(("read",), "users:write")
    assert denial is not None
    assert denial.code == "insufficient_permissions"
    assert denial.details == {"required_permission": "users:write"}
    assert permission_denial(("write",), "users:write") is None


def test_no_required_permission_needs_only_a_valid_key():
    assert permission_denial((), None) is None


def _route(permissions):
    config = parse_config(
        {
            "routes": [
                {
                    "name": "r",
                    "match": "/r",
                    "upstream": "http://127.0.0.1:1",
                    "permissions": permissions,
                }
            ]
        }  # fmt: skip
    )
    return Route.build(config.routes[0])


def test_route_map_gives_a_permission_per_method_and_star_for_the_rest():
    route = _route({"GET": "read", "delete": "admin", "*": "write"})
    assert route.required_permission("GET") == "read"
    assert route.required_permission("DELETE") == "admin"
    assert route.required_permission("POST") == "write"
    assert route.required_permission("PATCH") == "write"


def test_route_map_without_star_leaves_other_methods_open():
    route = _route({"GET": "read"})
    assert route.required_permission("GET") == "read"
    assert route.required_permission("POST") is None


def test_route_without_map_requires_nothing():
    assert _route(None).required_permission("DELETE") is None


@pytest.mark.parametrize("text", ["read", "webhook", "users:read", "users:*", "billing.v2:write"])
def test_valid_permission_names(text):
    assert validate_permission(text) == text


@pytest.mark.parametrize(
    "text", ["", "Read", "users:", ":read", "users:read:x", "*", "a b", 7, None]
)
def test_invalid_permission_names(text):
    with pytest.raises(ValueError):
        validate_permission(text)

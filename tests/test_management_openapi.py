"""The OpenAPI document at /v1/openapi.json is valid, complete, and matches real answers."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import bearer, new_account, new_key
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.management.api import ENDPOINTS

FORWARD_AUTH = "/auth/check"  # SPEC §11, documented with the proxy examples in deploy/
SECRET_SCANNING = "/secret-scanning/github"  # SPEC §15: GitHub's protocol, in the README


@pytest.fixture
async def gateway(start_gateway, base_config):
    return await start_gateway(base_config())


async def _document(http, url: str) -> dict[str, Any]:
    async with http.get(url + "/v1/openapi.json") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        return await resp.json()


@pytest.fixture
async def hooks_gateway(start_gateway, base_config):
    return await start_gateway(base_config(webhooks={"allow_private_targets": True}))


async def test_webhook_answers_match_the_documented_schemas(hooks_gateway, http):
    gateway = hooks_gateway
    doc = await _document(http, gateway.url)
    account = await new_account(gateway.service)
    _, secret = await new_key(gateway.service, account, permissions=["webhook"])
    hook = bearer(secret)
    base = gateway.url + "/v1/webhook-endpoints"

    async def call(method: str, template: str, status: int, url: str, **kwargs) -> dict:
        async with http.request(method, url, headers=hook, **kwargs) as resp:
            body = await resp.json()
            assert resp.status == status, body
        _validator(doc, method, "/v1" + template, status).validate(body)
        return body

    made = await call("POST", "/webhook-endpoints", 201, base, json={"url": "http://127.0.0.1:9/h"})
    one = base + "/" + made["data"]["id"]
    await call("POST", "/webhook-endpoints", 400, base, json={"url": "ftp://x"})
    await call("GET", "/webhook-endpoints", 200, base)
    await call("GET", "/webhook-endpoints/{id}", 200, one)
    await call("GET", "/webhook-endpoints/{id}", 404, base + "/we_nope")
    await call("PATCH", "/webhook-endpoints/{id}", 200, one, json={"disabled": True})
    await call("POST", "/webhook-endpoints/{id}/test", 202, one + "/test")
    await call("GET", "/webhook-endpoints/{id}/deliveries", 200, one + "/deliveries")
    await call("DELETE", "/webhook-endpoints/{id}", 200, one)


async def test_the_document_is_served_without_a_key_and_is_valid_openapi_3_1(gateway, http):
    doc = await _document(http, gateway.url)
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    out = {}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "patch", "delete", "put", "head", "options"):
                out[(method.upper(), path)] = operation["operationId"]
    return out


async def test_every_management_endpoint_is_documented(gateway, http):
    doc = await _document(http, gateway.url)
    documented = _operations(doc)
    for endpoint in ENDPOINTS:
        where = (endpoint.method, "/v1" + endpoint.template)
        assert documented.get(where) == endpoint.operation_id, where
        operation = doc["paths"]["/v1" + endpoint.template][endpoint.method.lower()]
        if not endpoint.auth:
            assert operation["security"] == []
        if endpoint.body:
            assert "requestBody" in operation
    # Every path this gateway answers under the prefix (whoever added it) is in the document.
    paths = list(doc["paths"])
    for path, below, _ in gateway.runtime.snapshot.local_routes:
        if not path.startswith("/v1/") or path in ("/v1" + FORWARD_AUTH, "/v1" + SECRET_SCANNING):
            continue
        assert any(p == path or (below and p.startswith(path + "/")) for p in paths), path


async def test_every_documented_operation_is_answered(gateway, http):
    """Nothing in the document is made up: each operation reaches a handler (401 without a key)."""
    doc = await _document(http, gateway.url)
    for (method, path), operation_id in _operations(doc).items():
        url = gateway.url + path.replace("{id}", "key_unknown")
        async with http.request(method, url) as resp:
            expected = 200 if doc["paths"][path][method.lower()].get("security") == [] else 401
            assert resp.status == expected, (operation_id, resp.status, await resp.text())


async def test_the_document_follows_the_configured_prefix(start_gateway, base_config, http):
    gw = await start_gateway(base_config(management={"path_prefix": "/manage"}))
    async with http.get(gw.url + "/manage/openapi.json") as resp:
        doc = await resp.json()
    assert "/manage/api-keys/{id}/rotate" in doc["paths"]
    assert not any(p.startswith("/v1/") for p in doc["paths"])
    validate(doc)


def _validator(doc: dict[str, Any], method: str, path: str, status: int) -> Draft202012Validator:
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answers {status}, not documented"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


async def test_real_answers_match_the_documented_schemas(gateway, http):
    doc = await _document(http, gateway.url)
    account = await new_account(gateway.service)
    admin_id, admin_secret = await new_key(gateway.service, account, permissions=["admin"])
    _, reader = await new_key(gateway.service, account, permissions=["read"])
    admin = bearer(admin_secret)
    checked: set[tuple[str, str, int]] = set()

    async def call(method: str, path: str, status: int, headers=None, **kwargs) -> dict:
        url = gateway.url + path.replace("{id}", kwargs.pop("key_id", admin_id))
        async with http.request(method, url, headers=headers, **kwargs) as resp:
            body = await resp.json()
            assert resp.status == status, body
        template = path.partition("?")[0]
        _validator(doc, method, template, status).validate(body)
        checked.add((method, path, status))
        return body

    await call("GET", "/v1/auth/verify", 200, admin)
    await call("GET", "/v1/auth/verify", 401)
    await call("GET", "/v1/account", 200, admin)
    created = await call(
        "POST", "/v1/api-keys", 201, admin,
        json={"name": "doc", "permissions": ["read"], "metadata": {"a": 1, "b": None},
              "allowed_ips": ["10.0.0.0/8"], "rate_limit": "10/second", "expires_in": "1d"},
    )  # fmt: skip
    new_id = created["data"]["id"]
    await call("POST", "/v1/api-keys", 400, admin, json={"name": "x", "nope": 1})
    await call("POST", "/v1/api-keys", 403, bearer(reader), json={"name": "x"})
    await call("POST", "/v1/api-keys", 413, admin, json={"name": "x" * 70_000})
    await call("GET", "/v1/api-keys", 200, admin)
    await call("GET", "/v1/api-keys?limit=1", 200, admin)
    await call("GET", "/v1/api-keys?limit=1000", 400, admin)
    await call("GET", "/v1/api-keys/{id}", 200, admin, key_id=new_id)
    await call("GET", "/v1/api-keys/{id}", 404, admin, key_id="key_missing")
    await call("PATCH", "/v1/api-keys/{id}", 200, admin, key_id=new_id, json={"name": "n"})
    await call("GET", "/v1/api-keys/{id}/usage", 200, admin, key_id=new_id)
    await call("POST", "/v1/api-keys/{id}/rotate", 201, admin, key_id=new_id, json={})
    await call("DELETE", "/v1/api-keys/{id}", 200, admin, key_id=new_id)
    await call("GET", "/v1/audit", 200, admin)
    await call("GET", "/v1/events", 200, admin)
    await call("GET", "/v1/events?type=alert.&limit=100", 200, admin)
    await call("GET", "/v1/events?limit=0", 400, admin)
    assert len(checked) == 20

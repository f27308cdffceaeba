"""The forward-auth examples in deploy/examples agree with what the gateway sends and reads.

nginx's example runs for real in test_forward_auth_nginx.py. Traefik and
Envoy binaries cannot be installed here, so their configs (and the
ingress-nginx Ingress) are checked against the gateway's own contract: the
check path, the identity headers it answers with (taken from the code, not
retyped), and the header names its dialects of the original request use; the
Ingress also validates against the Kubernetes schemas.
"""

from __future__ import annotations

import re

import kubernetes_validate
import yaml
from conftest import ROOT

from gateway.forward_auth import CHECK_PATH, METHOD_HEADERS, URI_HEADERS
from gateway.keys.model import CompiledKey, KeyRecord

EXAMPLES = ROOT / "deploy" / "examples"
CHECK = "/v1" + CHECK_PATH


def identity_headers() -> set[str]:
    record = KeyRecord(
        id="key_x", account_id="acct_x", name="n", mode="live", hash="h", prefix="sk_live_",
        last4="abcd", permissions=("read",), metadata={"a": 1},
    )  # fmt: skip
    return {name for name, _ in CompiledKey.build(record, "default").upstream_headers}


def test_identity_headers_are_the_six_of_the_contract():
    assert identity_headers() == {
        "X-Gateway-Key-Id", "X-Gateway-Key-Name", "X-Gateway-Key-Mode",
        "X-Gateway-Account-Id", "X-Gateway-Permissions", "X-Gateway-Key-Metadata",
    }  # fmt: skip


def test_nginx_example_sets_and_clears_every_identity_header():
    text = (EXAMPLES / "nginx" / "keygate.conf").read_text()
    set_upstream = set(re.findall(r"proxy_set_header\s+(X-Gateway-[\w-]+)\s+\$kg_", text))
    assert set_upstream == identity_headers()
    read = set(re.findall(r"\$upstream_http_(x_gateway_[a-z_]+)", text))
    assert {h.lower().replace("-", "_") for h in identity_headers()} <= read
    assert f"proxy_pass http://keygate{CHECK};" in text
    assert "X-Original-URI    $request_uri" in text and "X-Original-URI" in URI_HEADERS
    assert "X-Original-Method $request_method" in text and "X-Original-Method" in METHOD_HEADERS


def test_traefik_example_copies_identity_and_strips_the_clients():
    for name in ("dynamic.yaml", "middleware.yaml"):
        doc = yaml.safe_load((EXAMPLES / "traefik" / name).read_text())
        auth = (
            doc["spec"]["forwardAuth"]
            if "spec" in doc
            else doc["http"]["middlewares"]["keygate"]["forwardAuth"]
        )
        assert auth["address"].endswith(CHECK)
        assert auth["trustForwardHeader"] is False
        pattern = re.compile(auth["authResponseHeadersRegex"])
        assert all(pattern.search(h) for h in identity_headers())
        assert not pattern.search("Authorization") and not pattern.search("X-Forwarded-For")
        assert auth["authResponseHeaders"] == ["X-Request-Id"]
    # What Traefik sends describes the original request in the headers the gateway reads.
    assert "X-Forwarded-Uri" in URI_HEADERS and "X-Forwarded-Method" in METHOD_HEADERS


def _filters(envoy: dict) -> list[dict]:
    listener = envoy["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["http_filters"]


def test_envoy_example_asks_the_check_path_and_strips_client_identity_first():
    envoy = yaml.safe_load((EXAMPLES / "envoy" / "envoy.yaml").read_text())
    filters = _filters(envoy)
    names = [f["name"] for f in filters]
    assert names == [
        "envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz", "envoy.filters.http.router",
    ]  # fmt: skip
    removed = {m["remove"] for m in filters[0]["typed_config"]["mutations"]["request_mutations"]}
    assert removed == {h.lower() for h in identity_headers()}
    authz = filters[1]["typed_config"]
    assert authz["failure_mode_allow"] is False
    service = authz["http_service"]
    assert service["path_prefix"] == CHECK  # the original path follows: the gateway's fallback
    sent = {p["exact"] for p in service["authorization_request"]["allowed_headers"]["patterns"]}
    assert {
        "authorization",
        "referer",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
    } <= sent
    upstream = service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert {"prefix": "x-gateway-"} in upstream and {"exact": "x-request-id"} in upstream
    clusters = {c["name"] for c in envoy["static_resources"]["clusters"]}
    assert service["server_uri"]["cluster"] in clusters


def test_ingress_nginx_example_is_a_valid_ingress_naming_every_identity_header():
    ingress = yaml.safe_load((EXAMPLES / "ingress-nginx" / "ingress.yaml").read_text())
    kubernetes_validate.validate(ingress, "1.37.0", strict=True)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith(CHECK)
    copied = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")
    assert copied == [h.strip() for h in copied]
    assert set(copied) == identity_headers() | {"X-Request-Id"}
    # ingress-nginx describes the original request as X-Original-URL + X-Original-Method.
    assert "X-Original-URL" in URI_HEADERS and "X-Original-Method" in METHOD_HEADERS

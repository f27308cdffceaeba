"""The forward-auth examples in deploy/examples agree with what the gateway sends and reads.

nginx's example runs for real in test_forward_auth_nginx.py. Traefik and
Envoy binaries cannot be installed here, so their configs (and the
ingress-nginx Ingress) are checked against the gateway's own contract: the
check path, the identity headers it answers with (taken from the code, not
retyped), and the header names its dialects of the original request use; the
Ingress also validates against the Kubernetes schemas.

Every example describes the original request in the headers its proxy sets
and blanks every other description header the gateway reads (SPEC §11): the
proxies pass the client's own headers to the check, and a client must not
describe another request than its own.
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
DESCRIPTIONS = {name.lower() for name in URI_HEADERS + METHOD_HEADERS}


def blanks_the_rest(described: set[str], blanked: set[str], proxy: str) -> None:
    """The proxy sets ``described``, blanks ``blanked``: together every description, once."""
    described = {name.lower() for name in described}
    blanked = {name.lower() for name in blanked}
    assert described <= DESCRIPTIONS, proxy
    assert not described & blanked, proxy
    assert described | blanked == DESCRIPTIONS, (proxy, DESCRIPTIONS - described - blanked)


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


def test_nginx_example_checks_every_location_that_reaches_the_app():
    """The HTTP location and the WebSocket one alike: auth_request, the refusals, the
    identity copied from the check, and no client Authorization passed on."""
    text = (EXAMPLES / "nginx" / "keygate.conf").read_text()
    blocks = dict(re.findall(r"\n    location ([^{]+?) \{(.*?)\n    \}", text, re.S))
    to_app = {where: body for where, body in blocks.items() if "proxy_pass http://app;" in body}
    assert set(to_app) == {"/", "/ws/"}
    wanted = {h.lower().replace("-", "_") for h in identity_headers()}
    for where, body in to_app.items():
        assert "auth_request /_keygate_check;" in body, where
        assert "error_page 401 403 500 = @keygate_refused;" in body, where
        copied = set(re.findall(r"auth_request_set\s+\$\w+\s+\$upstream_http_(\w+);", body))
        assert wanted <= copied, where
        sent = set(re.findall(r"proxy_set_header\s+(X-Gateway-[\w-]+)\s+\$kg_", body))
        assert sent == identity_headers(), where
        assert re.search(r'proxy_set_header\s+Authorization\s+"";', body), where
    ws = to_app["/ws/"]
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", ws)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", ws)
    assert "proxy_http_version 1.1;" in ws
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{", text)


def _check_location(text: str) -> dict[str, str]:
    """The headers the example sets on the decision request, by lower-cased name."""
    block = re.search(r"location = /_keygate_check \{(.*?)\n    \}", text, re.S)
    assert block is not None
    body = block.group(1)
    assert f"proxy_pass http://keygate{CHECK};" in body
    return {
        name.lower(): value
        for name, value in re.findall(r"^\s*proxy_set_header\s+(\S+)\s+(.+?);\s*$", body, re.M)
    }


def test_nginx_example_describes_the_request_and_blanks_the_other_descriptions():
    text = (EXAMPLES / "nginx" / "keygate.conf").read_text()
    sent = _check_location(text)
    assert sent["x-original-uri"] == "$request_uri"
    assert sent["x-original-method"] == "$request_method"
    assert sent["x-forwarded-proto"] == "$scheme"
    assert sent["x-forwarded-host"] == "$host"
    assert sent["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    described = {n for n in DESCRIPTIONS if n in sent and sent[n] != '""'}
    blanked = {n for n in DESCRIPTIONS if sent.get(n) == '""'}
    blanks_the_rest(described, blanked, "nginx")
    # The check never receives the client's body.
    assert "proxy_pass_request_body off;" in text and sent["content-length"] == '""'


def _traefik_middlewares(name: str) -> dict[str, dict]:
    docs = list(yaml.safe_load_all((EXAMPLES / "traefik" / name).read_text()))
    if name == "dynamic.yaml":
        (doc,) = docs
        assert doc["http"]["routers"]["api"]["middlewares"] == ["keygate"]
        return doc["http"]["middlewares"]
    assert {d["kind"] for d in docs} == {"Middleware"}
    assert len({d["metadata"]["namespace"] for d in docs}) == 1
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def _traefik_chain(middlewares: dict[str, dict]) -> list[dict]:
    chain = middlewares["keygate"]["chain"]["middlewares"]
    return [middlewares[m if isinstance(m, str) else m["name"]] for m in chain]


def test_traefik_example_blanks_the_descriptions_traefik_does_not_set_before_asking():
    # Traefik's ForwardAuth sets X-Forwarded-Method and X-Forwarded-Uri itself
    # (trustForwardHeader: false replaces a client's).
    traefik_sets = {"X-Forwarded-Method", "X-Forwarded-Uri"}
    for name in ("dynamic.yaml", "middleware.yaml"):
        clean, check = _traefik_chain(_traefik_middlewares(name))
        assert check["forwardAuth"]["trustForwardHeader"] is False
        removed = clean["headers"]["customRequestHeaders"]
        assert set(removed.values()) == {""}, name  # an empty value removes the header
        blanks_the_rest(traefik_sets, set(removed), f"traefik {name}")


def test_traefik_example_copies_identity_and_strips_the_clients():
    for name in ("dynamic.yaml", "middleware.yaml"):
        auth = _traefik_chain(_traefik_middlewares(name))[-1]["forwardAuth"]
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


def _envoy_matches(pattern: dict, name: str) -> bool:
    if pattern.get("ignore_case"):
        pattern = {k: v.lower() if isinstance(v, str) else v for k, v in pattern.items()}
    if "exact" in pattern:
        return name == pattern["exact"]
    if "prefix" in pattern:
        return name.startswith(pattern["prefix"])
    if "suffix" in pattern:
        return name.endswith(pattern["suffix"])
    if "contains" in pattern:
        return pattern["contains"] in name
    return re.fullmatch(pattern["safe_regex"]["regex"], name) is not None


def test_envoy_example_passes_no_clients_description_and_blanks_them_all():
    """Envoy describes the original request by the check's own method and path (the
    gateway's fallback), so every description header is one to blank."""
    envoy = yaml.safe_load((EXAMPLES / "envoy" / "envoy.yaml").read_text())
    request = _filters(envoy)[1]["typed_config"]["http_service"]["authorization_request"]
    for pattern in request["allowed_headers"]["patterns"]:
        passed = [name for name in DESCRIPTIONS if _envoy_matches(pattern, name)]
        assert not passed, (pattern, passed)
    added = {h["key"].lower(): h["value"] for h in request["headers_to_add"]}
    blanks_the_rest(set(), {n for n, v in added.items() if v == ""}, "envoy")


def _ingress_nginx_docs() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((EXAMPLES / "ingress-nginx" / "ingress.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs) == 2
    return by_kind["Ingress"], by_kind["ConfigMap"]


def test_ingress_nginx_example_blanks_the_descriptions_it_does_not_set():
    """ingress-nginx sets X-Original-URL and X-Original-Method on the check and passes
    the client's other headers: auth-proxy-set-headers blanks the other descriptions."""
    ingress, config_map = _ingress_nginx_docs()
    annotations = ingress["metadata"]["annotations"]
    meta = config_map["metadata"]
    # ingress-nginx reads namespace/name, in the Ingress's own namespace.
    assert meta["namespace"] == ingress["metadata"]["namespace"]
    assert annotations["nginx.ingress.kubernetes.io/auth-proxy-set-headers"] == (
        f"{meta['namespace']}/{meta['name']}"
    )
    assert set(config_map["data"].values()) == {""}
    blanks_the_rest({"X-Original-URL", "X-Original-Method"}, set(config_map["data"]), "ingress")


def test_ingress_nginx_example_is_a_valid_ingress_naming_every_identity_header():
    ingress, _ = _ingress_nginx_docs()
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith(CHECK)
    copied = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")
    assert copied == [h.strip() for h in copied]
    assert set(copied) == identity_headers() | {"X-Request-Id"}
    # ingress-nginx describes the original request as X-Original-URL + X-Original-Method.
    assert "X-Original-URL" in URI_HEADERS and "X-Original-Method" in METHOD_HEADERS

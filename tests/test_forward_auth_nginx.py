"""Forward auth behind a real nginx (``auth_request``), with the shipped example config.

nginx runs ``deploy/examples/nginx/keygate.conf`` as shipped, only its
addresses rewritten to this test's loopback ports, in front of a real upstream.
Every request is also sent straight to the gateway's proxy mode: the client
must see the same status, ``WWW-Authenticate``, ``X-Request-Id``,
``Retry-After``, ``Allow`` and JSON envelope either way, and the upstream the
same ``X-Gateway-*`` identity. The example's WebSocket location is run in front of a
real WebSocket app: a handshake with a valid key reaches it with the identity and
relays messages, a refused one never reaches it.

The client connects from 127.0.0.3 (or .4), so that nginx (127.0.0.1, a
trusted proxy) and the client are different addresses, as they are in a
deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, bearer, free_port, new_account, new_key, upstream_url
from http_raw import RawResponse, raw_request
from multidict import CIMultiDict
from ws_upstream import WsUpstream

from gateway.keys.service import CLI

EXAMPLE = ROOT / "deploy" / "examples" / "nginx" / "keygate.conf"
# The example's lines that blank the descriptions of the original request nginx does not set.
BLANKING = (
    'proxy_set_header X-Forwarded-Uri    "";',
    'proxy_set_header X-Forwarded-Method "";',
    'proxy_set_header X-Original-URL     "";',
)
# What a client may send to describe another request than its own.
LIES = [
    ("X-Forwarded-Uri", "/public/x"),
    ("X-Forwarded-Method", "GET"),
    ("X-Original-URI", "/public/x"),
    ("X-Original-Method", "GET"),
    ("X-Original-URL", "http://api.example.com/public/x"),
]
REFUSAL_HEADERS = ("WWW-Authenticate", "X-Request-Id", "Retry-After", "Allow", "Content-Type")
CLIENT = "127.0.0.3"
OTHER_CLIENT = "127.0.0.4"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.fail("nginx is not installed: run scripts/system-deps.sh (Debian package nginx)")
    return found


def render_example(
    gateway_port: int, app_port: int, listen_port: int, without: tuple[str, ...] = ()
) -> str:
    """The example with this test's addresses, less any line holding one of ``without``."""
    text = EXAMPLE.read_text()
    for line in without:
        assert text.count(line) == 1, f"the example no longer holds {line!r}"
        text = "".join(kept for kept in text.splitlines(True) if line not in kept)
    for old, new in (
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway_port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};"),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
    ):
        assert text.count(old) == 1, f"the example no longer holds {old!r}"
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(
        self, workdir: Path, gateway_port: int, app_port: int, without: tuple[str, ...] = ()
    ):
        self.workdir = workdir
        self.port = free_port()
        self.binary = nginx_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "keygate.conf").write_text(
            render_example(gateway_port, app_port, self.port, without)
        )
        temp = "\n".join(
            f"  {kind}_temp_path {workdir / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"{user}worker_processes 1;\nerror_log {workdir / 'error.log'} warn;\n"
            f"pid {workdir / 'nginx.pid'};\nevents {{ worker_connections 256; }}\n"
            f"http {{\n  access_log off;\n{temp}\n  include {workdir / 'keygate.conf'};\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        base = [self.binary, "-p", str(self.workdir), "-c", str(self.conf)]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the example:\n{check.stderr}"
        self.proc = subprocess.Popen(
            [*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError("nginx did not open its port")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator:
    started: list[Nginx] = []

    def make(gateway_port: int, app_port: int, without: tuple[str, ...] = ()) -> Nginx:
        server = Nginx(tmp_path / f"nginx{len(started)}", gateway_port, app_port, without)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def setup(start_gateway, base_config, upstream, nginx):
    url = upstream_url(upstream)
    gw = await start_gateway(
        base_config(
            server={"trusted_proxies": ["127.0.0.1/32"]},
            routes=[
                {
                    "name": "users",
                    "match": "/v1/users",
                    "upstream": url,
                    "methods": ["GET", "POST", "DELETE"],
                    "permissions": {"GET": "read", "*": "write"},
                },
                {"name": "public", "match": "/public", "upstream": url, "auth": "none"},
            ],
        )
    )
    front = await asyncio.to_thread(nginx, port_of(gw), upstream.port)
    return gw, front


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(CLIENT, 0))) as s:
        yield s


async def fetch(session, method, url, headers=None, data=None):
    async with session.request(method, url, headers=headers or {}, data=data) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def port_of(gw) -> int:
    """The gateway's public port, from the URL the tests reach it at."""
    return int(gw.url.rsplit(":", 1)[1])


def rid() -> str:
    return "req-" + uuid.uuid4().hex


def identity(body: bytes) -> dict[str, str]:
    return {
        k.lower(): v for k, v in json.loads(body)["headers"] if k.lower().startswith("x-gateway-")
    }


async def same_refusal(client, gw, front, method, uri, headers, code, status):
    """nginx and the proxy mode refuse alike; returns nginx's headers."""
    headers = {"X-Request-Id": rid(), **headers}
    p_status, p_headers, p_body = await fetch(client, method, gw.url + uri, headers)
    n_status, n_headers, n_body = await fetch(client, method, front.url + uri, headers)
    assert p_status == status and json.loads(p_body)["error"]["code"] == code
    assert n_status == p_status, (n_status, n_body, front.error_log()[-2000:])
    assert json.loads(n_body) == json.loads(p_body)
    for name in REFUSAL_HEADERS:
        assert n_headers.getall(name, []) == p_headers.getall(name, []), name
    assert n_headers["X-Request-Id"] == headers["X-Request-Id"]
    return n_headers


async def test_valid_key_reaches_the_upstream_with_the_proxy_modes_identity(setup, client):
    gw, front = setup
    account = await new_account(gw.service)
    key_id, secret = await new_key(
        gw.service, account, permissions=["read"], metadata={"team": "a"}
    )
    given = rid()
    spoof = {"X-Gateway-Key-Id": "key_forged", "X-Gateway-Account-Id": "acct_forged"}
    headers = {**bearer(secret), "X-Request-Id": given, **spoof}
    p_status, _, p_body = await fetch(client, "GET", gw.url + "/v1/users/7?x=1", headers)
    n_status, n_headers, n_body = await fetch(client, "GET", front.url + "/v1/users/7?x=1", headers)
    assert p_status == n_status == 200
    assert identity(n_body) == identity(p_body)
    assert identity(n_body)["x-gateway-key-id"] == key_id
    assert identity(n_body)["x-gateway-account-id"] == account
    assert identity(n_body)["x-gateway-key-metadata"] == '{"team":"a"}'
    seen = CIMultiDict(json.loads(n_body)["headers"])
    assert "Authorization" not in seen
    assert seen["X-Request-Id"] == given
    assert n_headers.getall("X-Request-Id") == [given]
    assert json.loads(n_body)["path"] == "/v1/users/7" and json.loads(n_body)["query"] == "x=1"


async def test_a_generated_request_id_reaches_client_and_upstream_alike(setup, client):
    gw, front = setup
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["write"])
    status, headers, body = await fetch(
        client,
        "POST",
        front.url + "/v1/users",
        {**bearer(secret), "X-Request-Id": "bad id!"},
        b"{}",
    )
    assert status == 200
    generated = headers["X-Request-Id"]
    assert generated.startswith("req_")
    assert CIMultiDict(json.loads(body)["headers"])["X-Request-Id"] == generated
    assert json.loads(body)["body"] == "{}"  # the body reaches the app, not the check


async def test_missing_malformed_invalid_revoked_and_expired_keys(setup, client):
    gw, front = setup
    h = await same_refusal(client, gw, front, "GET", "/v1/users", {}, "missing_api_key", 401)
    assert h.getall("WWW-Authenticate") == ['Bearer realm="api"']
    await same_refusal(
        client,
        gw,
        front,
        "GET",
        "/v1/users",
        {"Authorization": "Basic eDp5"},
        "invalid_authorization_header",
        401,
    )
    await same_refusal(
        client, gw, front, "GET", "/v1/users", bearer("sk_live_" + "x" * 38), "invalid_api_key", 401
    )
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, permissions=["read"])
    assert (await fetch(client, "GET", front.url + "/v1/users", bearer(secret)))[0] == 200
    await gw.service.revoke_key(CLI, key_id)
    deadline = time.monotonic() + 1.0
    while (await fetch(client, "GET", front.url + "/v1/users", bearer(secret)))[0] == 200:
        assert time.monotonic() < deadline, "revoked key still passes nginx after a second"
        await asyncio.sleep(0.02)
    await same_refusal(
        client, gw, front, "GET", "/v1/users", bearer(secret), "revoked_api_key", 401
    )
    old_id, old = await new_key(gw.service, account, permissions=["read"])
    record = await gw.runtime.store.get_key(old_id)
    await gw.runtime.store.save_key(record.evolve(expires_at="2020-01-01T00:00:00Z"))
    await same_refusal(client, gw, front, "GET", "/v1/users", bearer(old), "expired_api_key", 401)


async def test_ip_restriction_sees_the_client_behind_nginx(setup, client):
    gw, front = setup
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"], allowed_ips=[CLIENT])
    status, _, body = await fetch(client, "GET", front.url + "/v1/users", bearer(secret))
    assert status == 200 and identity(body)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(OTHER_CLIENT, 0))
    ) as other:
        forged = {**bearer(secret), "X-Forwarded-For": CLIENT}  # a client's claim changes nothing
        await same_refusal(other, gw, front, "GET", "/v1/users", forged, "ip_not_allowed", 403)


async def test_referrer_endpoint_and_permission_restrictions_on_the_original_uri(setup, client):
    gw, front = setup
    account = await new_account(gw.service)
    _, secret = await new_key(
        gw.service,
        account,
        permissions=["read"],
        allowed_referrers=["*.example.com"],
        allowed_endpoints=["/v1/users/*"],
    )
    ok = {**bearer(secret), "Referer": "https://app.example.com/x"}
    for uri in ("/v1/users/7", "/v1/./users//7", "/v1/users/7?to=/v1/other"):
        assert (await fetch(client, "GET", front.url + uri, ok))[0] == 200, uri
    await same_refusal(
        client,
        gw,
        front,
        "GET",
        "/v1/users/7",
        {**ok, "Referer": "https://example.com.evil.net/"},
        "referrer_not_allowed",
        403,
    )
    await same_refusal(
        client, gw, front, "GET", "/v1/users/7/keys", ok, "endpoint_not_allowed", 403
    )
    h = await same_refusal(
        client, gw, front, "POST", "/v1/users/7", ok, "insufficient_permissions", 403
    )
    assert h["WWW-Authenticate"] == 'Bearer realm="api", error="insufficient_scope", scope="write"'


async def test_refusals_auth_request_cannot_pass_keep_their_status(setup, client):
    """400, 404 and 405 reach nginx as 500 from auth_request; the example restores them."""
    gw, front = setup
    await same_refusal(client, gw, front, "GET", "/nowhere", {}, "route_not_found", 404)
    h = await same_refusal(client, gw, front, "PATCH", "/v1/users/1", {}, "method_not_allowed", 405)
    assert h["Allow"] == "DELETE, GET, HEAD, POST"
    await same_refusal(client, gw, front, "GET", "/v1/users/a%2fb", {}, "bad_request", 400)


async def test_auth_none_route_passes_with_no_identity(setup, client):
    gw, front = setup
    forged = {"Authorization": "Basic zz", "X-Gateway-Key-Id": "key_forged"}
    status, headers, body = await fetch(client, "GET", front.url + "/public/x", forged)
    assert status == 200
    assert identity(body) == {}
    assert "Authorization" not in CIMultiDict(json.loads(body)["headers"])
    assert headers["X-Request-Id"].startswith("req_")


async def test_gateway_unreachable_refuses_rather_than_passes(upstream, nginx, client):
    front = await asyncio.to_thread(nginx, free_port(), upstream.port)
    status, headers, body = await fetch(client, "GET", front.url + "/public/x")
    assert status == 503
    assert json.loads(body)["error"]["code"] == "auth_backend_unavailable"


async def test_rate_limited_key_gets_429_with_retry_after_and_limit_headers(
    start_gateway, base_config, upstream, nginx, client
):
    gw = await start_gateway(
        base_config(
            server={"trusted_proxies": ["127.0.0.1/32"]},
            routes=[
                {
                    "name": "users",
                    "match": "/v1/users",
                    "upstream": upstream_url(upstream),
                    "rate_limit": "2/hour",
                }
            ],
        )
    )
    front = await asyncio.to_thread(nginx, port_of(gw), upstream.port)
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account)
    seen = []
    for _ in range(2):
        status, headers, _ = await fetch(client, "GET", front.url + "/v1/users", bearer(secret))
        seen.append(
            (status, headers.get("X-RateLimit-Remaining"), headers.get("X-RateLimit-Limit"))
        )
        assert headers["RateLimit-Policy"] and headers["RateLimit"]
    assert seen == [(200, "1", "2"), (200, "0", "2")]
    given = {**bearer(secret), "X-Request-Id": rid()}
    p_status, p_headers, p_body = await fetch(client, "GET", gw.url + "/v1/users", given)
    n_status, n_headers, n_body = await fetch(client, "GET", front.url + "/v1/users", given)
    assert p_status == n_status == 429, front.error_log()[-2000:]
    assert n_headers.getall("X-Request-Id") == [given["X-Request-Id"]]
    assert abs(int(n_headers["Retry-After"]) - int(p_headers["Retry-After"])) <= 1
    assert n_headers["X-RateLimit-Remaining"] == "0"
    assert "WWW-Authenticate" not in n_headers
    direct, relayed = json.loads(p_body), json.loads(n_body)
    for body in (direct, relayed):
        body["error"]["details"].pop("retry_after")
    assert relayed == direct and relayed["error"]["code"] == "rate_limit_exceeded"


def reached_the_app(response: RawResponse) -> bool:
    """The upstream's echo (a JSON object with the path it was asked for), not a refusal."""
    if response.status != 200:
        return False
    try:
        return "path" in response.json()
    except ValueError:
        return False


def code_of(response: RawResponse) -> str:
    return response.json()["error"]["code"]


@pytest.mark.parametrize("lie", LIES, ids=[name for name, _ in LIES])
async def test_a_client_sent_description_of_another_request_changes_nothing(setup, lie):
    """auth_request copies the client's headers into the check: a keyless request to a
    key-protected path, claiming to be a request for a public one, is still refused as
    the proxy mode refuses it, and a read-only key cannot POST by claiming a GET."""
    gw, front = setup
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    for method, headers, code, status in (
        ("GET", [lie], "missing_api_key", 401),
        ("POST", [lie, ("Authorization", f"Bearer {secret}")], "insufficient_permissions", 403),
    ):
        direct = await raw_request(gw.url, method, "/v1/users/7", headers)
        behind = await raw_request(front.url, method, "/v1/users/7", headers)
        assert (direct.status, code_of(direct)) == (status, code), (lie, method)
        assert not reached_the_app(behind), (lie, method, behind.body)
        assert (behind.status, code_of(behind)) == (status, code), (lie, front.error_log()[-2000:])


async def test_were_a_description_to_get_through_the_gateway_refuses_the_disagreement(
    start_gateway, base_config, upstream, nginx
):
    """The example less its blanking lines: nginx now passes the client's X-Forwarded-Uri
    and X-Forwarded-Method beside its own X-Original-URI and X-Original-Method, and the
    gateway answers 400 rather than believing either."""
    url = upstream_url(upstream)
    gw = await start_gateway(
        base_config(
            server={"trusted_proxies": ["127.0.0.1/32"]},
            routes=[
                {"name": "users", "match": "/v1/users", "upstream": url},
                {"name": "public", "match": "/public", "upstream": url, "auth": "none"},
            ],
        )
    )
    front = await asyncio.to_thread(nginx, port_of(gw), upstream.port, BLANKING)
    for lie in (("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "GET")):
        behind = await raw_request(front.url, "DELETE", "/v1/users/7", [lie])
        assert not reached_the_app(behind), (lie, behind.body)
        assert (behind.status, code_of(behind)) == (400, "bad_request"), lie
        assert behind.json()["meta"]["request_id"] == behind.headers["X-Request-Id"]
    # Descriptions that agree with nginx's are no disagreement.
    agree = [("X-Forwarded-Uri", "/public/x?a=1"), ("X-Forwarded-Method", "GET")]
    assert reached_the_app(await raw_request(front.url, "GET", "/public/x?a=1", agree))


@pytest.mark.parametrize(
    "target",
    [
        "/public/x#/../../v1/users/7",  # nginx routes on /public/x and forwards it all
        "/public/\xc3\xa9",  # raw UTF-8 bytes: nginx accepts and forwards them
        "/public/\xff",
    ],
    ids=["fragment", "utf-8", "non-utf-8"],
)
async def test_a_target_nginx_forwards_as_it_came_is_judged_strictly(setup, target):
    """nginx hands over $request_uri as the client sent it; the gateway refuses a fragment
    or a non-ASCII byte in it (SPEC §6) instead of judging a path of its own making."""
    _, front = setup
    behind = await raw_request(front.url, "GET", target)
    assert not reached_the_app(behind), behind.body
    assert (behind.status, code_of(behind)) == (400, "bad_request"), front.error_log()[-2000:]


# -- WebSockets behind auth_request ---------------------------------------------------


@pytest.fixture
async def ws_setup(start_gateway, base_config, nginx) -> AsyncIterator[tuple]:
    """The example's /ws/ location in front of a real WebSocket app; the gateway's route
    for it is a plain one (forward auth only decides the handshake)."""
    app = WsUpstream()
    url = await app.start()
    gw = await start_gateway(
        base_config(
            server={"trusted_proxies": ["127.0.0.1/32"]},
            routes=[
                {"name": "ws", "match": "/ws", "upstream": url, "permissions": {"GET": "read"}}
            ],
        )
    )
    assert app.server is not None
    front = await asyncio.to_thread(nginx, port_of(gw), app.server.port)
    yield gw, front, app
    await app.server.close()


def ws_url(front: Nginx, path: str) -> str:
    return front.url.replace("http://", "ws://", 1) + path


async def refused_handshake(client, url, headers, protocols=()) -> aiohttp.WSServerHandshakeError:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with client.ws_connect(url, headers=headers, protocols=protocols):
            pass
    return refused.value


async def test_websocket_with_a_valid_key_reaches_the_app_with_the_identity(ws_setup, client):
    gw, front, app = ws_setup
    account = await new_account(gw.service)
    key_id, secret = await new_key(gw.service, account, permissions=["read"])
    given = rid()
    forged = {"X-Gateway-Key-Id": "key_forged", "X-Gateway-Account-Id": "acct_forged"}
    headers = {**bearer(secret), "X-Request-Id": given, **forged}
    async with client.ws_connect(
        ws_url(front, "/ws/chat?room=1"), headers=headers, protocols=("chat",)
    ) as ws:
        assert ws.protocol == "chat"  # the app's choice reaches the client
        for text in ("hello", "again"):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=5) == "echo:" + text
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01"
        await ws.send_str("close:4001")  # the app closes; its code reaches the client
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 4001)
    (handshake,) = app.handshakes
    seen = CIMultiDict(handshake["headers"])
    assert handshake["path"] == "/ws/chat?room=1"
    assert seen["X-Gateway-Key-Id"] == key_id
    assert seen["X-Gateway-Account-Id"] == account
    assert seen["X-Gateway-Permissions"] == "read"
    assert seen["X-Request-Id"] == given
    assert "Authorization" not in seen
    assert seen["Upgrade"].lower() == "websocket"


async def test_websocket_without_a_key_is_refused_before_the_app(ws_setup, client):
    gw, front, app = ws_setup
    given = rid()
    refused = await refused_handshake(client, ws_url(front, "/ws/chat"), {"X-Request-Id": given})
    assert refused.status == 401, front.error_log()[-2000:]
    assert refused.headers is not None
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert refused.headers["X-Request-Id"] == given
    assert app.handshakes == []


async def test_websocket_key_as_a_subprotocol_is_not_read_behind_forward_auth(ws_setup, client):
    """The check reads Authorization only: nginx copies the client's headers into it, and
    a ``bearer.<key>`` subprotocol is no key there (the proxy mode's form, SPEC §13)."""
    gw, front, app = ws_setup
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["read"])
    refused = await refused_handshake(
        client, ws_url(front, "/ws/chat"), {}, protocols=("chat", "bearer." + secret)
    )
    assert refused.status == 401, front.error_log()[-2000:]
    assert app.handshakes == []


async def test_websocket_refusals_carry_the_gateways_decision(ws_setup, client):
    gw, front, app = ws_setup
    account = await new_account(gw.service)
    _, secret = await new_key(gw.service, account, permissions=["webhook"])
    refused = await refused_handshake(client, ws_url(front, "/ws/chat"), bearer(secret))
    assert refused.status == 403
    assert refused.headers is not None
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert app.handshakes == []

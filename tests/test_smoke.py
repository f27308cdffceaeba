"""The gateway end to end on a real Redis and a real upstream: the first things a user tries."""

from __future__ import annotations

from conftest import bearer, new_account, new_key, upstream_url


async def test_valid_key_reaches_upstream_with_identity_headers(
    start_gateway, base_config, upstream, http
):
    gw = await start_gateway(
        base_config(
            routes=[{"name": "users", "match": "/v1/users", "upstream": upstream_url(upstream)}]
        )
    )
    account = await new_account(gw.service)
    key_id, secret = await new_key(
        gw.service, account, permissions=["read"], metadata={"team": "a"}
    )
    async with http.get(gw.url + "/v1/users/7?x=1", headers=bearer(secret)) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert resp.headers["X-Request-Id"].startswith("req_")
    seen = {k.lower(): v for k, v in body["headers"]}
    assert body["path"] == "/v1/users/7"
    assert body["query"] == "x=1"
    assert seen["x-gateway-key-id"] == key_id
    assert seen["x-gateway-account-id"] == account
    assert seen["x-gateway-key-mode"] == "live"
    assert seen["x-gateway-permissions"] == "read"
    assert seen["x-gateway-key-metadata"] == '{"team":"a"}'
    assert "authorization" not in seen


async def test_missing_key_is_401_with_bare_challenge(start_gateway, base_config, upstream, http):
    gw = await start_gateway(
        base_config(
            routes=[{"name": "users", "match": "/v1/users", "upstream": upstream_url(upstream)}]
        )
    )
    async with http.get(gw.url + "/v1/users") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        body = await resp.json()
    assert body["error"]["code"] == "missing_api_key"
    assert body["error"]["type"] == "authentication_error"
    assert body["meta"]["request_id"] == resp.headers["X-Request-Id"]


def test_the_demo_runs_as_the_readme_says(tmp_path):
    """``gateway demo`` (what scripts/demo.sh runs): its own store, upstream and keys, and the
    requests it prints to try answer as it says."""
    import re
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from realparts import free_port, terminate

    port, admin_port, upstream_port = free_port(), free_port(), free_port()
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port),
             "--admin-port", str(admin_port), "--upstream-port", str(upstream_port),
             "--data-dir", str(tmp_path / "data")],
            stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"

            def get(path: str, key: str | None = None) -> tuple[int, bytes]:
                request = urllib.request.Request(base + path)
                if key:
                    request.add_header("Authorization", f"Bearer {key}")
                try:
                    with urllib.request.urlopen(request, timeout=5) as resp:
                        return resp.status, resp.read(200)
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, out.read_text()
                try:
                    if get("/public/x")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
            printed = out.read_text()
            keys = re.findall(r"Bearer (sk_(?:live|test)_\w+)", printed)
            admin = next(k for k in keys if k.startswith("sk_live_"))
            test = next(k for k in keys if k.startswith("sk_test_"))
            assert get("/v1/hello", admin)[0] == 200
            assert get("/v1/hello", test)[0] == 200
            assert get("/v1/hello")[0] == 401
            assert get("/v1/auth/verify", test)[0] == 200
            assert get("/v1/api-keys", admin)[0] == 200
            status, body = get("/v1/feed/stream", test)
            assert status == 200 and b'data: {"n": 0}' in body, body
            assert get("/dashboard")[0] == 200
        finally:
            terminate(proc, 30)
    assert proc.returncode == 0, out.read_text()

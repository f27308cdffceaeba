"""Microseconds per request of each step of the gateway's hot path, in-process.

Times the real functions with the objects the gateway builds (a compiled key
in the key cache, the routes of a config, the access log, the metrics) on a
request like the benchmark's, so a profile's percentages can be turned into
costs, and a change to one step measured without wrk's noise.

    .venv/bin/python bench/micro.py            # uvloop, 20,000 iterations per step
    .venv/bin/python bench/micro.py -n 50000

Steps that move or vanish as the code changes are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import time
from collections.abc import Callable
from types import SimpleNamespace

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

ROWS: list[tuple[str, float]] = []


def timed(name: str, fn: Callable[[], object], n: int) -> None:
    for _ in range(min(n, 2000)):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    ROWS.append((name, best * 1e6))


async def atimed(name: str, fn: Callable[[], object], n: int) -> None:
    for _ in range(min(n, 2000)):
        await fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        best = min(best, (time.perf_counter() - start) / n)
    ROWS.append((name, best * 1e6))


def build(n: int) -> None:  # noqa: PLR0915 - one linear script
    from gateway.config.schema import Config
    from gateway.keys.cache import KeyCache
    from gateway.keys.format import generate_secret, hash_secret, parse_mode
    from gateway.keys.model import CompiledKey, KeyRecord
    from gateway.pipeline import Pipeline
    from gateway.proxy import headers as hdrs
    from gateway.proxy.paths import normalise_path
    from gateway.runtime import Snapshot
    from gateway.telemetry.accesslog import AccessLog
    from gateway.telemetry.metrics import Metrics

    config = Config.model_validate(
        {
            "routes": [
                {
                    "name": "bench",
                    "match": "/bench",
                    "upstream": "http://127.0.0.1:8000",
                    "permissions": {"GET": "read", "*": "write"},
                }
            ]
        }
    )
    snapshot = Snapshot.build(config)
    secret = generate_secret("sk", "live")
    key_hash = hash_secret(secret)
    record = KeyRecord(
        id="key_0123456789abcdefghij",
        account_id="acct_0123456789abcdefghij",
        name="bench-reader",
        mode="live",
        hash=key_hash,
        prefix="sk_live_",
        last4=secret[-4:],
        permissions=("read",),
    )
    compiled = CompiledKey.build(record, "default")

    async def loader(_: str):
        raise AssertionError("a cached key must not reach the store")

    cache = KeyCache(loader, ttl=3600, negative_ttl=5, max_size=1000, stale_if_error=300)
    cache.put(key_hash, compiled)
    pipeline = Pipeline(prefix="sk", cache=cache)
    wrk_headers = CIMultiDict(
        {"Host": "127.0.0.1:8080", "Authorization": f"Bearer {secret}"}
    )  # what wrk sends
    transport = SimpleNamespace(
        get_extra_info=lambda name, default=None: {"peername": ("127.0.0.1", 40000)}.get(
            name, default
        ),
        is_closing=lambda: False,
    )
    request = make_mocked_request(
        "GET", "/bench/items?page=1", headers=wrk_headers, transport=transport
    )
    peer = "127.0.0.1"

    with contextlib.suppress(ImportError, AttributeError, TypeError):
        from gateway.handler import request_id_of

        timed("handler: request_id_of (generated id)", lambda: request_id_of(request), n)
    with contextlib.suppress(ImportError, AttributeError, TypeError):
        from gateway.handler import PublicHandler

        handler = PublicHandler(SimpleNamespace(snapshot=snapshot))
        timed("handler: _precheck (limits, https, normalise)",
              lambda: handler._precheck(request, "req_x", peer), n)  # fmt: skip
    timed("paths: normalise_path", lambda: normalise_path("/bench/items"), n)
    timed("runtime: local_handler + router.match",
          lambda: (snapshot.local_handler("/bench/items"), snapshot.router.match("/bench/items")),
          n)  # fmt: skip
    route = snapshot.router.match("/bench/items")
    attempt = None
    with contextlib.suppress(ImportError, AttributeError, TypeError):
        from gateway.handler import build_attempt

        def make_attempt():
            return build_attempt(
                snapshot, route, "GET", "/bench/items", request.headers, peer, False
            )

        timed("handler: build_attempt", make_attempt, n)
        attempt = make_attempt()
    with contextlib.suppress(ImportError):
        from gateway.checks.ip import parse_ip

        timed("  of which checks.ip.parse_ip(peer)", lambda: parse_ip(peer), n)
    timed("keys.format: parse_mode (format + checksum)", lambda: parse_mode(secret, "sk"), n)
    timed("keys.format: hash_secret (sha256)", lambda: hash_secret(secret), n)

    loop = asyncio.new_event_loop()
    try:
        if attempt is not None:

            async def authenticate():
                return await pipeline.authenticate(make_attempt())

            async def auth_only():
                attempt.key = None
                return await pipeline.authenticate(attempt)

            loop.run_until_complete(atimed("pipeline: authenticate (cached key)", auth_only, n))

            async def cache_get():
                return await cache.get(key_hash)

            loop.run_until_complete(atimed("  of which cache.get (hit)", cache_get, n))
            timed("  of which restrict (status, restrictions, permission)",
                  lambda: pipeline.restrict(compiled, attempt), n)  # fmt: skip

        async def nothing():
            return None

        loop.run_until_complete(atimed("(reference: awaiting a trivial coroutine)", nothing, n))

        async def timeout_block():
            async with asyncio.timeout(30):
                pass

        loop.run_until_complete(atimed("asyncio.timeout enter+exit", timeout_block, n))
    finally:
        loop.close()

    identity = compiled.upstream_headers
    timed(
        "proxy.headers: upstream_request_headers",
        lambda: hdrs.upstream_request_headers(
            request.headers,
            forward_authorization=False,
            identity=identity,
            request_id="req_0123456789abcdef01234567",
            peer=peer,
            proto="http",
            host="127.0.0.1:8080",
        ),
        n,
    )
    upstream_response = CIMultiDict(
        [
            ("Server", "nginx/1.22.1"),
            ("Date", "Wed, 25 Nov 2026 13:00:00 GMT"),
            ("Content-Type", "application/json"),
            ("Content-Length", "200"),
            ("Connection", "keep-alive"),
        ]
    )
    timed(
        "proxy.headers: downstream_response_headers",
        lambda: hdrs.downstream_response_headers(upstream_response, keep_length=False),
        n,
    )
    metrics = Metrics()
    timed("telemetry.metrics: observe", lambda: metrics.observe("bench", "ok", 0.004, None), n)
    log = AccessLog("sk", stream=io.StringIO())

    def log_write():
        log.write(
            method="GET",
            path="/bench/items",
            status=200,
            duration=0.0042,
            request_id="req_0123456789abcdef01234567",
            client_ip=peer,
            key_id="key_0123456789abcdefghij",
            route="bench",
            code=None,
        )
        if len(log._lines) >= 1000:
            log.flush()
            log._stream = io.StringIO()

    timed("telemetry.accesslog: write (json.dumps, amortised flush)", log_write, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="iterations per step")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    build(args.n)
    width = max(len(name) for name, _ in ROWS)
    for name, us in ROWS:
        print(f"{name:<{width}}  {us:7.2f} us")


if __name__ == "__main__":
    main()

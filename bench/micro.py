"""Microseconds of the gateway's own work per request, in-process, the upstream stubbed out.

Builds the real gateway (``GatewayApp`` on the store of ``--redis-url``, else
``$REDIS_URL``, else the embedded store) with the benchmark's route, creates
keys through the key service, and calls the public port's handler directly
with requests like ``wrk``'s: every check, the usage and alert counts, the
metrics and the access log run as in ``bench/run.sh``; only the upstream
exchange (``forward``) answers at once with a fixed 200. The figures leave
out the sockets and aiohttp's parsing, so they are what the gateway's own
code costs, without ``wrk``'s noise: use them to compare two versions of the
request path, and ``bench/run.sh`` for throughput.

    .venv/bin/python bench/micro.py                 # 20,000 requests per row, best of 5
    .venv/bin/python bench/micro.py -n 50000 --rows cached_key,forward_auth
    .venv/bin/python bench/micro.py --rows cached_key --profile 30   # where it goes

The run's keys live under a key prefix of its own, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

import redis.asyncio
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import handler as handler_module  # noqa: E402
from gateway.app import GatewayApp  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.keys.service import CLI  # noqa: E402
from gateway.telemetry.accesslog import AccessLog  # noqa: E402

ROWS = ("no_key_route", "cached_key", "rate_limited", "three_windows", "forward_auth")
BODY = b'{"ok":true}'


class Transport:
    """What the handler asks of a connection's transport."""

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass


async def stub_forward(request, connection, pool, exchange) -> web.StreamResponse:
    """The upstream's answer, at once: what ``forward`` hands back for a small body."""
    exchange.upstream_seconds = 0.0001
    response = web.Response(body=BODY, content_type="application/json")
    if exchange.extra_headers:
        response.headers.update(exchange.extra_headers)
    return response


def config_data(redis_url: str | None, prefix: str) -> dict:
    data = {
        "server": {"access_log": True},
        "plans": {
            "default": {},
            "windows": {"rate_limit": ["100000/second", "10000000/hour", "100000000/day"]},
        },
        "routes": [
            {"name": "bench", "match": "/bench", "upstream": "http://127.0.0.1:9",
             "permissions": {"GET": "read", "*": "write"}},
            {"name": "open", "match": "/open", "upstream": "http://127.0.0.1:9",
             "auth": "none"},
        ],
    }  # fmt: skip
    if redis_url:
        data["redis"] = {"url": redis_url, "key_prefix": prefix}
    return data


async def measure(args: argparse.Namespace) -> list[tuple[str, float]]:
    redis_url = args.redis_url or os.environ.get("REDIS_URL")
    prefix = f"micro:{uuid.uuid4().hex[:8]}:"
    log = io.StringIO()
    config = parse_config(config_data(redis_url, prefix))
    app = GatewayApp(config)
    runtime = await app.start()
    # the lines are formatted and flushed as in production, into memory
    runtime.access_log = AccessLog(config.keys.prefix, stream=log)
    handler_module.forward = stub_forward
    try:
        service = runtime.service
        account = await service.create_account(name="micro", email="m@example.test")
        windows = await service.create_account(
            name="micro windows", email="w@example.test", plan="windows"
        )
        secrets = {}
        for name, account_id, fields in (
            ("reader", account.id, {"permissions": ["read"]}),
            ("limited", account.id, {"permissions": ["read"], "rate_limit": "100000000/minute"}),
            ("windows", windows.id, {"permissions": ["read"]}),
        ):
            _, secrets[name] = await service.create_key(CLI, account_id, {"name": name, **fields})
        handler = handler_module.PublicHandler(runtime)
        transport = Transport()

        def request(path: str, secret: str | None, extra: dict | None = None):
            headers = CIMultiDict({"Host": "127.0.0.1:8080"})
            if secret:
                headers["Authorization"] = f"Bearer {secret}"
            headers.update(extra or {})
            return make_mocked_request("GET", path, headers=headers, transport=transport)

        requests = {
            "no_key_route": request("/open/items?page=1", None),
            "cached_key": request("/bench/items?page=1", secrets["reader"]),
            "rate_limited": request("/bench/items?page=1", secrets["limited"]),
            "three_windows": request("/bench/items?page=1", secrets["windows"]),
            "forward_auth": request(
                "/v1/auth/check",
                secrets["reader"],
                {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/bench/items?page=1"},
            ),
        }
        rows = []
        for name in args.rows:
            req = requests[name]
            response = await handler(req)
            if response.status != 200:
                raise SystemExit(f"micro: {name} answered {response.status}: {response.text}")
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(args.n):
                    await handler(req)
                best = min(best, (time.perf_counter() - start) / args.n)
                runtime.access_log.flush()
                log.seek(0)
                log.truncate()
            rows.append((name, best * 1e6))
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.n):
                    await handler(req)
                profiler.disable()
                print(
                    f"-- {name}: cProfile of {args.n} requests (its overhead inflates small calls)"
                )
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
        return rows
    finally:
        await app.close()  # its last flushes write to the store too: clean up after
        if redis_url:
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                names = [k async for k in client.scan_iter(match=f"{prefix}*")]
                if names:
                    await client.delete(*names)
            finally:
                await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per row and round")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print the N functions of most own time per row (cProfile)",
    )
    parser.add_argument("--redis-url", help="the store (default $REDIS_URL, else embedded)")
    args = parser.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    rows = asyncio.run(measure(args))
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:7.2f} us/request")


if __name__ == "__main__":
    main()

"""``gateway demo``: the gateway on its embedded store in front of the demo upstream.

Creates a demo account with an admin key and a test key, prints ready-to-paste
curl lines, and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from ..config import parse_config
from ..keys.audit import AuditLog
from ..keys.service import CLI, KeyService
from ..keys.store import KeyStore
from ..server import install_uvloop, serve
from ..store.connection import open_store
from ..store.embedded import EmbeddedRedis
from .upstream import create_upstream


def demo_config(args: argparse.Namespace):
    upstream = f"http://127.0.0.1:{args.upstream_port}"
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": args.port, "drain_timeout": "2s"},
            "admin": {"host": "127.0.0.1", "port": args.admin_port},
            "redis": {"data_dir": args.data_dir},
            "plans": {"default": {"rate_limit": "60/minute"}, "pro": {"rate_limit": "1000/minute"}},
            "routes": [
                {"name": "hello", "match": "/v1/hello", "upstream": upstream, "test_upstream": upstream,
                 "permissions": {"GET": "read", "*": "write"}},
                # /v1/feed/stream is the demo upstream's /stream (server-sent events)
                {"name": "feed", "match": "/v1/feed", "upstream": upstream, "strip_prefix": True},
                {"name": "public", "match": "/public", "upstream": upstream, "auth": "none"},
            ],
        },
        "demo",
    )  # fmt: skip


async def _prepare(config) -> tuple[str, str, str]:
    handle = open_store(config.redis)
    try:
        store = KeyStore(handle.client, config.redis.key_prefix)
        service = KeyService(store, config, audit=AuditLog(handle.client, config.redis.key_prefix))
        accounts = [a for a in await store.list_accounts() if a.name == "Demo"]
        account = (
            accounts[0]
            if accounts
            else await service.create_account(name="Demo", email="demo@example.com")
        )
        _, admin = await service.create_key(
            CLI, account.id, {"name": "demo admin", "permissions": ["admin"]}
        )
        _, test = await service.create_key(
            CLI, account.id, {"name": "demo test", "mode": "test", "permissions": ["read"]}
        )
        return account.id, admin, test
    finally:
        await handle.close()


async def _run(args: argparse.Namespace) -> int:
    config = demo_config(args)
    # This process owns the embedded store for the whole demo; serve() joins it.
    embedded = EmbeddedRedis(config.redis.data_dir).start()
    try:
        return await _demo(args, config)
    finally:
        embedded.stop()


async def _demo(args: argparse.Namespace, config) -> int:
    account_id, admin, test = await _prepare(config)
    upstream = web.AppRunner(create_upstream(), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", args.upstream_port).start()
    base = f"http://127.0.0.1:{args.port}"
    print(
        f"""
Gateway demo: {base} -> demo upstream http://127.0.0.1:{args.upstream_port}
(store under {args.data_dir}; account {account_id}; admin port http://127.0.0.1:{args.admin_port})

These keys are shown once. Try:

  curl -i {base}/v1/hello -H "Authorization: Bearer {admin}"
  curl -i {base}/v1/hello -H "Authorization: Bearer {test}"
  curl -i {base}/v1/hello                                   # 401 missing_api_key
  curl -i {base}/public/anything                            # no key needed
  curl -N {base}/v1/feed/stream -H "Authorization: Bearer {test}"   # events as they come
  curl -i {base}/v1/auth/verify -H "Authorization: Bearer {test}"
  curl -i {base}/v1/api-keys -H "Authorization: Bearer {admin}"
  curl -s http://127.0.0.1:{args.admin_port}/metrics | grep gateway_requests

Dashboard: {base}/dashboard (sign in by pasting the admin key above)

Press Ctrl-C to stop.
""",
        flush=True,
    )
    try:
        return await serve(config)
    finally:
        await upstream.cleanup()


def run_demo(args: argparse.Namespace) -> int:
    install_uvloop()
    return asyncio.run(_run(args))

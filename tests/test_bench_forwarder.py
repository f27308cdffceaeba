"""The benchmark's forwarder row runs the gateway's own forwarding: keep it working."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from conftest import free_port, upstream_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import passthrough  # noqa: E402


async def test_the_bench_forwarder_proxies_through_the_gateway_forwarding(upstream, http):
    port = free_port()
    server = asyncio.create_task(
        passthrough.serve_gateway_forwarder("127.0.0.1", port, upstream_url(upstream))
    )
    try:
        for _ in range(50):
            with contextlib.suppress(OSError):
                async with http.get(f"http://127.0.0.1:{port}/anything?x=1") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    assert body["path"] == "/anything" and body["query"] == "x=1"
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("the forwarder never answered")
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

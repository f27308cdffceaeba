"""The benchmark's own servers and tools run the gateway's real code: keep them working."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

from conftest import free_port, upstream_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import micro  # noqa: E402
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


def test_the_in_process_micro_benchmark_runs_every_row(tmp_path):
    """``bench/micro.py`` drives the real handler: a change to its seams must not leave it broken."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent.parent / "bench" / "micro.py"),
         "-n", "20"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = dict(line.split()[:2] for line in result.stdout.splitlines())
    assert set(rows) == set(micro.ROWS)
    assert all(float(value) > 0 for value in rows.values())

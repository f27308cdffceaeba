"""Hot reload of a real ``gateway serve`` process: on SIGHUP and when the file changes.

A valid file is swapped in whole without dropping a request; an invalid one
is refused, logged and counted, and the running config stays; a Kubernetes
ConfigMap update (a swap of the ``..data`` symlink) is picked up; settings
that need a restart are logged as ignored and keep their running value.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import (
    GatewayProcess,
    bearer,
    free_port,
    new_account,
    new_key,
    service_for,
    upstream_url,
    write_config,
)

from gateway.config import parse_config

pytestmark = pytest.mark.integration


def reloads(metrics_text: str, result: str) -> float:
    match = re.search(
        r'^gateway_config_reloads_total\{result="' + result + r'"\} (\S+)$', metrics_text, re.M
    )
    return float(match.group(1)) if match else 0.0


async def metrics(http: aiohttp.ClientSession, gw: Any) -> str:
    async with http.get(gw.admin_url + "/metrics") as resp:
        return await resp.text()


async def status(http: aiohttp.ClientSession, url: str, secret: str) -> int:
    async with http.get(url, headers=bearer(secret)) as resp:
        await resp.read()
        return resp.status


async def poll(check, timeout: float) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not seen within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def route(name: str, match: str, upstream: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": match, "upstream": upstream_url(upstream), **extra}


def replace_file(path: Path, data: dict[str, Any] | str) -> None:
    """Write next to ``path`` and rename over it, as editors and deploy tools do."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        write_config(tmp, data)
    os.replace(tmp, path)


@pytest.fixture
async def reloading(gateway_process, base_config, upstream, redis_client):
    async def start(**sections: Any):
        data = base_config(routes=[route("a", "/a", upstream)], **sections)
        gw = gateway_process(data)
        await asyncio.to_thread(gw.start)
        service = service_for(redis_client, parse_config(data))
        _, secret = await new_key(service, await new_account(service), permissions=["admin"])
        return gw, data, secret

    return start


async def test_a_changed_file_is_swapped_in_without_dropping_a_request(reloading, upstream):
    gw, data, secret = await reloading()
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(fresh_connections: bool) -> None:
        connector = aiohttp.TCPConnector(force_close=fresh_connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set():
                statuses.append(await status(session, gw.url + "/a/x", secret))

    async with aiohttp.ClientSession() as http:
        workers = [asyncio.create_task(traffic(fresh)) for fresh in (False, False, True)]
        await asyncio.sleep(0.3)
        assert await status(http, gw.url + "/b/x", secret) == 404
        for n in range(3):  # several reloads while requests flow
            data["routes"] = [
                route("a", "/a", upstream),
                route("b", "/b", upstream, timeout=f"{n + 5}s"),
            ]
            replace_file(gw.config_path, data)

            async def reloaded(n: int = n) -> bool:
                return reloads(await metrics(http, gw), "success") >= n + 1

            assert await poll(reloaded, 4) < 4
        assert await status(http, gw.url + "/b/x", secret) == 200
        # Answered by the management API, which a reload rebuilds with the routes.
        assert await status(http, gw.url + "/v1/auth/verify", secret) == 200
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
    assert len(statuses) > 20
    assert set(statuses) == {200}, f"requests failed during reloads: {set(statuses)}"


async def test_sighup_reloads_at_once(reloading, upstream):
    gw, data, secret = await reloading()
    async with aiohttp.ClientSession() as http:
        before = reloads(await metrics(http, gw), "success")
        gw.signal(signal.SIGHUP)  # same content: the file watcher would not reload

        async def reloaded() -> bool:
            return reloads(await metrics(http, gw), "success") == before + 1

        assert await poll(reloaded, 3) < 2.0
        assert "config reloaded (SIGHUP)" in gw.log()
        assert await status(http, gw.url + "/a/x", secret) == 200


async def test_an_invalid_file_is_refused_logged_counted_and_the_old_config_stays(
    reloading, upstream
):
    gw, data, secret = await reloading()
    async with aiohttp.ClientSession() as http:
        broken = {**data, "routes": [route("a", "/a", upstream, timeout="soon")]}
        replace_file(gw.config_path, broken)

        async def refused() -> bool:
            return reloads(await metrics(http, gw), "error") == 1

        await poll(refused, 4)
        assert "routes[0].timeout" in gw.log()
        assert "keeping the running config" in gw.log()
        assert await status(http, gw.url + "/a/x", secret) == 200

        replace_file(gw.config_path, "routes: [not yaml")
        gw.signal(signal.SIGHUP)

        async def refused_twice() -> bool:
            return reloads(await metrics(http, gw), "error") == 2

        await poll(refused_twice, 4)
        assert await status(http, gw.url + "/a/x", secret) == 200
        assert reloads(await metrics(http, gw), "success") == 0

        data["routes"] = [route("a", "/a", upstream), route("b", "/b", upstream)]
        replace_file(gw.config_path, data)

        async def fixed() -> bool:
            return await status(http, gw.url + "/b/x", secret) == 200

        await poll(fixed, 4)
        assert gw.proc.poll() is None


async def test_restart_only_settings_are_logged_as_ignored_and_kept(reloading, upstream):
    gw, data, secret = await reloading()
    async with aiohttp.ClientSession() as http:
        changed = {
            **data,
            "server": {**data["server"], "port": free_port(), "max_url_bytes": 300},
            "redis": {**data["redis"], "key_prefix": "elsewhere:"},
            "alerts": {"enabled": False},  # the detectors are built at start
            "webhooks": {"timeout": "3s"},  # and so is the webhook dispatcher
        }
        replace_file(gw.config_path, changed)

        async def reloaded() -> bool:
            return reloads(await metrics(http, gw), "success") == 1

        await poll(reloaded, 4)
        log = gw.log()
        assert "server.port changed; needs a restart" in log
        assert "redis.key_prefix changed; needs a restart" in log
        assert "alerts.enabled changed; needs a restart" in log
        assert "webhooks.timeout changed; needs a restart" in log
        # Still on the old port and the old store prefix (the key still works) ...
        assert await status(http, gw.url + "/a/x", secret) == 200
        # ... while a live setting took effect.
        assert await status(http, gw.url + "/a/" + "x" * 400, secret) == 414


async def test_a_configmap_symlink_swap_is_picked_up(base_config, upstream, redis_client, tmp_path):
    """The layout the kubelet writes: gateway.yaml -> ..data/gateway.yaml, ..data -> ..<timestamp>."""
    volume = tmp_path / "config"
    volume.mkdir()
    port, admin_port = free_port(), free_port()
    data = base_config(
        server={"port": port}, admin={"port": admin_port}, routes=[route("a", "/a", upstream)]
    )

    def publish(version: str, content: dict[str, Any]) -> None:
        target = volume / f"..{version}"
        target.mkdir()
        write_config(target / "gateway.yaml", content)
        link = volume / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, volume / "..data")  # the atomic swap

    publish("2026_01_01_00_00_00.1", data)
    (volume / "gateway.yaml").symlink_to("..data/gateway.yaml")
    gw = GatewayProcess(volume / "gateway.yaml", port, admin_port, tmp_path / "gw.log")
    try:
        await asyncio.to_thread(gw.start)
        service = service_for(redis_client, parse_config(data))
        _, secret = await new_key(service, await new_account(service))
        async with aiohttp.ClientSession() as http:
            assert await status(http, gw.url + "/b/x", secret) == 404
            publish(
                "2026_01_01_00_05_00.2",
                {**data, "routes": [route("a", "/a", upstream), route("b", "/b", upstream)]},
            )

            async def swapped() -> bool:
                return await status(http, gw.url + "/b/x", secret) == 200

            assert await poll(swapped, 4) < 4
            assert await status(http, gw.url + "/a/x", secret) == 200
    finally:
        assert gw.stop() == 0


async def admin_reload(http: aiohttp.ClientSession, gw: Any) -> tuple[int, dict]:
    async with http.post(gw.admin_url + "/reload") as resp:
        return resp.status, await resp.json()


async def test_store_connection_changes_are_answered_as_needing_a_restart(reloading, upstream):
    gw, _, secret = await reloading()
    data = yaml.safe_load(gw.config_path.read_text())  # as started: with its real ports
    async with aiohttp.ClientSession() as http:
        status_code, answer = await admin_reload(http, gw)  # nothing changed
        assert (status_code, answer) == (200, {"status": "reloaded", "restart_required": []})
        for redis in (
            {"sentinel": {"master_name": "main", "nodes": [f"127.0.0.1:{free_port()}"]},
             "tls": {"verify": False}},
            {"cluster": {"nodes": [f"127.0.0.1:{free_port()}"]}},
        ):  # fmt: skip
            changed = {
                **data,
                "redis": {"key_prefix": data["redis"]["key_prefix"], **redis},
                "routes": [route("a", "/a", upstream), route("b", "/b", upstream)],
            }
            replace_file(gw.config_path, changed)
            status_code, answer = await admin_reload(http, gw)
            assert status_code == 200, answer
            assert answer["status"] == "reloaded"
            assert set(answer["restart_required"]) == {"redis.url"} | {
                f"redis.{name}" for name in redis
            }
            # The rest of the file took effect; the store connection is the running one.
            assert await status(http, gw.url + "/b/x", secret) == 200
            assert await status(http, gw.url + "/a/x", secret) == 200
            async with http.get(gw.admin_url + "/readyz") as resp:
                body = await resp.json()
                assert resp.status == 200
                assert body["restart_required"] == answer["restart_required"]
        log = gw.log()
        for name in ("redis.sentinel", "redis.tls", "redis.cluster", "redis.url"):
            assert f"{name} changed; needs a restart" in log, name

        # Back to the running store settings: nothing is pending any more.
        replace_file(gw.config_path, data)
        status_code, answer = await admin_reload(http, gw)
        assert (status_code, answer["restart_required"]) == (200, [])
        async with http.get(gw.admin_url + "/readyz") as resp:
            assert "restart_required" not in await resp.json()

        # A file that does not load: 422 with the field's path, the running config stays.
        replace_file(
            gw.config_path, {**data, "routes": [route("a", "/a", upstream, timeout="soon")]}
        )
        status_code, answer = await admin_reload(http, gw)
        assert status_code == 422 and answer["status"] == "refused"
        assert any("routes[0].timeout" in error for error in answer["errors"]), answer
        assert await status(http, gw.url + "/a/x", secret) == 200

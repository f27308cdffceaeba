"""``server.workers: N``: N real gateway processes sharing one port under a supervisor.

A worker killed with SIGKILL is restarted while the others keep answering;
a revocation reaches every worker's cache; SIGHUP reaches every worker; the
supervisor's admin port merges the workers' metrics; SIGTERM stops them all
and the supervisor exits 0.
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
from conftest import bearer, new_account, new_key, service_for, upstream_url, write_config
from realparts import free_port

from gateway.config import parse_config
from gateway.keys.service import CLI
from gateway.workers import merge_metrics

pytestmark = pytest.mark.integration


async def admin(http: aiohttp.ClientSession, gw: Any, path: str) -> tuple[int, Any]:
    async with http.get(gw.admin_url + path) as resp:
        return resp.status, (await resp.json() if path != "/metrics" else await resp.text())


async def all_ready(http: aiohttp.ClientSession, gw: Any, count: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await admin(http, gw, "/readyz")
        if status == 200 and sum(w["ready"] for w in body["workers"]) == count:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not ready: {body}")
        await asyncio.sleep(0.1)


def served_by_worker(metrics_text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for match in re.finditer(
        r'^gateway_requests_total\{[^}]*worker="(\d+)"[^}]*\} (\S+)$', metrics_text, re.M
    ):
        out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(2))
    return out


async def fresh_get(url: str, secret: str) -> tuple[int, dict]:
    """One request on a new connection: the kernel picks the worker per connection."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(url, headers=bearer(secret), timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def batch(gw: Any, url: str, secret: str, n: int = 30) -> set[Any]:
    """The statuses (or errors) of ``n`` concurrent requests, each on a new connection."""
    results = await asyncio.gather(
        *(fresh_get(url, secret) for _ in range(n)), return_exceptions=True
    )
    outcomes = {r if isinstance(r, BaseException) else r[0] for r in results}
    if outcomes != {200}:
        print(gw.log()[-5000:])
    return {type(o).__name__ if isinstance(o, BaseException) else o for o in outcomes}


def reaped(pid: int) -> bool:
    """Gone from /proc: the supervisor has waited for it, so every thread of it has exited
    and its sockets are closed (a zombie leader may still have threads holding them)."""
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
async def workers_gateway(gateway_process, base_config, upstream, redis_client):
    data = base_config(
        server={"workers": 2},
        keys={"cache_ttl": "5m"},  # only the invalidation channel refreshes the caches
        routes=[
            {"name": "api", "match": "/api", "upstream": upstream_url(upstream)},
            {"name": "stream", "match": "/stream", "upstream": upstream_url(upstream)},
        ],
    )
    gw = gateway_process(data)
    await asyncio.to_thread(gw.start, wait=False)
    await asyncio.to_thread(gw.wait_ready, 60)
    service = service_for(redis_client, parse_config(data))
    key_id, secret = await new_key(service, await new_account(service))
    return gw, service, key_id, secret


async def test_a_killed_worker_is_restarted_while_the_others_keep_answering(workers_gateway):
    gw, _, _, secret = workers_gateway
    url = gw.url + "/api/x"
    async with aiohttp.ClientSession() as http:
        await all_ready(http, gw, 2)
        assert await batch(gw, url, secret) == {200}
        assert set(served_by_worker((await admin(http, gw, "/metrics"))[1])) == {"0", "1"}

        _, health = await admin(http, gw, "/healthz")
        victim = health["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not reaped(victim):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        # The dead worker's socket left the port's group: every request still succeeds.
        assert await batch(gw, url, secret) == {200}

        deadline = time.monotonic() + 30
        while True:
            _, health = await admin(http, gw, "/healthz")
            restarted = health["workers"][0]
            if restarted["restarts"] == 1 and restarted["alive"] and restarted["pid"] != victim:
                break
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.1)
        await all_ready(http, gw, 2)
        assert await batch(gw, url, secret) == {200}
        metrics = (await admin(http, gw, "/metrics"))[1]
        assert served_by_worker(metrics).get("0", 0) > 0  # the new worker 0 serves too
        assert 'gateway_worker_restarts_total{worker="0"} 1.0' in metrics
        assert "gateway_workers_up 2.0" in metrics
    assert f"worker 0 (pid {victim}) exited" in gw.log()
    assert gw.stop() == 0


async def test_a_revocation_reaches_every_worker_and_sighup_reaches_every_worker(workers_gateway):
    gw, service, key_id, secret = workers_gateway
    url = gw.url + "/api/x"
    async with aiohttp.ClientSession() as http:
        ready = await all_ready(http, gw, 2)
        assert [(w["store"], w["config"]) for w in ready["workers"]] == [("up", "loaded")] * 2
        assert await batch(gw, url, secret) == {200}
        # Both workers have the key cached (for 5 minutes).
        assert set(served_by_worker((await admin(http, gw, "/metrics"))[1])) == {"0", "1"}

        await service.revoke_key(CLI, key_id)
        await asyncio.sleep(1.0)
        results = await asyncio.gather(*(fresh_get(url, secret) for _ in range(30)))
        assert {(s, b["error"]["code"]) for s, b in results} == {(401, "revoked_api_key")}

        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            metrics = (await admin(http, gw, "/metrics"))[1]
            reloaded = re.findall(
                r'^gateway_config_reloads_total\{result="success",worker="(\d)"\} 1\.0$',
                metrics,
                re.M,
            )
            if sorted(reloaded) == ["0", "1"]:
                break
            assert time.monotonic() < deadline, metrics
            await asyncio.sleep(0.1)

        # POST /reload on the supervisor: every worker reloads and says what needs a restart.
        data = yaml.safe_load(gw.config_path.read_text())
        data["redis"]["socket_timeout"] = "3s"
        write_config(gw.config_path, data)
        async with http.post(gw.admin_url + "/reload") as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert answer["status"] == "reloaded"
        assert answer["restart_required"] == ["redis.socket_timeout"]
        assert sorted(w["index"] for w in answer["workers"]) == [0, 1]
        assert all(w["status"] == "reloaded" for w in answer["workers"])
        assert all(w["restart_required"] == ["redis.socket_timeout"] for w in answer["workers"])
        _, ready = await admin(http, gw, "/readyz")
        assert [w["restart_required"] for w in ready["workers"]] == [["redis.socket_timeout"]] * 2

        # A stream in flight keeps its worker draining while the supervisor says so.
        _, other = await new_key(service, await new_account(service))
        stream = await http.get(gw.url + "/stream?count=15&interval=0.1", headers=bearer(other))
        assert stream.status == 200
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await admin(http, gw, "/readyz")
        assert (status, body["status"]) == (503, "draining")
        assert (await stream.read()).count(b"data:") == 15  # finished, not cut
    assert await asyncio.to_thread(gw.proc.wait, 30) == 0
    assert gw.log().count("gateway stopped") == 2


def test_merged_metrics_label_each_worker_and_keep_one_family_header():
    text = (
        "# HELP gateway_requests_total Requests\n# TYPE gateway_requests_total counter\n"
        'gateway_requests_total{route="a"} 3.0\n'
    )
    merged = merge_metrics([("0", text), ("1", text.replace("3.0", "4.0"))]).decode()
    assert merged.count("# TYPE gateway_requests_total counter") == 1
    assert 'gateway_requests_total{route="a",worker="0"} 3.0' in merged
    assert 'gateway_requests_total{route="a",worker="1"} 4.0' in merged


def test_supervisor_refuses_a_port_it_cannot_share(base_config, tmp_path):
    import socket
    import subprocess
    import sys

    from conftest import write_config

    with socket.socket() as taken:  # bound and listening without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path / "gw.yaml", base_config(server={"port": port, "workers": 2}))
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(path), "serve"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "cannot listen" in done.stderr


def test_a_port_left_in_time_wait_by_a_stopped_gateway_can_be_shared():
    """Connections the previous gateway closed first sit in TIME-WAIT on its port for a
    minute; the workers' listeners take the port all the same, so must the probe."""
    import socket

    from gateway.workers import _port_available

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end goes to TIME-WAIT
        client.recv(1)
        client.close()
    assert _port_available("127.0.0.1", port) is None


async def test_a_worker_restarted_under_a_refused_or_changed_file_runs_what_the_others_run(
    workers_gateway,
):
    """A crash while the file does not validate must not take the gateway down, and one
    after a restart-only change must not move the restarted worker to another port."""
    gw, _, _, secret = workers_gateway
    url = gw.url + "/api/x"
    good = gw.config_path.read_text()

    async def kill_and_wait(http: aiohttp.ClientSession, restarts: int) -> None:
        _, health = await admin(http, gw, "/healthz")
        victim = health["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            _, health = await admin(http, gw, "/healthz")
            worker = health["workers"][0]
            if worker["restarts"] == restarts and worker["alive"] and worker["pid"] != victim:
                break
            assert time.monotonic() < deadline, (health, gw.log()[-3000:])
            await asyncio.sleep(0.1)
        await all_ready(http, gw, 2)

    async with aiohttp.ClientSession() as http:
        await all_ready(http, gw, 2)
        gw.config_path.write_text(good + "\nserver_typo: {}\n")  # does not validate
        await kill_and_wait(http, 1)
        assert await batch(gw, url, secret) == {200}
        data = yaml.safe_load(good)
        data["server"]["port"] = free_port()  # restart-only: the running value holds
        gw.config_path.write_text(yaml.safe_dump(data))
        await kill_and_wait(http, 2)
        before = served_by_worker((await admin(http, gw, "/metrics"))[1]).get("0", 0)
        for _ in range(5):  # the kernel spreads connections: worker 0 answers on the old port
            assert await batch(gw, url, secret) == {200}
        after = served_by_worker((await admin(http, gw, "/metrics"))[1]).get("0", 0)
        assert after > before
    assert "workers start from the last that validated" in gw.log()
    assert gw.stop() == 0

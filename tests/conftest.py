"""Shared fixtures: a real Redis, a real upstream, the real gateway on loopback.

The store is the Redis at ``$REDIS_URL`` when set, else an embedded
``redis-server`` started for the session. Every test gets a key prefix of its
own and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from realparts import RedisServer, free_port

from gateway.app import GatewayApp
from gateway.config import Config, parse_config
from gateway.demo.upstream import create_upstream
from gateway.keys.audit import AuditLog
from gateway.keys.service import CLI, KeyService
from gateway.keys.store import KeyStore
from gateway.runtime import Runtime
from gateway.store.connection import StoreHandle

ROOT = Path(__file__).resolve().parent.parent
SESSION_PREFIX = f"gwtest:{uuid.uuid4().hex[:8]}:"
"""Every key this test session writes is under it; two sessions on one Redis never touch
each other's keys."""


def unique_key_prefix() -> str:
    """A key prefix of its own for one test (or one process it starts)."""
    return f"{SESSION_PREFIX}{uuid.uuid4().hex[:12]}:"


OUTPUT = ROOT / "test-output"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="gw-redis-", dir="/tmp") as tmp:
        server = RedisServer.plain(Path(tmp)).start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session", autouse=True)
def _sweep_test_keys(redis_url: str) -> Iterator[None]:
    """After the session, delete every key of this session still in the store: a gateway
    process may flush usage after a test's own clean-up has run."""
    yield
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=SESSION_PREFIX + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def key_prefix() -> str:
    return unique_key_prefix()


async def drop_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own clean-up)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
    await drop_prefix(redis_url, key_prefix)


@pytest.fixture
def base_config(redis_url: str, key_prefix: str) -> Callable[..., dict[str, Any]]:
    """A config dict on the test Redis and prefix; pass sections to override."""

    def make(**sections: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0, "access_log": True},
            "admin": {"host": "127.0.0.1", "port": 0},
            "redis": {"url": redis_url, "key_prefix": key_prefix},
            "plans": {
                "default": {"rate_limit": "100000/minute"},
                "pro": {"rate_limit": "1000000/minute"},
            },
        }
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return data

    return make


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    server = TestServer(create_upstream("upstream"), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def test_upstream() -> AsyncIterator[TestServer]:
    server = TestServer(create_upstream("test-upstream"), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def upstream_url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


class Gateway:
    """A gateway running in this test's event loop on a real loopback socket."""

    def __init__(self, app: GatewayApp, config: Config):
        self.app = app
        self.config = config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime

    @property
    def service(self) -> KeyService:
        return self.runtime.service


@pytest.fixture
async def start_gateway(redis_client: aioredis.Redis) -> AsyncIterator[Callable[..., Any]]:
    async with gateways() as start:
        yield start


def plain_store(config: Config) -> StoreHandle:
    """The test Redis through a plain client (no fail-fast connection class)."""
    url = config.redis.url
    return StoreHandle(aioredis.Redis.from_url(url, decode_responses=True), None, url)


@contextlib.asynccontextmanager
async def gateways(
    store_factory: Callable[[Config], StoreHandle] | None = plain_store,
) -> AsyncIterator[Callable[[dict[str, Any]], Any]]:
    """``start(config_data)`` runs the real gateway in this loop on a loopback port; all
    started are closed on exit. ``store_factory=None`` opens the store as ``serve`` does."""
    apps: list[GatewayApp] = []

    async def start(config_data: dict[str, Any]) -> Gateway:
        config = parse_config(config_data)
        app = GatewayApp(config, store_factory=store_factory)
        apps.append(app)
        runtime = await app.start()
        await app.listen("127.0.0.1", 0)
        assert runtime.invalidation is not None
        await asyncio.wait_for(runtime.invalidation.connected.wait(), 10)
        return Gateway(app, config)

    try:
        yield start
    finally:
        for app in apps:
            await app.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def new_account(service: KeyService, plan: str = "default", name: str = "Acme") -> str:
    account = await service.create_account(name=name, email="ops@acme.test", plan=plan)
    return account.id


async def new_key(service: KeyService, account_id: str, **fields: Any) -> tuple[str, str]:
    """Create a key; returns (key id, secret)."""
    fields.setdefault("name", "test key")
    record, secret = await service.create_key(CLI, account_id, fields)
    return record.id, secret


def service_for(client: aioredis.Redis, config: Config) -> KeyService:
    store = KeyStore(client, config.redis.key_prefix)
    return KeyService(store, config, audit=AuditLog(client, config.redis.key_prefix))


@contextlib.asynccontextmanager
async def keys_being_created(service: KeyService, account_id: str) -> AsyncIterator[None]:
    """Keys (and their events) created one after another in the background meanwhile."""
    stop = asyncio.Event()

    async def creating() -> None:
        n = 0
        while not stop.is_set():
            await new_key(service, account_id, name=f"meanwhile{n}")
            n += 1

    writer = asyncio.create_task(creating())
    try:
        yield
    finally:
        stop.set()
        await writer


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def statuses_across(urls: list[str], path: str, secret: str, count: int) -> list[int]:
    """Send ``count`` GETs at once, spread in turn over ``urls``; their statuses in order."""

    async def one(session: aiohttp.ClientSession, url: str) -> int:
        async with session.get(url + path, headers=bearer(secret)) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(one(session, urls[n % len(urls)]) for n in range(count)))


# -- gateway processes -----------------------------------------------------------


class GatewayProcess:
    """``gateway serve`` as a real process, for tests of signals and of several replicas."""

    def __init__(self, config_path: Path, port: int, admin_port: int, log_path: Path):
        self.config_path = config_path
        self.port = port
        self.admin_port = admin_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(
        self, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> GatewayProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the process's life, closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), "serve", *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(self.config_path.parent),
            env={**os.environ, **(env or {})},
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.admin_url + "/readyz", timeout=1) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def make(config_data: dict[str, Any], name: str = "gw") -> GatewayProcess:
        config_data = json.loads(json.dumps(config_data))
        port, admin_port = free_port(), free_port()
        config_data.setdefault("server", {})["port"] = port
        config_data.setdefault("admin", {})["port"] = admin_port
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config_data))
        process = GatewayProcess(path, port, admin_port, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def run_cli(
    config_path: Path | str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    return path


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


__all__ = ["web"]

"""Size limits, request smuggling and slowloris against a real ``gateway serve``, over raw sockets.

Too many or too large headers answer 431, an over-long URL 414, a body over
``server.max_body_bytes`` 413: in the gateway's JSON envelope, whether the
gateway's own check or aiohttp's parser (for sizes far past the limits)
refuses first. Ambiguous framing is refused without reaching the upstream.
A client sending its request head a byte at a time is cut off by
``server.header_read_timeout`` while other clients are served as usual.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from conftest import (
    GatewayProcess,
    drop_prefix,
    free_port,
    service_for,
    unique_key_prefix,
    write_config,
)
from faultkit import FaultUpstream, ThreadedUpstream, raw_exchange

from gateway.config import parse_config
from gateway.keys.service import CLI

pytestmark = pytest.mark.integration

LIMITS = {
    "max_header_count": 40,
    "max_header_bytes": 1000,
    "max_url_bytes": 1000,
    "max_body_bytes": 1000,
}


class Target:
    def __init__(self, gw: GatewayProcess, upstream: FaultUpstream, secret: str):
        self.gw = gw
        self.upstream = upstream
        self.secret = secret

    def head(
        self, target: str = "/api/x", headers: list[str] | None = None, method: str = "GET"
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", "Host: gw.test", "Connection: close",
                 f"Authorization: Bearer {self.secret}", *(headers or [])]  # fmt: skip
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def target(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp: Path = tmp_path_factory.mktemp("limits")
    prefix = unique_key_prefix()
    with ThreadedUpstream() as upstream:
        port, admin_port = free_port(), free_port()
        data = {
            "server": {"host": "127.0.0.1", "port": port, "header_read_timeout": "1s", **LIMITS},
            "admin": {"host": "127.0.0.1", "port": admin_port},
            "redis": {"url": redis_url, "key_prefix": prefix},
            "routes": [{"name": "api", "match": "/api", "upstream": upstream.url}],
        }
        path = write_config(tmp / "gw.yaml", data)
        secret = asyncio.run(_make_key(redis_url, parse_config(data)))
        gw = GatewayProcess(path, port, admin_port, tmp / "gw.log").start()
        try:
            yield Target(gw, upstream, secret)
        finally:
            gw.stop()
            asyncio.run(drop_prefix(redis_url, prefix))


async def _make_key(redis_url: str, config) -> str:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        service = service_for(client, config)
        account = (await service.create_account(name="Limits", email=None, plan="default")).id
        return (await service.create_key(CLI, account, {"name": "k"}))[1]
    finally:
        await client.aclose()


def refused_with(answer, status: int, code: str) -> None:
    assert answer.status == status, (answer.status, answer.body[:200])
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"]["code"] == code
    assert answer.headers.get("x-request-id")


# -- sizes ----------------------------------------------------------------------------


def test_within_the_limits_is_served(target):
    headers = [f"X-H{i}: v" for i in range(30)] + ["X-Big: " + "a" * 900]
    answer = raw_exchange(target.gw.port, target.head("/api/" + "p" * 900, headers))
    assert answer.status == 200


@pytest.mark.parametrize("count", [41, 60, 500], ids=["just-over", "gateway-check", "parser-check"])
def test_too_many_headers_is_431(target, count):
    headers = [f"X-H{i}: v" for i in range(count)]
    refused_with(raw_exchange(target.gw.port, target.head(headers=headers)), 431,
                 "request_header_fields_too_large")  # fmt: skip


@pytest.mark.parametrize(
    "size", [1001, 1500, 100_000], ids=["just-over", "gateway-check", "parser-check"]
)
def test_a_too_large_header_is_431(target, size):
    headers = ["X-Big: " + "a" * (size - len("X-Big"))]  # name + value over the limit
    refused_with(raw_exchange(target.gw.port, target.head(headers=headers)), 431,
                 "request_header_fields_too_large")  # fmt: skip


def test_a_too_large_header_name_is_431(target):
    headers = ["X-" + "n" * 5000 + ": v"]
    refused_with(raw_exchange(target.gw.port, target.head(headers=headers)), 431,
                 "request_header_fields_too_large")  # fmt: skip


@pytest.mark.parametrize(
    "size", [1001, 1500, 100_000], ids=["just-over", "gateway-check", "parser-check"]
)
def test_a_too_long_url_is_414(target, size):
    url = "/api/" + "u" * (size - 5)
    refused_with(raw_exchange(target.gw.port, target.head(url)), 414, "uri_too_long")


def test_a_too_long_query_is_414(target):
    refused_with(
        raw_exchange(target.gw.port, target.head("/api/x?q=" + "q" * 5000)), 414, "uri_too_long"
    )


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(target):
    before = len(target.upstream.seen)
    answer = raw_exchange(
        target.gw.port, target.head(headers=["Content-Length: 1001"], method="POST")
    )
    refused_with(answer, 413, "payload_too_large")
    assert len(target.upstream.seen) == before


def test_a_chunked_body_growing_over_the_limit_is_413(target):
    head = target.head(headers=["Transfer-Encoding: chunked"], method="POST")
    body = b"".join(b"100\r\n" + b"b" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    answer = raw_exchange(target.gw.port, head + body)
    refused_with(answer, 413, "payload_too_large")


@pytest.mark.parametrize(
    "framing",
    [
        ["Content-Length: 5", "Transfer-Encoding: chunked"],
        ["Content-Length: 5", "Content-Length: 6"],
        ["Content-Length: -1"],
        ["Content-Length: 5x"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
        ["Transfer-Encoding: gzip"],
    ],
    ids=["cl-and-te", "two-cl", "negative-cl", "bad-cl", "two-te", "te-not-chunked"],
)
def test_ambiguous_framing_is_refused_and_smuggles_nothing(target, framing):
    before = len(target.upstream.seen)
    smuggled = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = target.head(headers=framing, method="POST") + b"0\r\n\r\n" + smuggled
    answer = raw_exchange(target.gw.port, data, timeout=5)
    assert answer.status == 400, (answer.status, answer.body[:200])
    assert answer.json()["error"]["code"] == "invalid_request"
    time.sleep(0.2)
    assert not any(s.path == "/api/smuggled" for s in target.upstream.seen[before:])


# -- slowloris ------------------------------------------------------------------------


def slow_client(port: int, results: list[float], stop: threading.Event) -> None:
    """Send a request head one byte every 100 ms; note how long until the server hangs up."""
    started = time.monotonic()
    head = b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 10_000
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for byte in head:
                if stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
    except OSError:
        results.append(time.monotonic() - started)


def test_slowloris_clients_are_cut_off_without_starving_others(target):
    results: list[float] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=slow_client, args=(target.gw.port, results, stop), daemon=True)
        for _ in range(30)
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(0.3)
        latencies = []
        for _ in range(20):  # meanwhile, ordinary clients
            answer = raw_exchange(target.gw.port, target.head(), timeout=5)
            assert answer.status == 200
            latencies.append(answer.elapsed)
        assert sorted(latencies)[len(latencies) // 2] < 0.5
        for client in clients:
            client.join(timeout=10)
    finally:
        stop.set()
    assert len(results) == 30, "some slow clients were never cut off"
    assert all(0.9 <= took < 4.0 for took in results), results


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(target):
    with socket.create_connection(("127.0.0.1", target.gw.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert 0.9 <= time.monotonic() - started < 4.0


def test_a_slow_second_request_on_a_keepalive_connection_is_cut_off(target):
    with socket.create_connection(("127.0.0.1", target.gw.port), timeout=10) as sock:
        sock.sendall(target.head().replace(b"Connection: close", b"Connection: keep-alive"))
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        cut = None
        try:
            for byte in b"GET /api/x HTTP/1.1\r\nX-Slow: " + b"s" * 1000:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
                if time.monotonic() - started > 6:
                    break
        except OSError:
            cut = time.monotonic() - started
        assert cut is not None and 0.9 <= cut < 4.0


def test_a_client_slower_than_usual_but_within_the_timeout_is_served(target):
    data = target.head()
    with socket.create_connection(("127.0.0.1", target.gw.port), timeout=10) as sock:
        for i in range(0, len(data), 20):  # the whole head over about 0.5 s
            sock.sendall(data[i : i + 20])
            time.sleep(0.5 / (len(data) / 20))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")

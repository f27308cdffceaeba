"""Soak test: mixed traffic through a real gateway whose Redis is restarted half-way.

Starts, on loopback and in a temporary directory: a ``redis-server`` of its own
(append-only, so the keys survive its restart), the demo upstream, and
``python -m gateway serve`` on them. Creates keys of four kinds and drives
traffic for ``--duration`` seconds (60 by default) with ``--concurrency``
clients, each request on a key drawn at random:

- ``valid``        several active keys                      -> 200
- ``invalid``      bad checksums, and well-formed unknown keys -> 401
                   (503 ``auth_backend_unavailable`` for unknown ones while Redis is down)
- ``revoked``      a revoked key                             -> 401
- ``ratelimited``  a key with ``rate_limit: 5/second``       -> 200 / 429

Half-way through, Redis is stopped for ``--outage`` seconds (3 by default) and
started again. At the end it prints requests, answers by status (and by key
kind), any 5xx other than the expected 503s, client-side errors, and the
gateway's resident memory (RSS) after the warm-up and at the end, then PASS or
FAIL: FAIL on any unexpected 5xx, any client error, a valid key refused, RSS
grown by more than 10%, or a gateway that does not exit 0 on SIGTERM.

    bench/soak.sh                   # 60 s
    bench/soak.sh --duration 20 --concurrency 8

Every process started here is stopped by its PID at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.keys.audit import AuditLog  # noqa: E402
from gateway.keys.format import generate_secret  # noqa: E402
from gateway.keys.service import CLI, KeyService  # noqa: E402
from gateway.keys.store import KeyStore  # noqa: E402
from gateway.store.embedded import redis_server_binary  # noqa: E402

KINDS = (("valid", 60), ("invalid", 15), ("revoked", 10), ("ratelimited", 15))
RECOVERY_GRACE = 5.0  # seconds after Redis is back during which 503s are still expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Processes:
    """Child processes, stopped by PID in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class RedisServer:
    def __init__(self, procs: Processes, data_dir: Path):
        self.procs = procs
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = self.procs.start(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _pings(self.port), 10, "redis-server")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # redis-server writes its append-only file and exits
        self.proc.wait(15)


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout}s")
        time.sleep(0.05)


async def make_keys(url: str, config: Any) -> dict[str, list[str]]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        store = KeyStore(client, config.redis.key_prefix)
        service = KeyService(store, config, audit=AuditLog(client, config.redis.key_prefix))
        account = (await service.create_account(name="Soak", email=None, plan="default")).id
        valid = [(await service.create_key(CLI, account, {"name": f"v{i}"}))[1] for i in range(5)]
        revoked_record, revoked = await service.create_key(CLI, account, {"name": "revoked"})
        await service.revoke_key(CLI, revoked_record.id)
        _, limited = await service.create_key(
            CLI, account, {"name": "limited", "rate_limit": "5/second"}
        )
        # Well-formed keys (good checksum) the store does not know: a small pool, as from
        # misconfigured clients (random ones would only measure the negative cache filling).
        unknown = [generate_secret(config.keys.prefix, "live") for _ in range(20)]
        return {"valid": valid, "revoked": [revoked], "ratelimited": [limited], "unknown": unknown}
    finally:
        await client.aclose()


def malformed() -> str:
    body = "".join(random.choices(string.ascii_letters + string.digits, k=38))
    return "sk_live_" + body  # the checksum fails: refused without the store


class Tally:
    def __init__(self) -> None:
        self.by_status: Counter[int] = Counter()
        self.by_kind: Counter[tuple[str, int]] = Counter()
        self.unexpected: Counter[tuple[int, str, str]] = Counter()  # (status, code, phase)
        self.expected_503: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.valid_refused = 0
        self.latencies: list[float] = []

    @property
    def requests(self) -> int:
        return sum(self.by_status.values()) + sum(self.errors.values())


async def drive(
    url: str,
    keys: dict[str, list[str]],
    tally: Tally,
    deadline: float,
    outage: dict[str, float | None],
    concurrency: int,
) -> None:
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    timeout = aiohttp.ClientTimeout(total=10)

    def in_outage(now: float) -> bool:
        start, end = outage["start"], outage["end"]
        return start is not None and now >= start and (end is None or now <= end + RECOVERY_GRACE)

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            kind = random.choices(kinds, weights)[0]
            if kind == "invalid":
                secret = random.choice(keys["unknown"]) if random.random() < 0.5 else malformed()
            else:
                secret = random.choice(keys[kind])
            i += 1
            started = time.monotonic()
            try:
                async with session.get(
                    f"{url}/api/items/{n}-{i}?page={i % 7}",
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=timeout,
                ) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            tally.latencies.append(time.monotonic() - started)
            tally.by_status[status] += 1
            tally.by_kind[(kind, status)] += 1
            if kind == "valid" and status != 200:
                tally.valid_refused += 1
            if status >= 500:
                try:
                    code = json.loads(body)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "?"
                during = in_outage(started)
                if status == 503 and code == "auth_backend_unavailable" and during:
                    tally.expected_503[kind] += 1
                else:
                    tally.unexpected[(status, code, "outage" if during else "normal")] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, n) for n in range(concurrency)))


async def outage_schedule(
    redis_server: RedisServer, at: float, length: float, outage: dict[str, float | None]
) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    print(f"  t+{at - outage['t0']:.1f}s  stopping Redis", flush=True)  # type: ignore[operator]
    outage["start"] = time.monotonic()
    await asyncio.to_thread(redis_server.stop)
    await asyncio.sleep(length)
    await asyncio.to_thread(redis_server.start)
    outage["end"] = time.monotonic()
    print(f"  t+{outage['end'] - outage['t0']:.1f}s  Redis is back", flush=True)  # type: ignore[operator]


async def sample_rss(pid: int, at: float, out: dict[str, int]) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    out["start"] = rss_kib(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (60)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds Redis stays down (3)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the first RSS sample (10%% of the duration, at least 3)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else max(3.0, args.duration * 0.1)

    tmp = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    procs = Processes()
    try:
        return asyncio.run(run(args, warmup, tmp, procs))
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


async def run(args: argparse.Namespace, warmup: float, tmp: Path, procs: Processes) -> int:
    redis_server = RedisServer(procs, tmp / "redis")
    await asyncio.to_thread(redis_server.start)
    upstream_port = free_port()
    procs.start(
        [sys.executable, "-m", "gateway.demo.upstream", "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    port, admin_port = free_port(), free_port()
    data = {
        "server": {"host": "127.0.0.1", "port": port, "drain_timeout": "10s"},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "redis": {"url": redis_server.url, "key_prefix": "soak:"},
        "plans": {"default": {"rate_limit": "1000000/minute"}},
        "routes": [
            {"name": "api", "match": "/api", "upstream": f"http://127.0.0.1:{upstream_port}"}
        ],
    }
    config_path = tmp / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(data))
    keys = await make_keys(redis_server.url, parse_config(data))
    log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 - closed below
    gateway = procs.start(
        [sys.executable, "-m", "gateway", "--config", str(config_path), "serve"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    await asyncio.to_thread(
        wait_for, lambda: _http_ok(f"http://127.0.0.1:{admin_port}/readyz"), 60, "gateway"
    )
    await asyncio.to_thread(
        wait_for, lambda: _http_ok(f"http://127.0.0.1:{upstream_port}/x"), 30, "upstream"
    )

    print(
        f"soak: {args.duration:.0f}s, {args.concurrency} clients, Redis down for {args.outage:.0f}s "
        f"half-way; gateway pid {gateway.pid}",
        flush=True,
    )
    tally = Tally()
    t0 = time.monotonic()
    deadline = t0 + args.duration
    outage: dict[str, float | None] = {"t0": t0, "start": None, "end": None}
    rss: dict[str, int] = {}
    tasks = [
        asyncio.create_task(
            outage_schedule(redis_server, t0 + args.duration / 2, args.outage, outage)
        ),
        asyncio.create_task(sample_rss(gateway.pid, t0 + warmup, rss)),
    ]
    await drive(f"http://127.0.0.1:{port}", keys, tally, deadline, outage, args.concurrency)
    await asyncio.gather(*tasks)
    rss["end"] = rss_kib(gateway.pid)
    elapsed = time.monotonic() - t0

    gateway.send_signal(signal.SIGTERM)
    try:
        exit_code = await asyncio.to_thread(gateway.wait, 30)
    except subprocess.TimeoutExpired:
        exit_code = None
    log.close()

    return report(tally, rss, elapsed, exit_code, warmup)


def report(
    tally: Tally, rss: dict[str, int], elapsed: float, exit_code: int | None, warmup: float
) -> int:
    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    print(
        f"\nrequests:            {tally.requests} in {elapsed:.1f}s ({tally.requests / elapsed:.0f}/s)"
    )
    print(f"latency:             p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms")
    print(
        "by status:           " + ", ".join(f"{s}: {n}" for s, n in sorted(tally.by_status.items()))
    )
    for kind, _ in KINDS:
        row = {s: n for (k, s), n in tally.by_kind.items() if k == kind}
        print(f"  {kind:<12}       " + ", ".join(f"{s}: {n}" for s, n in sorted(row.items())))
    print("expected 503s:       " + (
        ", ".join(f"{k}: {n}" for k, n in sorted(tally.expected_503.items())) or "none"
    ) + "  (auth_backend_unavailable while Redis was down)")  # fmt: skip
    print("unexpected 5xx:      " + (
        ", ".join(f"{s} {c} ({p}): {n}" for (s, c, p), n in sorted(tally.unexpected.items())) or "none"
    ))  # fmt: skip
    print("client errors:       " + (
        ", ".join(f"{e}: {n}" for e, n in sorted(tally.errors.items())) or "none"
    ))  # fmt: skip
    print(f"valid keys refused:  {tally.valid_refused}")
    growth = (rss["end"] - rss["start"]) / rss["start"] * 100
    print(f"gateway RSS:         {rss['start'] / 1024:.1f} MiB after {warmup:.0f}s warm-up, "
          f"{rss['end'] / 1024:.1f} MiB at the end ({growth:+.1f}%)")  # fmt: skip
    print(f"gateway exit:        {exit_code} on SIGTERM")
    failures = []
    if tally.unexpected:
        failures.append("unexpected 5xx")
    if tally.errors:
        failures.append("client errors")
    if tally.valid_refused:
        failures.append("valid keys refused")
    if growth > 10.0:
        failures.append("RSS grew more than 10%")
    if exit_code != 0:
        failures.append("gateway did not exit 0")
    print("\n" + ("PASS" if not failures else "FAIL: " + ", ".join(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)

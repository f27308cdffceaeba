"""Are rate limits exact when several gateway processes share one Redis?

Starts, on loopback and in a temporary directory: a ``redis-server`` of its
own (or uses ``--redis-url``), the stub upstream, and 1, 2 and 4 ``gateway
serve`` processes on it. For each process count and each limit (10/second,
1000/minute, 100000/hour, a key of its own each) many concurrent clients
(``--clients``, spread over the processes) call as fast as they can, and it
prints the requests admitted (200) against what the limit allows in the
observation, with the throughput (answers of any status per second) beside it.

What "allowed" means, without waiting a real hour: the limiter is a sliding
log, so in any span of one window at most ``limit`` requests pass, and a
fresh key may spend its whole limit at once.

- 10/second is observed for ``--second-windows`` windows (5 by default):
  requests sent in the first 5 s less 100 ms (the margin keeps the decisions
  of the last requests inside the fifth window), allowed 5 x 10 = 50. It
  also prints the largest number of admissions surely inside any one-second
  span (sent at or after its start and answered before its end): it must not
  exceed 10.
- 1000/minute and 100000/hour are observed for less than one window (until
  the limit is spent and then ``--tail`` seconds more, or ``--max-seconds``),
  so everything admitted falls within one window: allowed = the limit itself,
  and admitted must reach at least 95% of it. When the clients cannot offer
  that many requests within ``--max-seconds`` the row says so. These rows
  use ``wrk`` when it is installed (the Python clients offer fewer requests
  than the gateways can answer), in runs of 3 s until the limit is spent;
  the admissions are then the key's usage as the gateways counted it.

    .venv/bin/python bench/ratelimit_accuracy.py
    .venv/bin/python bench/ratelimit_accuracy.py --replicas 1 2 --clients 32

Every process started here is stopped by its PID at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
from gateway.keys.service import CLI, KeyService  # noqa: E402
from gateway.keys.store import KeyStore  # noqa: E402
from gateway.store.embedded import redis_server_binary  # noqa: E402
from gateway.usage.reader import day_of, usage_key  # noqa: E402

LIMITS = (("10/second", 10, 1.0), ("1000/minute", 1000, 60.0), ("100000/hour", 100000, 3600.0))
MARGIN = 0.1  # seconds: requests sent this close to a window's end are not counted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout}s")
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Processes:
    """Child processes, stopped by PID in reverse order of start."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def start_redis(procs: Processes, workdir: Path, *extra: str) -> str:
    port = free_port()
    procs.start(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), *extra],
    )  # fmt: skip
    wait_for(lambda: redis.Redis(port=port, socket_timeout=0.5).ping(), 10, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def start_upstream(procs: Processes) -> str:
    port = free_port()
    procs.start([sys.executable, str(ROOT / "bench" / "upstream_stub.py"), "--port", str(port)])
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 0.5).close() is None, 10,
             "the stub upstream")  # fmt: skip
    return f"http://127.0.0.1:{port}"


def gateway_config(redis_url: str, prefix: str, upstream: str, **keys: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False},
        "admin": {"host": "127.0.0.1", "port": 0},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "keys": {"cache_ttl": "5m", **keys},
        "plans": {"default": {}},
        "routes": [{"name": "api", "match": "/api", "upstream": upstream}],
    }


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    url: str
    admin_url: str


def start_gateways(
    procs: Processes, workdir: Path, config: dict[str, Any], count: int, *, log: bool = False
) -> list[GatewayProcess]:
    started = []
    for i in range(count):
        data = dict(config)
        port, admin = free_port(), free_port()
        data["server"] = {**config["server"], "port": port}
        data["admin"] = {**config["admin"], "port": admin}
        path = workdir / f"gateway{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        out = (workdir / f"gateway{i}.log").open("ab") if log else subprocess.DEVNULL
        proc = procs.start(
            [sys.executable, "-m", "gateway", "--config", str(path), "serve"],
            cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(
            GatewayProcess(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
        )
    for gw in started:
        wait_for(lambda gw=gw: urllib.request.urlopen(gw.admin_url + "/readyz", timeout=1).status
                 == 200, 20, "a gateway")  # fmt: skip
    return started


async def make_keys(
    redis_url: str, config: dict[str, Any], rates: list[str]
) -> list[tuple[str, str]]:
    """One account, one key per rate (the key's own limit); their ids and secrets."""
    parsed = parse_config(config)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        prefix = parsed.redis.key_prefix
        service = KeyService(KeyStore(client, prefix), parsed, audit=AuditLog(client, prefix))
        account = (await service.create_account(name="Bench", plan="default")).id
        made = [
            await service.create_key(CLI, account, {"name": rate, "rate_limit": rate})
            for rate in rates
        ]
        return [(record.id, secret) for record, secret in made]
    finally:
        await client.aclose()


async def delete_prefix(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        batch = []
        async for key in client.scan_iter(match=prefix + "*", count=10000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


# -- the load -------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float
    answered: float
    status: int


async def hammer(
    urls: list[str],
    secret: str,
    clients: int,
    *,
    until: float,
    limit: int | None = None,
    tail: float = 0.0,
) -> list[Answer]:
    """``clients`` loops calling ``urls`` in turn with ``secret`` until ``until`` (monotonic),
    or until ``tail`` seconds after ``limit`` requests were admitted."""
    answers: list[Answer] = []
    headers = {"Authorization": f"Bearer {secret}"}
    turn = itertools.cycle(range(len(urls)))
    admitted = 0
    spent_at: float | None = None
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal admitted, spent_at
            while True:
                sent = time.monotonic()
                if sent >= until or (spent_at is not None and sent > spent_at + tail):
                    return
                url = urls[next(turn)] + "/api/x"
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    answered = time.monotonic()
                    answers.append(Answer(sent, answered, resp.status))
                if resp.status == 200:
                    admitted += 1
                    if limit is not None and admitted >= limit and spent_at is None:
                        spent_at = answered

        await asyncio.gather(*(client() for _ in range(clients)))
    return answers


def surely_within(admitted: list[Answer], window: float) -> int:
    """The most admissions surely inside one span of ``window`` (sent and answered in it)."""
    admitted = sorted(admitted, key=lambda a: a.sent)
    best = 0
    for i, first in enumerate(admitted):
        end = first.sent + window
        n = 0
        for a in admitted[i:]:
            if a.sent >= end:
                break
            n += a.answered <= end
        best = max(best, n)
    return best


async def measure(
    urls: list[str],
    admitted_now: Callable[[], int],
    secret: str,
    limit: int,
    window: float,
    clients: int,
    *,
    windows: int = 5,
    tail: float = 2.0,
    max_seconds: float = 60.0,
) -> dict[str, Any]:
    """Admitted requests against what the limit allows in the observation (see the top)."""
    start = time.monotonic()
    if window <= 2.0:  # several whole windows
        observe = windows * window - MARGIN
        answers = await hammer(urls, secret, clients, until=start + observe)
        allowed = windows * limit
        admitted = [a for a in answers if a.status == 200]
        largest = surely_within(admitted, window)
        note = f"{windows} x {window:g}s"
    elif shutil.which("wrk"):  # less than one window, so at most `limit` in all
        return await asyncio.to_thread(
            wrk_until_spent,
            urls,
            admitted_now,
            secret,
            clients,
            limit,
            tail,
            min(max_seconds, window / 2),
        )
    else:
        until = start + min(max_seconds, window / 2)
        answers = await hammer(urls, secret, clients, until=until, limit=limit, tail=tail)
        allowed = limit
        admitted = [a for a in answers if a.status == 200]
        largest = None
        note = f"{max(a.answered for a in answers) - start:.1f}s < 1 window"
    duration = max(a.answered for a in answers) - start
    statuses = [a.status for a in answers]
    return {
        "admitted": len(admitted),
        "allowed": allowed,
        "refused": statuses.count(429),
        "other": len(statuses) - len(admitted) - statuses.count(429),
        "requests": len(answers),
        "throughput": len(answers) / duration,
        "observed": note,
        "max_in_window": largest,
        "reached": len(answers) > allowed,
    }


WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk(urls: list[str], secret: str, connections: int, seconds: int) -> tuple[int, int, int]:
    """One ``wrk`` per URL at once for ``seconds``: (requests, non-2xx answers, socket errors)."""
    per = max(connections // len(urls), 1)
    runs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{per}",
                f"-d{seconds}s",
                "-H",
                f"Authorization: Bearer {secret}",
                url + "/api/x",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for url in urls
    ]
    requests = non_2xx = errors = 0
    for proc in runs:
        out, _ = proc.communicate(seconds + 30)
        total = WRK_TOTAL.search(out)
        if total is None:
            raise RuntimeError(f"wrk said:\n{out}")
        requests += int(total[1])
        refused = WRK_NON_2XX.search(out)
        non_2xx += int(refused[1]) if refused else 0
        failed = WRK_ERRORS.search(out)
        errors += sum(int(n) for n in failed.groups()) if failed else 0
    return requests, non_2xx, errors


def usage_allowed(redis_url: str, prefix: str, key_id: str) -> int:
    """The key's admitted requests as the gateways counted them (its usage, today and
    yesterday), once their once-a-second usage writes are in."""
    time.sleep(1.5)
    now = time.time()
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        return sum(
            int(client.hget(usage_key(prefix, key_id, day_of(moment)), "allowed") or 0)
            for moment in {now, now - 86400}
        )


def wrk_until_spent(
    urls: list[str],
    admitted_now: Callable[[], int],
    secret: str,
    clients: int,
    limit: int,
    tail: float,
    max_seconds: float,
) -> dict[str, Any]:
    """``wrk`` in runs of a few seconds until the limit is spent, then ``tail`` seconds more.

    Every run falls within one window of the limit, so all of them together may
    admit at most ``limit``. Admissions are what the gateways counted for the key
    (``admitted_now``): wrk does not count the requests still in flight when a
    run ends, which the gateways may still admit.
    """
    started = time.monotonic()
    requests = refused = errors = 0
    spent = False
    while time.monotonic() - started < max_seconds:
        n, no, err = wrk(urls, secret, clients, max(int(tail), 1) if spent else 3)
        requests, refused, errors = requests + n, refused + no, errors + err
        if spent:
            break
        spent = no > 0  # refused: the store has no unit left (see the "429s" column)
    duration = time.monotonic() - started
    admitted = admitted_now()
    return {
        "admitted": admitted,
        "allowed": limit,
        "refused": refused,
        "other": errors,
        "requests": requests,
        "throughput": requests / duration,
        "observed": f"{duration:.0f}s < 1 window (wrk)",
        "max_in_window": None,
        "reached": requests > limit,
    }


async def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> int:
    redis_url = args.redis_url or start_redis(procs, workdir)
    upstream = start_upstream(procs)
    prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
    config = gateway_config(redis_url, prefix, upstream)
    print(
        f"{os.cpu_count()} CPUs; {args.clients} concurrent clients spread over the gateway "
        "processes, one Redis; a fresh key per row.\n"
        "allowed = what the sliding window lets through in the observation: 10/second over "
        f"{args.second_windows} whole windows (less {MARGIN * 1000:.0f} ms), the others "
        "observed for less than one window (the whole limit may pass at once).\n"
        "max/1s = most admissions surely inside one second (sent and answered in it).\n"
        "10/second: Python clients (per-request times); the others: wrk when installed.\n"
    )
    header = (
        f"{'processes':>9}  {'limit':>12}  {'admitted':>8} / {'allowed':<7} {'ratio':>6}  "
        f"{'max/1s':>6}  {'429s':>7}  {'other':>5}  {'req/s':>6}  observed"
    )
    print(header)
    print("-" * len(header))
    failed = False
    try:
        for count in args.replicas:
            gateways = start_gateways(procs, workdir, config, count)
            urls = [g.url for g in gateways]
            keys = await make_keys(redis_url, config, [name for name, _, _ in LIMITS])
            for (name, limit, window), (key_id, secret) in zip(LIMITS, keys, strict=True):
                row = await measure(
                    urls, functools.partial(usage_allowed, redis_url, prefix, key_id),
                    secret, limit, window, args.clients,
                    windows=args.second_windows, tail=args.tail, max_seconds=args.max_seconds,
                )  # fmt: skip
                ratio = row["admitted"] / row["allowed"]
                exact = row["admitted"] <= row["allowed"] and (
                    row["max_in_window"] is None or row["max_in_window"] <= limit
                )
                note = row["observed"]
                if not row["reached"]:
                    note += f"; only {row['requests']} offered: the limit was not reached"
                elif ratio < 0.95:
                    note += "; BELOW 95%"
                if not exact:
                    note += "; OVER THE LIMIT"
                failed |= not exact or (row["reached"] and ratio < 0.95) or row["other"] > 0
                largest = "-" if row["max_in_window"] is None else str(row["max_in_window"])
                print(
                    f"{count:>9}  {name:>12}  {row['admitted']:>8} / {row['allowed']:<7} "
                    f"{ratio:>6.3f}  {largest:>6}  {row['refused']:>7}  {row['other']:>5}  "
                    f"{row['throughput']:>6.0f}  {note}",
                    flush=True,
                )
            for gw in gateways:
                procs.stop(gw.proc)
    finally:
        await delete_prefix(redis_url, prefix)
    print("\nPASS" if not failed else "\nFAIL")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--second-windows", type=int, default=5)
    parser.add_argument("--tail", type=float, default=2.0,
                        help="seconds of traffic after a large limit is spent (2)")  # fmt: skip
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="longest observation of a large limit (300)")  # fmt: skip
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-rlbench-", dir="/tmp"))
    procs = Processes()
    try:
        return asyncio.run(run(args, workdir, procs))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""What a rate limit on every request costs the gateway, robust to a busy machine.

Starts the stub upstream and one ``gateway serve`` (pinned to the last core
when there are two or more), creates two keys of one account through the CLI
(one with no limit, one with a limit far above what the run reaches), then
alternates short ``wrk`` runs with each key, ``--rounds`` times. Other work
on the machine only ever slows a run down, so the fastest run of each key
(and its lowest CPU time per request, read from ``/proc``) is the figure
least disturbed; medians are printed too.

    .venv/bin/python bench/ratelimit_overhead.py              # 8 rounds of 3 s per key
    .venv/bin/python bench/ratelimit_overhead.py --rounds 12 -d 2

Every process started here is stopped by its PID; the Redis keys written
under the run's own key prefix are deleted. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIMIT = "100000000/minute"  # never reached: every request is counted and allowed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wrk(port: int, secret: str, seconds: float, cpus: str | None) -> tuple[int, float]:
    """(requests, req/s) of one wrk run."""
    argv = ["wrk", "-t1", "-c50", f"-d{seconds:g}s", "-H", f"Authorization: Bearer {secret}",
            f"http://127.0.0.1:{port}/bench/items?page=1"]  # fmt: skip
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return requests, rps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="default: $REDIS_URL, else redis://127.0.0.1:6379/0 when it answers, else embedded",
    )
    args = parser.parse_args(argv)
    if not args.redis_url:
        with contextlib.suppress(Exception):
            import redis

            if redis.Redis(socket_timeout=0.5).ping():
                args.redis_url = "redis://127.0.0.1:6379/0"
    if shutil.which("wrk") is None:
        print("ratelimit_overhead: wrk is not installed (bench/install-wrk.sh)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = client_cpus = None
    if len(cpus) >= 2:
        server_cpu, client_cpus = str(cpus[-1]), ",".join(map(str, cpus[:-1]))

    tmp = Path(tempfile.mkdtemp(prefix="gwro-", dir="/tmp"))
    prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
    upstream_port, port, admin_port = free_port(), free_port(), free_port()
    redis_section = {"key_prefix": prefix}
    if args.redis_url:
        redis_section["url"] = args.redis_url
    else:
        redis_section["data_dir"] = str(tmp / "store")
    config = {
        "server": {"host": "127.0.0.1", "port": port, "access_log": True},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "redis": redis_section,
        "plans": {"default": {}},
        "routes": [{"name": "bench", "match": "/bench",
                    "upstream": f"http://127.0.0.1:{upstream_port}",
                    "permissions": {"GET": "read"}}],
    }  # fmt: skip
    config_path = tmp / "gateway.yaml"
    config_path.write_text(json.dumps(config))
    started: list[subprocess.Popen] = []

    def start(argv: list[str], log: str, cpu: str | None) -> subprocess.Popen:
        if cpu:
            argv = ["taskset", "-c", cpu, *argv]
        out = open(tmp / log, "wb")  # noqa: SIM115 - the process holds it until stopped
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        started.append(proc)
        return proc

    def cli(*words: str) -> dict:
        done = subprocess.run([PYTHON, "-m", "gateway", "--config", str(config_path), *words],
                              capture_output=True, text=True, cwd=ROOT, check=True)  # fmt: skip
        return json.loads(done.stdout)

    try:
        start([PYTHON, "bench/upstream_stub.py", "--port", str(upstream_port)], "up.log",
              client_cpus)  # fmt: skip
        account = cli("accounts", "create", "--name", "bench", "--json")["id"]
        keys = {
            "auth only": cli("keys", "create", "--account", account, "--name", "plain",
                             "--permissions", "read", "--json")["key"],
            "auth + rate limit": cli("keys", "create", "--account", account, "--name",
                                     "limited", "--permissions", "read", "--rate-limit", LIMIT,
                                     "--json")["key"],
        }  # fmt: skip
        gateway = start([PYTHON, "-m", "gateway", "--config", str(config_path), "serve"],
                        "gateway.log", server_cpu)  # fmt: skip
        wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        for secret in keys.values():  # warm up: the key cache, the limiter's first grant
            wrk(port, secret, 1.0, client_cpus)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in keys}
        for n in range(args.rounds):
            for name, secret in keys.items() if n % 2 == 0 else reversed(keys.items()):
                before = cpu_seconds(gateway.pid)
                requests, rps = wrk(port, secret, args.duration, client_cpus)
                cpu_us = (cpu_seconds(gateway.pid) - before) * 1e6 / max(requests, 1)
                runs[name].append((rps, cpu_us))
                print(f"  round {n + 1} {name:<18} {rps:>9,.0f} req/s  {cpu_us:>7.1f} us CPU/req")
        print(f"\n{'':<18} {'best req/s':>11} {'median':>9} {'best us/req':>12} {'median':>8}")
        best = {}
        for name, rows in runs.items():
            rps = [r for r, _ in rows]
            cpu = [c for _, c in rows]
            best[name] = (max(rps), min(cpu))
            print(f"{name:<18} {max(rps):>11,.0f} {statistics.median(rps):>9,.0f} "
                  f"{min(cpu):>12.1f} {statistics.median(cpu):>8.1f}")  # fmt: skip
        (plain_rps, plain_cpu), (limited_rps, limited_cpu) = best.values()
        by_rps, by_cpu = limited_rps / plain_rps, plain_cpu / limited_cpu
        print(f"\nauth + rate limit / auth only: {by_rps:.3f} by best req/s, "
              f"{by_cpu:.3f} by best CPU per request (goal >= 0.8)")  # fmt: skip
        return 0 if min(by_rps, by_cpu) >= 0.8 else 1
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(
                args.redis_url or f"unix://{tmp / 'store' / 'redis.sock'}", socket_timeout=2
            )
            names = list(client.scan_iter(match=prefix + "*", count=1000))
            if names:
                client.delete(*names)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

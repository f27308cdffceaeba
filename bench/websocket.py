"""WebSockets through the gateway: echo throughput, and how fast a revocation closes them.

Two measurements, on loopback, against real ``python -m gateway serve``
processes (temp config, Redis with a key prefix of the run's own):

1. **Echo throughput.** An echo WebSocket upstream of this script's own
   (aiohttp, uvloop) and a load process (aiohttp ``ws_connect``, uvloop)
   holding ``--connections`` connections (50), each sending a ``--size``-byte
   binary message (1024) and waiting for its echo, for ``--duration`` seconds
   after a warm-up: messages (round trips) per second, p50/p99 round-trip
   latency and the measured process's CPU time per message, once straight to
   the upstream and once through the gateway (a route with ``websocket: true``,
   the key in ``Authorization``). Goal: the gateway at >= 0.3x direct.
2. **Revocation reaches open connections** (SPEC §13). Two gateway replicas
   on the same Redis and key prefix; ``--connections`` keys created for the
   run, one WebSocket each, spread evenly over both replicas; then each key is
   revoked, one after the other, through the management API of replica A
   (``DELETE /v1/api-keys/{id}``; ``--revoke-via cli`` uses ``gateway keys
   revoke ID``). Per connection: the time from its revoke call's return to
   the client seeing the close frame, which must carry code 1008. p50 and max,
   on the replica that took the call and on the other one. Goal: every
   connection closed within 1 s. The same for server-sent-event streams
   (``/stream`` of ``gateway/demo/upstream.py``), which must be cut
   (``--no-sse`` skips them).

On a machine with two or more cores the process measured in (1) (the
upstream for "direct", gateway replica A for "through the gateway") is
pinned to the last core and everything else to the others, as bench/run.py
does. Keys come from the CLI (the account, the load key, an admin key) and
from the management API (the revocation run's keys); secrets are only handed
to the load process, on its standard input, and never printed.

    .venv/bin/python bench/websocket.py              # 10 s of echo each way, then revocations
    .venv/bin/python bench/websocket.py -d 5 --no-sse
    .venv/bin/python bench/websocket.py --only revocation --revoke-via cli

Every listener binds 127.0.0.1; every process started here is stopped by its
PID at the end, also on Ctrl-C or an error; the Redis keys under the run's
prefix are deleted. Figures also go to ``bench/results/websocket-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import queue
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
CLK_TCK = os.sysconf("SC_CLK_TCK")

THROUGHPUT_GOAL = 0.3  # gateway msg/s >= this x direct
REVOKE_GOAL_S = 1.0  # SPEC §13: within one second, on every replica
POLICY_VIOLATION = 1008
WS_PATH = "/ws/echo"
CONTROLS = 4  # connections of a key not revoked, which must stay open through the revocations
SSE_PATH = "/stream?count=1000000&interval=0.5"  # never ends by itself during a run


# -- the roles run as processes of their own ----------------------------------


def run_async(main: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def echo_upstream(port: int) -> None:
    """An echo WebSocket server on every path; a plain ``200 ok`` without an upgrade."""
    from aiohttp import WSMsgType, web

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(text="ok")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def emit(event: str, **data: Any) -> None:
    """One JSON line to the bench process."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of standard input (None at its end), read by a daemon thread."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    return lines


async def load() -> None:
    """The load process: its job (one JSON line) on stdin, events and results on stdout."""
    lines = stdin_lines()
    first = await lines.get()
    if first is None:
        return
    job = json.loads(first)
    try:
        if job["mode"] == "throughput":
            await load_throughput(job)
        else:
            await load_revocation(job, lines)
    except Exception as exc:  # reported to the bench process, which stops the run
        emit("error", message=f"{type(exc).__name__}: {exc}")


async def load_throughput(job: dict) -> None:
    import aiohttp

    headers = {"Authorization": "Bearer " + job["key"]} if job.get("key") else {}
    payload = secrets.token_bytes(job["size"])
    latencies: list[float] = []
    state = {"measuring": False, "stop": False, "errors": 0}
    first_error: list[str] = []

    async def worker(ws: aiohttp.ClientWebSocketResponse) -> None:
        perf = time.perf_counter
        while not state["stop"]:
            started = perf()
            await ws.send_bytes(payload)
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY or msg.data != payload:
                state["errors"] += 1
                if not first_error:
                    first_error.append(f"{msg.type.name} {str(msg.data)[:100]}")
                return
            if state["measuring"]:
                latencies.append(perf() - started)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        opened = await asyncio.gather(
            *(
                session.ws_connect(job["url"], headers=headers, max_msg_size=0, autoping=True)
                for _ in range(job["connections"])
            ),
            return_exceptions=True,
        )
        sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
        failed = [ws for ws in opened if isinstance(ws, BaseException)]
        try:
            if failed:
                emit("error", message=f"{len(failed)} handshake(s) failed: {failed[0]!r}")
                return
            workers = [asyncio.create_task(worker(ws)) for ws in sockets]
            await asyncio.sleep(job["warmup"])
            state["measuring"] = True
            started = time.monotonic()
            emit("measuring")
            await asyncio.sleep(job["duration"])
            state["measuring"] = False
            elapsed = time.monotonic() - started
            emit("measured")
            state["stop"] = True
            done, pending = await asyncio.wait(workers, timeout=5)
            for task in pending:
                task.cancel()
            errors = state["errors"] + sum(1 for t in done if t.exception() is not None)
            latencies.sort()
            emit(
                "result",
                messages=len(latencies),
                seconds=elapsed,
                rate=len(latencies) / elapsed,
                p50_ms=percentile(latencies, 50) * 1000,
                p99_ms=percentile(latencies, 99) * 1000,
                errors=errors,
                first_error=first_error[0] if first_error else None,
            )
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def load_revocation(job: dict, lines: asyncio.Queue[str | None]) -> None:
    """Open one connection per key, wait for each to be closed, report when and how."""
    import aiohttp

    kind = job["kind"]
    targets = job["targets"]
    revoked = {t["id"] for t in targets if not t.get("control")}
    closed: dict[str, dict] = {}
    all_closed = asyncio.Event()

    def record(key_id: str, how: str, code: int | None) -> None:
        closed[key_id] = {"at": time.monotonic(), "how": how, "code": code}
        if revoked <= closed.keys():
            all_closed.set()

    async def open_ws(session: aiohttp.ClientSession, target: dict) -> Callable:
        headers = {"Authorization": "Bearer " + target["key"]}
        ws = await session.ws_connect(target["url"], headers=headers, autoping=True)
        await ws.send_bytes(b"ping")
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type != aiohttp.WSMsgType.BINARY or msg.data != b"ping":
            raise RuntimeError(f"no echo through {target['replica']}: {msg.type.name}")

        async def wait() -> None:
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        record(target["id"], "close frame", ws.close_code)
                        return
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        record(target["id"], f"no close frame ({msg.type.name})", ws.close_code)
                        return
            finally:
                await ws.close()

        return wait

    async def open_sse(session: aiohttp.ClientSession, target: dict) -> Callable:
        headers = {"Authorization": "Bearer " + target["key"], "Accept": "text/event-stream"}
        response = await session.get(target["url"], headers=headers)
        if response.status != 200:
            body = await response.text()
            response.release()
            raise RuntimeError(f"{target['replica']} answered {response.status}: {body[:200]}")
        first = await asyncio.wait_for(response.content.readany(), 5)
        if not first:
            raise RuntimeError("the stream ended before its first event")

        async def wait() -> None:
            try:
                while True:
                    chunk = await response.content.readany()
                    if not chunk:
                        record(target["id"], "end of stream", None)
                        return
            except (aiohttp.ClientError, ConnectionError) as exc:
                record(target["id"], type(exc).__name__, None)
            finally:
                response.close()

        return wait

    opener = open_ws if kind == "ws" else open_sse
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        opened = await asyncio.gather(
            *(opener(session, t) for t in targets), return_exceptions=True
        )
        failed = [o for o in opened if isinstance(o, BaseException)]
        waiters = [asyncio.create_task(o()) for o in opened if not isinstance(o, BaseException)]
        try:
            if failed:
                emit("error", message=f"{len(failed)} connection(s) failed: {failed[0]!r}")
                return
            emit("ready", opened=len(waiters))
            # Closes are timed while the bench process revokes; "done" when it has finished.
            while (line := await lines.get()) is not None and line.strip() != "done":
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_closed.wait(), job["timeout"])
            emit("result", closed=closed)
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)


def percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


# -- processes ----------------------------------------------------------------


class Processes:
    """Every process this run started, stopped by PID (and its own process group)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen:
        out = open(log, "ab")  # noqa: SIM115 - closed when the process is stopped
        kwargs.setdefault("stdout", out)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(
            argv,
            stderr=out,
            start_new_session=True,  # its own group: its children are stopped with it
            cwd=ROOT,
            **kwargs,
        )
        proc._bench_log = out  # type: ignore[attr-defined]
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        for name, p in list(self.started):
            if p is proc:
                stop(p, name)
                self.started.remove((name, p))

    def stop_all(self) -> None:
        for name, proc in reversed(self.started):
            stop(proc, name)
        self.started.clear()


def stop(proc: subprocess.Popen, name: str, grace: float = 10.0) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"bench: {name} (pid {proc.pid}) ignored SIGTERM; killing it", file=sys.stderr)
    # Whatever is left of its group: the group id is our child's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    log = getattr(proc, "_bench_log", None)
    if log is not None:
        log.close()


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry))
    return pids or [pgid]


def pin(pids: list[int], cpus: set[int] | None) -> None:
    if not cpus:
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def core_busy(cpu: int | None) -> float:
    """Seconds core ``cpu`` has spent busy since boot."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(
    port: int, method: str, path: str, headers: dict | None = None, body: Any = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(
    ready: Callable[[], bool], what: str, proc: subprocess.Popen, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s")


class LoadProcess:
    """A load process: the job on its stdin, its JSON event lines read by a thread."""

    def __init__(self, bench: Bench, name: str, job: dict):
        self.name = name
        self.proc = bench.procs.start(
            name,
            [PYTHON, str(Path(__file__).resolve()), "_load"],
            bench.tmp / f"{name}.log",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        pin([self.proc.pid], bench.args.client_cpus)
        self.events: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(job))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    self.events.put(json.loads(line))
        self.events.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict:
        try:
            got = self.events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no {event!r} after {timeout:.0f}s") from None
        if got is None:
            raise RuntimeError(f"{self.name} exited (status {self.proc.wait(5)}) before {event!r}")
        if got.get("event") == "error":
            raise RuntimeError(f"{self.name}: {got.get('message')}")
        if got.get("event") != event:
            raise RuntimeError(f"{self.name}: {got.get('event')!r} where {event!r} was expected")
        return got


# -- the run ------------------------------------------------------------------


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    admin_port: int | None = None

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid)


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    redis_url: str
    procs: Processes = field(default_factory=Processes)
    services: dict[str, Service] = field(default_factory=dict)
    key_prefix: str = field(default_factory=lambda: f"bench:{secrets.token_hex(4)}:")
    config_path: Path | None = None
    account: str = ""
    _secrets: dict[str, str] = field(default_factory=dict)

    def start_echo(self) -> None:
        port = free_port()
        argv = [PYTHON, str(Path(__file__).resolve()), "_echo", str(port)]
        proc = self.procs.start("echo", argv, self.tmp / "echo.log")
        wait_until(lambda: http_call(port, "GET", "/")[0] == 200, "echo upstream", proc, 15)
        self.services["echo"] = Service("echo", port, proc)

    def start_demo(self) -> None:
        port = free_port()
        argv = [PYTHON, "-m", "gateway.demo.upstream", "--port", str(port)]
        proc = self.procs.start("demo", argv, self.tmp / "demo.log")
        wait_until(lambda: http_call(port, "GET", "/echo")[0] == 200, "demo upstream", proc, 15)
        self.services["demo"] = Service("demo", port, proc)

    def start_gateway(self, name: str) -> Service:
        port, admin = free_port(), free_port()
        routes = [
            {
                "name": "ws",
                "match": "/ws",
                "upstream": f"http://127.0.0.1:{self.services['echo'].port}",
                "websocket": True,
            }
        ]
        if "demo" in self.services:
            routes.append(
                {
                    "name": "sse",
                    "match": "/stream",
                    "upstream": f"http://127.0.0.1:{self.services['demo'].port}",
                }
            )
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": admin, "enabled": True},
            "redis": {"url": self.redis_url, "key_prefix": self.key_prefix},
            "plans": {"default": {}},
            "routes": routes,
        }
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.config_path = self.config_path or path
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        argv = [PYTHON, "-m", "gateway", "--config", str(path), "serve"]
        proc = self.procs.start(name, argv, self.tmp / f"{name}.log", env=env)
        wait_until(lambda: http_call(admin, "GET", "/readyz")[0] == 200, name, proc, 30)
        service = Service(name, port, proc, admin)
        self.services[name] = service
        return service

    def cli(self, *args: str) -> dict:
        argv = [PYTHON, "-m", "gateway", "--config", str(self.config_path), *args]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"gateway {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return json.loads(done.stdout) if "--json" in args else {}

    def cli_key(self, name: str, *extra: str) -> str:
        """A key of the run's account made by the CLI; its secret stays in this process."""
        if not self.account:
            self.account = self.cli("accounts", "create", "--name", "ws-bench", "--json")["id"]
        created = self.cli("keys", "create", "--account", self.account, "--name", name,
                           *extra, "--json")  # fmt: skip
        self._secrets[name] = created["key"]
        return created["key"]

    def api_keys(self, count: int, label: str) -> list[tuple[str, str]]:
        """``count`` keys made through replica A's management API: (id, secret)."""
        admin = self._secrets.get("admin") or self.cli_key("admin", "--permissions", "admin")
        port = self.services["gateway-a"].port
        keys = []
        for i in range(count):
            status, body = http_call(port, "POST", "/v1/api-keys",
                                     {"Authorization": "Bearer " + admin},
                                     {"name": f"{label}-{i}"})  # fmt: skip
            if status != 201:
                raise RuntimeError(f"POST /v1/api-keys answered {status}: {body[:300]!r}")
            data = json.loads(body)["data"]
            keys.append((data["id"], data["key"]))
        return keys

    def revoke(self, key_id: str) -> tuple[float, float]:
        """Revoke ``key_id``; (monotonic time of the call, of its return)."""
        started = time.monotonic()
        if self.args.revoke_via == "cli":
            self.cli("keys", "revoke", key_id)
        else:
            status, body = http_call(
                self.services["gateway-a"].port, "DELETE", f"/v1/api-keys/{key_id}",
                {"Authorization": "Bearer " + self._secrets["admin"]},
            )  # fmt: skip
            if status != 200:
                raise RuntimeError(
                    f"DELETE /v1/api-keys/{key_id} answered {status}: {body[:300]!r}"
                )
        return started, time.monotonic()

    def place(self, measured: str | None) -> None:
        """``measured`` on the server core(s), every other service on the client cores.

        None: every service on every core (the revocation runs measure no throughput).
        """
        if not self.args.server_cpus:
            return
        every = self.args.server_cpus | self.args.client_cpus
        for name, service in self.services.items():
            if measured is None:
                cpus = every
            else:
                cpus = self.args.server_cpus if name == measured else self.args.client_cpus
            pin(service.pids(), cpus)

    def cleanup(self) -> None:
        self.procs.stop_all()
        delete_prefix(self.redis_url, self.key_prefix)


def redis_answers(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        try:
            names = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=500))
            for at in range(0, len(names), 500):
                client.delete(*names[at : at + 500])
        finally:
            client.close()
    except Exception as exc:  # never hide the results because of cleanup
        print(f"bench: could not delete {prefix}* from Redis: {exc}", file=sys.stderr)


# -- the two measurements -----------------------------------------------------


def measure_throughput(bench: Bench, target: str, url: str, key: str | None) -> dict:
    """Echo round trips per second with ``target``'s process on the server core."""
    args = bench.args
    bench.place(target)
    job = {"mode": "throughput", "url": url, "key": key, "connections": args.connections,
           "size": args.size, "warmup": args.warmup, "duration": args.duration}  # fmt: skip
    load_proc = LoadProcess(bench, f"load-{target}", job)
    pids = bench.services[target].pids()
    client = [load_proc.proc.pid]
    core = min(args.server_cpus) if args.server_cpus else None
    try:
        load_proc.expect("measuring", args.warmup + 30)
        cpu0, core0, wall0 = cpu_seconds(pids), core_busy(core), time.monotonic()
        client0 = cpu_seconds(client)
        load_proc.expect("measured", args.duration + 30)
        cpu1, core1, wall1 = cpu_seconds(pids), core_busy(core), time.monotonic()
        client1 = cpu_seconds(client)
        result = load_proc.expect("result", 30)
    finally:
        bench.procs.stop(load_proc.proc)
    wall = wall1 - wall0
    result["cpu_us_per_msg"] = (cpu1 - cpu0) * 1e6 / max(result["messages"], 1)
    result["cpu_busy"] = (cpu1 - cpu0) / wall
    result["client_cpu_busy"] = (client1 - client0) / wall
    if core is not None:
        result["server_core_others"] = max(0.0, (core1 - core0 - (cpu1 - cpu0)) / wall)
    return result


def measure_revocation(bench: Bench, kind: str) -> dict:
    """Open one ``kind`` connection per fresh key over both replicas, revoke, time each close."""
    args = bench.args
    replicas = [bench.services["gateway-a"], bench.services["gateway-b"]]
    keys = bench.api_keys(args.connections, f"revoke-{kind}")
    path = WS_PATH if kind == "ws" else SSE_PATH
    scheme = "ws" if kind == "ws" else "http"
    targets = []
    for i, (key_id, secret) in enumerate(keys):
        replica = replicas[i % 2]
        targets.append({"id": key_id, "key": secret, "replica": replica.name,
                        "url": f"{scheme}://127.0.0.1:{replica.port}{path}"})  # fmt: skip
    # Controls: connections of a key that stays valid, which must stay open.
    control = bench._secrets.get("ws-load") or bench.cli_key("ws-load")
    for i in range(CONTROLS):
        replica = replicas[i % 2]
        targets.append({"id": f"control-{i}", "key": control, "replica": replica.name,
                        "control": True, "url": f"{scheme}://127.0.0.1:{replica.port}{path}"})  # fmt: skip
    job = {"mode": "revocation", "kind": kind, "targets": targets, "timeout": args.revoke_timeout}
    load_proc = LoadProcess(bench, f"load-revoke-{kind}", job)
    try:
        ready = load_proc.expect("ready", 60)
        time.sleep(0.5)  # every connection settled (and its key cached on its replica)
        calls: dict[str, tuple[float, float]] = {}
        for key_id, _ in keys:
            calls[key_id] = bench.revoke(key_id)
            if args.revoke_gap:
                time.sleep(args.revoke_gap)
        load_proc.send("done")
        result = load_proc.expect("result", args.revoke_timeout + 30)
    finally:
        bench.procs.stop(load_proc.proc)
    rows = []
    for target in targets:
        if target.get("control"):
            continue
        started, returned = calls[target["id"]]
        seen = result["closed"].get(target["id"])
        rows.append({
            "replica": target["replica"],
            "call_ms": (returned - started) * 1000,
            "after_return_ms": (seen["at"] - returned) * 1000 if seen else None,
            "how": seen["how"] if seen else "still open",
            "code": seen["code"] if seen else None,
        })  # fmt: skip
    controls_cut = sorted(
        seen["how"] for name, seen in result["closed"].items() if name.startswith("control-")
    )
    return {"kind": kind, "opened": ready["opened"], "connections": rows,
            "controls": CONTROLS, "controls_cut": controls_cut}  # fmt: skip


def summarise_revocation(result: dict) -> dict:
    rows = result["connections"]
    kind = result["kind"]

    def ok(row: dict) -> bool:
        if row["after_return_ms"] is None:
            return False
        return row["code"] == POLICY_VIOLATION if kind == "ws" else True

    def stats(subset: list[dict]) -> dict:
        times = sorted(r["after_return_ms"] for r in subset if r["after_return_ms"] is not None)
        return {
            "n": len(subset),
            "closed": len(times),
            "p50_ms": statistics.median(times) if times else None,
            "max_ms": times[-1] if times else None,
            "min_ms": times[0] if times else None,
        }

    summary = stats(rows)
    summary["right_code"] = sum(1 for r in rows if ok(r))
    summary["by_replica"] = {
        name: stats([r for r in rows if r["replica"] == name])
        for name in sorted({r["replica"] for r in rows})
    }
    summary["call_p50_ms"] = statistics.median(r["call_ms"] for r in rows)
    summary["how"] = sorted({r["how"] for r in rows})
    summary["codes"] = sorted({str(r["code"]) for r in rows})
    # every connection cut (with 1008 for a WebSocket), the slowest within the goal
    summary["controls_cut"] = len(result["controls_cut"])
    summary["pass"] = (
        summary["right_code"] == len(rows)
        and not result["controls_cut"]
        and summary["max_ms"] is not None
        and summary["max_ms"] <= REVOKE_GOAL_S * 1000
    )
    return summary


# -- main ---------------------------------------------------------------------


def cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.update(range(int(lo), int(hi) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="WebSocket echo throughput through the gateway vs direct, and how fast "
        "a revocation closes open WebSockets and event streams on two replicas."
    )
    parser.add_argument("-d", "--duration", type=float, default=10.0,
                        help="measured seconds of echo, each way (default 10)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before")
    parser.add_argument("--rounds", type=int, default=1,
                        help="echo runs each way, interleaved; the median is reported")  # fmt: skip
    parser.add_argument("-c", "--connections", type=int, default=50,
                        help="WebSockets for the echo run; keys (one connection each) "
                        "for each revocation run (default 50)")  # fmt: skip
    parser.add_argument("--size", type=int, default=1024, help="message bytes (default 1024)")
    parser.add_argument("--only", choices=["throughput", "revocation"])
    parser.add_argument("--no-sse", action="store_true",
                        help="skip the server-sent-event streams in the revocation run")  # fmt: skip
    parser.add_argument("--revoke-via", choices=["api", "cli"], default="api",
                        help="replica A's DELETE /v1/api-keys/{id} (default) or "
                        "`gateway keys revoke ID`")  # fmt: skip
    parser.add_argument("--revoke-gap", type=float, default=0.0,
                        help="seconds between two revocations (default 0: back to back)")  # fmt: skip
    parser.add_argument("--revoke-timeout", type=float, default=5.0,
                        help="seconds after the last revocation to wait for the closes")  # fmt: skip
    parser.add_argument("--redis-url", help=f"default: $REDIS_URL, else {DEFAULT_REDIS}")
    parser.add_argument("--server-cpu", default=None,
                        help="core(s) for the measured process (default: the last core)")  # fmt: skip
    parser.add_argument("--client-cpu", default=None,
                        help="core(s) for everything else (default: all the others)")  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temp dir with every process's log (configs hold no secret)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.connections < 2 or args.size < 1 or args.duration <= 0 or args.rounds < 1:
        parser.error("--connections >= 2, --size >= 1, --duration > 0 and --rounds >= 1")
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpus = args.client_cpus = None
    if not args.no_pin and len(cpus) >= 2:
        args.server_cpus = cpu_list(args.server_cpu) if args.server_cpu else {cpus[-1]}
        args.client_cpus = (
            cpu_list(args.client_cpu) if args.client_cpu else set(cpus) - args.server_cpus
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redis_url = args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS
    if not redis_answers(redis_url):
        print(f"bench: no Redis answers at {redis_url} (two replicas need one)", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="gwws-", dir="/tmp"))
    bench = Bench(args, tmp, redis_url)
    samples: dict[str, list[dict]] = {}
    revocation: list[dict] = []
    status = 0
    sse = not args.no_sse and args.only != "throughput"
    try:
        bench.start_echo()
        if sse:
            bench.start_demo()
        gateway = bench.start_gateway("gateway-a")
        if args.only != "throughput":
            bench.start_gateway("gateway-b")
        print(
            f"bench: store {redis_url} (prefix {bench.key_prefix}), "
            + (
                f"measured process on cpu {sorted(args.server_cpus)}, "
                f"the rest on cpu {sorted(args.client_cpus)}"
                if args.server_cpus
                else "not pinned"
            ),
            file=sys.stderr,
        )
        if args.only != "revocation":
            key = bench.cli_key("ws-load")
            echo = bench.services["echo"]
            for round_no in range(args.rounds):  # interleaved: a slow spell hits both sides
                for name, target, url, secret in (
                    ("direct", "echo", f"ws://127.0.0.1:{echo.port}{WS_PATH}", None),
                    ("gateway", "gateway-a", f"ws://127.0.0.1:{gateway.port}{WS_PATH}", key),
                ):
                    r = measure_throughput(bench, target, url, secret)
                    samples.setdefault(name, []).append(r)
                    print(f"  round {round_no + 1} echo {name:<8} {r['rate']:>10,.0f} msg/s  "
                          f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms", file=sys.stderr)  # fmt: skip
        if args.only != "throughput":
            bench.place(None)
            if args.revoke_via == "api":
                bench.cli_key("admin", "--permissions", "admin")
            for kind in ("ws", "sse") if sse else ("ws",):
                result = measure_revocation(bench, kind)
                result["summary"] = summarise_revocation(result)
                revocation.append(result)
                s = result["summary"]
                print(f"  revoke {kind:<4} {s['closed']}/{s['n']} cut, "
                      f"p50 {fmt_ms(s['p50_ms'])}  max {fmt_ms(s['max_ms'])}", file=sys.stderr)  # fmt: skip
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        status = 130
    except Exception as exc:
        print(f"bench: {exc}", file=sys.stderr)
        for name in ("gateway-a", "gateway-b", "echo", "demo"):
            log = tmp / f"{name}.log"
            if log.exists() and log.stat().st_size:
                tail = log.read_text(errors="replace").splitlines()[-5:]
                print(f"  {name}.log: " + "\n    ".join(tail), file=sys.stderr)
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        bench.cleanup()
        problems = log_problems(tmp)
        if args.keep_logs:
            print(f"bench: logs kept in {tmp}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                for path in tmp.iterdir():
                    path.unlink()
                tmp.rmdir()

    throughput = {name: median_run(runs) for name, runs in samples.items()}
    if not throughput and not revocation:
        return status or 1
    print()
    print_report(args, throughput, revocation)
    for line in problems:
        print(line)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"websocket-{stamp}.json"
        settings = {k: v for k, v in vars(args).items() if not k.endswith("cpus")}
        settings["server_cpus"] = sorted(args.server_cpus) if args.server_cpus else None
        settings["client_cpus"] = sorted(args.client_cpus) if args.client_cpus else None
        out.write_text(json.dumps({"timestamp": dt.datetime.now().isoformat(timespec="seconds"),
                                   "settings": settings, "throughput": throughput, "throughput_runs": samples,
                                   "revocation": revocation}, indent=2) + "\n")  # fmt: skip
        print(f"results: {out.relative_to(ROOT)}")
    return status


def median_run(runs: list[dict]) -> dict:
    """The median run by msg/s, whole (its latencies belong to it)."""
    row = dict(sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2])
    if len(runs) > 1:
        row["rates"] = [round(r["rate"]) for r in runs]
    return row


def log_problems(tmp: Path) -> list[str]:
    """Errors and tracebacks the services logged during the run (first few of each)."""
    out = []
    for log in sorted(tmp.glob("*.log")):
        # (the demo upstream logs a traceback for each event stream cut: expected)
        if log.name.startswith(("load-", "demo")):
            continue
        lines = log.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln]
        if bad:
            out.append(f"note: {log.stem} logged {len(bad)} error line(s), first: {bad[0][:300]}")
    return out


def cell(value: float | None) -> str:
    return f"{'-':>9}" if value is None else f"{value:>9.1f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def print_report(args: argparse.Namespace, throughput: dict, revocation: list[dict]) -> None:
    if throughput:
        print(f"WebSocket echo: {args.size}-byte binary messages, {args.connections} connections, "
              f"{args.duration:g} s after {args.warmup:g} s of warm-up")  # fmt: skip
        head = (f"{'':<24}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/msg':>12}{'cpu %':>7}"
                f"{'client cpu':>12}{'x direct':>10}")  # fmt: skip
        print(head)
        print("-" * len(head))
        titles = {"direct": "direct to the upstream", "gateway": "through the gateway"}
        direct = throughput.get("direct", {}).get("rate")
        for name, r in throughput.items():
            line = (f"{titles[name]:<24}{r['rate']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                    f"{r['cpu_us_per_msg']:>12.1f}{r['cpu_busy']:>7.0%}"
                    f"{r['client_cpu_busy']:>12.0%}")  # fmt: skip
            line += f"{r['rate'] / direct:>10.3f}" if direct else ""
            flags = []
            if r.get("errors"):
                flags.append(f"{r['errors']} errors, first: {r.get('first_error')}")
            if r.get("server_core_others", 0) > 0.05:
                flags.append(f"measured core {r['server_core_others']:.0%} busy with other work")
            print(line + (f"  ({'; '.join(flags)})" if flags else ""))
        for name, r in throughput.items():
            if r.get("rates"):
                runs = ", ".join(f"{v:,}" for v in r["rates"])
                print(f"({titles[name]}: median of {len(r['rates'])} runs: {runs} msg/s)")
        if direct and "gateway" in throughput:
            value = throughput["gateway"]["rate"] / direct
            ok = value >= THROUGHPUT_GOAL and not throughput["gateway"].get("errors")
            print(f"{'PASS' if ok else 'FAIL'}: echo through the gateway = {value:.3f} x direct "
                  f"(goal >= {THROUGHPUT_GOAL})")  # fmt: skip
        print()
    if revocation:
        print(f"Revocation reaches open connections: 2 replicas on one Redis, one key per "
              f"connection, revoked one by one through "
              f"{'gateway keys revoke' if args.revoke_via == 'cli' else 'replica A (DELETE /v1/api-keys/{id})'}; "
              f"time from each revoke call's return to the client seeing the close")  # fmt: skip
        head = (f"{'':<22}{'cut':>7}{'p50 ms':>9}{'max ms':>9}{'min ms':>9}"
                f"{'A p50/max':>16}{'B p50/max':>16}{'call ms':>9}")  # fmt: skip
        print(head)
        print("-" * len(head))
        titles = {"ws": "WebSocket (code 1008)", "sse": "event stream (cut)"}
        for result in revocation:
            s = result["summary"]

            def pair(name: str, s: dict = s) -> str:
                r = s["by_replica"].get(name)
                if not r or r["p50_ms"] is None:
                    return "-"
                return f"{r['p50_ms']:.1f}/{r['max_ms']:.1f}"

            print(f"{titles[result['kind']]:<22}{s['right_code']:>4}/{s['n']:<2}"
                  f"{cell(s['p50_ms'])}{cell(s['max_ms'])}{cell(s['min_ms'])}"
                  f"{pair('gateway-a'):>16}{pair('gateway-b'):>16}{s['call_p50_ms']:>9.1f}")  # fmt: skip
        who = (
            "the CLI wrote to Redis, both replicas heard of it there"
            if args.revoke_via == "cli"
            else "A took the revoke calls, B heard of them through Redis"
        )
        print(f"({who}; negative: closed before the call returned; "
              f"call ms: the revoke call's own p50)")  # fmt: skip
        for result in revocation:
            s = result["summary"]
            what = "WebSocket closed with 1008" if result["kind"] == "ws" else "event stream cut"
            detail = f"max {fmt_ms(s['max_ms'])}"
            if s["right_code"] != s["n"]:
                detail += f"; only {s['right_code']} of {s['n']} (seen: {', '.join(s['how'])}; " \
                          f"codes {', '.join(s['codes'])})"  # fmt: skip
            if s["controls_cut"]:
                detail += f"; {s['controls_cut']} of {result['controls']} connections of a key " \
                          f"NOT revoked were cut too ({', '.join(result['controls_cut'])})"  # fmt: skip
            else:
                detail += f"; the {result['controls']} connections of a key not revoked stayed open"
            if result["kind"] == "sse":
                detail += f"; the client saw: {', '.join(s['how'])}"
            print(f"{'PASS' if s['pass'] else 'FAIL'}: every {what} within "
                  f"{REVOKE_GOAL_S:g} s of its key's revocation: {detail}")  # fmt: skip


def role(argv: list[str]) -> int | None:
    """The processes this script starts run it again with a role."""
    if argv[:1] == ["_echo"]:
        run_async(echo_upstream(int(argv[1])))
        return 0
    if argv[:1] == ["_load"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        run_async(load())
        return 0
    return None


if __name__ == "__main__":
    code = role(sys.argv[1:])
    sys.exit(main() if code is None else code)

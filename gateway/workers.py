"""Several gateway processes on one port, under a supervisor (``server.workers`` / ``--workers``).

Each worker is a whole gateway (``serve``) binding the public port with
``SO_REUSEPORT``: the kernel spreads new connections across the workers'
listening sockets, and a worker that dies is out of the spread at once.
Each worker has its own key cache, kept coherent with the others (and with
other replicas) by the store's invalidation channel.

The supervisor (this module's :func:`supervise`, the process you started):

- starts the workers, and restarts one that exits unexpectedly (after a
  back-off that grows while it keeps failing within seconds of starting;
  after five such failures in a row it gives up and stops, exit status 1);
- forwards SIGTERM, SIGINT and SIGHUP to every worker (workers run in a
  process group of their own, so a Ctrl-C reaches them once, through it),
  waits for their drain, and exits 0 when they have;
- owns the admin port. Each worker serves its admin endpoints on a private
  unix socket; on ``admin.port`` the supervisor answers ``/healthz`` itself
  (with each worker's pid and restarts), ``/readyz`` 200 while not shutting
  down and at least one worker reports ready (the kernel only sends
  connections to live workers), and ``/metrics`` with every worker's series
  merged, each labelled ``worker="N"`` (sum them in PromQL), plus
  ``gateway_worker_restarts_total`` and ``gateway_workers_up``;
- on the embedded store, starts the store itself so that it outlives any
  one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from .config import ConfigError, load_config
from .config.schema import Config
from .ops.reload import pin_restart_only

log = logging.getLogger("gateway.workers")

QUICK_EXIT = 10.0  # a worker that exits sooner than this after starting is failing
GIVE_UP_AFTER = 5  # quick failures in a row
POLL = 0.1


@dataclass
class Worker:
    index: int
    socket_path: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def merge_metrics(texts: Iterable[tuple[str, str]], extra: Iterable[Metric] = ()) -> bytes:
    """One exposition from several workers' ones, each sample labelled with its worker."""
    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    for metric in extra:
        families[metric.name] = metric

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)


class Supervisor:
    def __init__(self, config: Config, config_path: str, count: int):
        self.config = config  # as started: its restart-only settings hold until a restart
        self.latest = config  # the last configuration that validated (a reload may change it)
        self.config_path = config_path
        self.count = count
        self._started_path = self._current_path = ""
        self.workers: list[Worker] = []
        self.stopping = False
        self.gave_up = False
        self._stop_signals = 0
        self._dir = ""

    # -- processes ----------------------------------------------------------------

    def _current(self) -> Config:
        """The configuration a worker starts with: the file as it is now when it validates,
        else the last that did (a worker restarted after a crash must not fail on a file
        the running workers refused to reload), its restart-only settings as started.
        Kept as text in :attr:`_dir` for the worker to read."""
        try:
            text = Path(self.config_path).read_text(encoding="utf-8")
            loaded = load_config(self.config_path)
        except (OSError, ConfigError) as exc:
            why = "; ".join(exc.errors) if isinstance(exc, ConfigError) else str(exc)
            log.warning("config file refused (%s); workers start from the last that validated",
                        why)  # fmt: skip
        else:
            self.latest, _ = pin_restart_only(self.config, loaded)
            Path(self._current_path).write_text(text, encoding="utf-8")
        return self.latest

    def _spawn(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.socket_path)
        self._current()
        worker.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.workers",
                "--config",
                self.config_path,
                "--started",
                self._started_path,
                "--current",
                self._current_path,
                "--index",
                str(worker.index),
                "--admin-socket",
                worker.socket_path,
                "--parent",
                str(os.getpid()),
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            process_group=0,  # terminal signals reach the supervisor only; it forwards them
        )
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _check(self) -> None:
        """Notice exited workers and restart them when their back-off is over."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.proc is not None and worker.restart_at is None and not worker.alive:
                code = worker.proc.returncode
                worker.exit_codes.append(code)
                lived = now - worker.started_at
                worker.quick_failures = worker.quick_failures + 1 if lived < QUICK_EXIT else 0
                if worker.quick_failures >= GIVE_UP_AFTER:
                    log.error(
                        "worker %d keeps failing (%d exits within %.0fs of starting); giving up",
                        worker.index, worker.quick_failures, QUICK_EXIT,
                    )  # fmt: skip
                    self.gave_up = True
                    return
                delay = (
                    0.1 if worker.quick_failures == 0 else min(5.0, 0.25 * 2**worker.quick_failures)
                )
                log.warning(
                    "worker %d (pid %d) exited with status %s after %.1fs; restarting in %.2gs",
                    worker.index, worker.proc.pid, code, lived, delay,
                )  # fmt: skip
                worker.restart_at = now + delay
            if worker.restart_at is not None and now >= worker.restart_at:
                worker.restarts += 1
                self._spawn(worker)

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)  # type: ignore[union-attr]

    def _on_stop(self, signum: int) -> None:
        self._stop_signals += 1
        if not self.stopping:
            log.info("%s received: stopping the workers", signal.Signals(signum).name)
        self.stopping = True
        self._forward(signum)

    async def _wait_for_workers(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(w.alive for w in self.workers):
            if time.monotonic() > deadline:
                for worker in self.workers:
                    if worker.alive:
                        log.error("worker %d did not stop in time: killing it", worker.index)
                        worker.proc.kill()  # type: ignore[union-attr]
                return False
            await asyncio.sleep(POLL)
        return True

    # -- the admin port ------------------------------------------------------------

    async def _ask(
        self, worker: Worker, path: str, timeout: float = 2.0, method: str = "GET"
    ) -> tuple[int, str] | None:
        if not worker.alive:
            return None
        try:
            connector = aiohttp.UnixConnector(path=worker.socket_path)
            limit = aiohttp.ClientTimeout(total=timeout)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.request(method, "http://worker" + path, timeout=limit) as resp,
            ):
                return resp.status, await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    def _admin_app(self) -> web.Application:
        async def healthz(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "status": "ok",
                    "workers": [
                        {"index": w.index, "pid": w.pid, "alive": w.alive, "restarts": w.restarts}
                        for w in self.workers
                    ],
                }
            )

        async def readyz(request: web.Request) -> web.Response:
            if self.stopping:
                return web.json_response({"status": "draining"}, status=503)
            answers = await asyncio.gather(*(self._ask(w, "/readyz") for w in self.workers))
            states = []
            for w, a in zip(self.workers, answers, strict=True):
                state: dict = {"index": w.index, "pid": w.pid, "ready": bool(a and a[0] == 200)}
                if a is not None:  # the worker's own parts: store, draining, restart_required
                    with contextlib.suppress(ValueError, AttributeError):
                        body = json.loads(a[1])
                        state.update({k: v for k, v in body.items() if k != "status"})
                states.append(state)
            ready = any(s["ready"] for s in states)
            return web.json_response(
                {"status": "ready" if ready else "unavailable", "workers": states},
                status=200 if ready else 503,
            )

        async def metrics(request: web.Request) -> web.Response:
            answers = await asyncio.gather(*(self._ask(w, "/metrics") for w in self.workers))
            texts = [
                (str(w.index), a[1])
                for w, a in zip(self.workers, answers, strict=True)
                if a is not None and a[0] == 200
            ]
            restarts = Metric(
                "gateway_worker_restarts", "Worker processes restarted by the supervisor", "counter"
            )
            up = Metric("gateway_workers_up", "Worker processes running", "gauge")
            for w in self.workers:
                restarts.add_sample(
                    "gateway_worker_restarts_total", {"worker": str(w.index)}, w.restarts
                )
            up.add_sample("gateway_workers_up", {}, sum(w.alive for w in self.workers))
            body = await asyncio.to_thread(merge_metrics, texts, (restarts, up))
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def reload(request: web.Request) -> web.Response:
            """Every worker reloads now; each one's answer, 200 only if all reloaded."""
            answers = await asyncio.gather(
                *(self._ask(w, "/reload", timeout=30.0, method="POST") for w in self.workers)
            )
            states = []
            for w, a in zip(self.workers, answers, strict=True):
                state: dict = {"index": w.index, "pid": w.pid}
                if a is None:
                    state.update(status="unreachable")
                else:
                    with contextlib.suppress(ValueError):
                        state.update(json.loads(a[1]))
                states.append(state)
            reloaded = all(s.get("status") == "reloaded" for s in states)
            required = sorted({n for s in states for n in s.get("restart_required", ())})
            return web.json_response(
                {
                    "status": "reloaded" if reloaded else "refused",
                    "restart_required": required,
                    "workers": states,
                },
                status=200 if reloaded else 422,
            )

        app = web.Application()
        app.add_routes(
            [
                web.get("/healthz", healthz),
                web.get("/readyz", readyz),
                web.get("/metrics", metrics),
                web.post("/reload", reload),
            ]
        )
        return app

    # -- the whole run ---------------------------------------------------------------

    async def run(self) -> int:
        self._dir = tempfile.mkdtemp(prefix="gw-workers-")
        self._started_path = os.path.join(self._dir, "started.yaml")
        self._current_path = os.path.join(self._dir, "current.yaml")
        shutil.copyfile(self.config_path, self._started_path)
        shutil.copyfile(self.config_path, self._current_path)
        self.workers = [
            Worker(i, os.path.join(self._dir, f"admin-{i}.sock")) for i in range(self.count)
        ]
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        admin_runner = None
        try:
            if self.config.admin.enabled:
                admin_runner = web.AppRunner(
                    self._admin_app(), access_log=None, handle_signals=False
                )
                await admin_runner.setup()
                await web.TCPSite(
                    admin_runner, self.config.admin.host, self.config.admin.port
                ).start()
            for worker in self.workers:
                self._spawn(worker)
            log.info(
                "supervising %d workers on %s:%s (admin %s:%s)",
                self.count, self.config.server.host, self.config.server.port,
                self.config.admin.host, self.config.admin.port,
            )  # fmt: skip
            while not self.stopping and not self.gave_up:
                self._check()
                await asyncio.sleep(POLL)
            if self.gave_up:
                self.stopping = True
                self._forward(signal.SIGTERM)
            drain = self._current().server.drain_timeout  # as reloaded, not as started
            in_time = await self._wait_for_workers(drain + 10.0)
            clean = in_time and all(
                w.proc is None or w.restart_at is not None or w.proc.returncode == 0
                for w in self.workers  # (one that had died and awaited its restart: not a fault)
            )
            log.info("all workers stopped")
            return 1 if self.gave_up or not clean else 0
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            for worker in self.workers:
                if worker.alive:
                    worker.proc.kill()  # type: ignore[union-attr]
                    worker.proc.wait()  # type: ignore[union-attr]
            if admin_runner is not None:
                await admin_runner.cleanup()
            shutil.rmtree(self._dir, ignore_errors=True)


def _port_available(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be shared by the workers, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as the workers' listeners do: connections of a gateway stopped a moment ago
        # (TIME-WAIT) do not hold the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return str(exc)
    return None


def supervise(config: Config, config_path: str, workers: int) -> int:
    """Run ``workers`` gateway processes on the configured port until stopped; the exit status."""
    server = config.server
    if server.port == 0:
        print("gateway: server.port 0 (any free port) needs a single worker", file=sys.stderr)
        return 1
    problem = _port_available(server.host, server.port)
    if problem:
        print(f"gateway: cannot listen on {server.host}:{server.port}: {problem}", file=sys.stderr)
        return 1
    embedded = None
    if config.redis.embedded:
        from .store.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(config.redis.data_dir).start()  # shared by the workers
    try:
        return asyncio.run(Supervisor(config, config_path, workers).run())
    finally:
        if embedded is not None:
            embedded.stop()


# -- one worker -------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the supervisor dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway-worker")
    parser.add_argument("--config", required=True)  # watched and reloaded
    # the configuration as the supervisor started, and the last that validated (text copies)
    parser.add_argument("--started")
    parser.add_argument("--current")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--admin-socket", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[{args.index}]: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _die_with_parent(args.parent)
    from .server import install_uvloop, serve
    from .telemetry.logs import configure_logging

    try:
        if args.started and args.current:
            config, _ = pin_restart_only(load_config(args.started), load_config(args.current))
        else:
            config = load_config(args.config)
    except ConfigError as exc:
        log.error("worker %d: invalid configuration: %s", args.index, "; ".join(exc.errors))
        return 1
    if config.logging.format != "text":
        configure_logging(config.logging.format, worker=args.index)
    install_uvloop()
    try:
        return asyncio.run(
            serve(
                config,
                config_path=args.config,
                reuse_port=True,
                admin_socket=args.admin_socket,
                worker=args.index,
            )
        )
    except OSError as exc:
        log.error("worker %d cannot listen: %s", args.index, exc)
        return 1


if __name__ == "__main__":
    sys.exit(worker_main())

"""The proxy benchmark: upstream, plain pass-through and gateway under wrk, on loopback.

Starts a stub upstream (nginx when installed, else ``bench/upstream_stub.py``),
the plain aiohttp pass-through (``bench/passthrough.py``) and the real gateway
(``python -m gateway serve`` with a temp config, access log on), creates an
account and a key through the CLI, then runs ``wrk --latency`` against each
scenario of ``SCENARIOS`` and prints requests/s, p50, p99 and ratios; the
figures are also written to ``bench/results/<timestamp>.json``.

On a machine with two or more cores the process a row measures is pinned to
one core (``--server-cpu``) and everything else (wrk, the upstream when it is
not what is measured, idle services) to the others, as in PERF.md.

Every listener binds 127.0.0.1; every process started here is stopped by its
PID at the end, also on Ctrl-C or an error; the Redis keys written under the
run's own key prefix are deleted.

    bench/run.sh                       # every scenario, 10 s each
    bench/run.sh -d 5 --only direct,gateway_cached_key
    bench/run.sh --rounds 3            # interleaved rounds, median reported
    bench/run.sh --profile             # py-spy flame graph of each gateway row

Adding a scenario: append a :class:`Scenario` to ``SCENARIOS`` (a gateway route
it needs goes in ``GATEWAY_ROUTES``, a key with other options in ``KEYS``, a
pass/fail target in ``GOALS``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

from upstream_stub import BODY  # noqa: E402

PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# -- what is measured ---------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One wrk run against one service.

    ``target`` names the service whose process is measured (it gets the
    server core): ``upstream``, ``passthrough`` or ``gateway``. ``headers``
    receives the running :class:`Bench` (for ``bench.key(name)``).
    """

    name: str
    title: str
    target: str
    path: str = "/bench/items?page=1"
    method: str = "GET"
    headers: Callable[[Bench], dict[str, str]] = lambda bench: {}
    expect_status: int = 200
    lua: str | None = None  # a wrk script (path) for anything -H cannot express


def bearer(key_name: str) -> Callable[[Bench], dict[str, str]]:
    return lambda bench: {"Authorization": "Bearer " + bench.key(key_name)}


SCENARIOS: list[Scenario] = [
    Scenario("direct", "direct to the upstream", "upstream"),
    Scenario("passthrough", "plain aiohttp pass-through", "passthrough"),
    Scenario("forwarder", "gateway's forwarder, no checks", "forwarder"),
    Scenario(
        "gateway_cached_key", "gateway, valid cached key", "gateway", headers=bearer("reader")
    ),
    Scenario(
        "gateway_rate_limited",
        "gateway, cached key + rate limit never reached",
        "gateway",
        headers=bearer("limited"),
    ),
    Scenario(
        "gateway_3_windows",
        "gateway, cached key, plan with 3 rate windows never reached",
        "gateway",
        headers=bearer("windows"),
    ),
    Scenario(
        "gateway_alerts_off",
        "gateway, cached key + rate limit, alert detectors off",
        "gateway_alerts_off",
        headers=bearer("limited"),
    ),
    Scenario(
        "gateway_credits",
        "gateway, cached key + credits + 3 rate windows, none reached",
        "gateway",
        headers=bearer("credited"),
    ),
    Scenario(
        "forward_auth",
        "forward auth decision (/v1/auth/check), cached key",
        "gateway",
        path="/v1/auth/check",
        headers=lambda bench: {
            **bearer("reader")(bench),
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Uri": "/bench/items?page=1",
        },
    ),
]

# Ratios printed for every row, and the ones with a target.
BASELINES = ("direct", "passthrough", "forwarder")


@dataclass(frozen=True)
class Goal:
    scenario: str
    baseline: str
    min_ratio: float
    text: str


GOALS: list[Goal] = [
    Goal(
        "gateway_rate_limited",
        "passthrough",
        2.0,
        "the whole path (auth, restrictions, rate limit, usage, metrics, log) >= 2x plain aiohttp",
    ),
    Goal(
        "forward_auth",
        "passthrough",
        4.0,
        "forward-auth decisions >= 4x the plain aiohttp pass-through",
    ),
    Goal(
        "gateway_rate_limited",
        "forwarder",
        0.85,
        "the checks cost at most 15% of the gateway's own forwarder without them",
    ),
    Goal(
        "gateway_rate_limited",
        "gateway_alerts_off",
        0.95,
        "every alert detector on costs at most 5% of the same gateway with alerts off",
    ),
    Goal(
        "gateway_rate_limited",
        "gateway_cached_key",
        0.8,
        "rate limiting costs at most 20% of the auth-only throughput",
    ),
    Goal(
        "gateway_credits",
        "gateway_rate_limited",
        0.9,
        "a key with credits and 3 windows (one exact store spend per request, shared "
        "round trips) >= 0.9x a key with one window and no credits",
    ),
]

# Routes of the gateway's config (``{upstream}`` is filled in).
GATEWAY_ROUTES: list[dict] = [
    {
        "name": "bench",
        "match": "/bench",
        "upstream": "{upstream}",
        "permissions": {"GET": "read", "*": "write"},
        "timeout": "30s",
    },
]

# Keys created through the CLI before the run: name -> extra `keys create` arguments.
KEYS: dict[str, list[str]] = {
    "reader": ["--permissions", "read"],
    # a limit on every request, high enough never to answer 429
    "limited": ["--permissions", "read", "--rate-limit", "100000000/minute"],
    "windows": ["--permissions", "read"],
    # credits far above what any run spends, and three windows of its own none reached
    "credited": [
        "--permissions",
        "read",
        "--rate-limit",
        "100000/second,10000000/hour,100000000/day",
        "--credits",
        str(10**12),
    ],  # fmt: skip
}

# The gateway's plans; a key of KEY_PLANS belongs to an account on that plan, else "default".
PLANS: dict[str, dict] = {
    "default": {},
    # three windows on every request, none ever reached
    "three_windows": {"rate_limit": ["100000/second", "10000000/hour", "100000000/day"]},
}
KEY_PLANS: dict[str, str] = {"windows": "three_windows"}

# Ratios printed after the table (not goals): what each row costs against another.
COMPARISONS: list[tuple[str, str, str]] = [
    ("gateway_3_windows", "gateway_rate_limited", "3 rate windows against 1"),
    ("gateway_3_windows", "gateway_cached_key", "3 rate windows against none"),
    ("gateway_credits", "gateway_cached_key", "credits and 3 windows against neither"),
]


# -- processes ----------------------------------------------------------------


class Processes:
    """Every process this run started, stopped by PID (and its own process group)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
        out = open(log, "wb")  # noqa: SIM115 - closed when the process is stopped
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: its children are stopped with it
            **kwargs,
        )
        proc._bench_log = out  # type: ignore[attr-defined]
        self.started.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for name, proc in reversed(self.started):
            stop(proc, name)
        self.started.clear()


def stop(proc: subprocess.Popen, name: str, grace: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"bench: {name} (pid {proc.pid}) ignored SIGTERM; killing it", file=sys.stderr)
    # Whatever is left of its group (nginx workers, say): the group id is our child's pid.
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
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            pids.append(int(entry))
    return pids


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path, headers=headers or {})
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


# -- the run ------------------------------------------------------------------


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) or [self.proc.pid]


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: Processes = field(default_factory=Processes)
    services: dict[str, Service] = field(default_factory=dict)
    upstream_kind: str = ""
    redis_url: str | None = None
    key_prefix: str = ""
    config_path: Path | None = None
    _keys: dict[str, str] = field(default_factory=dict)

    # services, started on demand in dependency order

    def service(self, name: str) -> Service:
        if name not in self.services:
            if name in self.args.variants:
                self.services[name] = self._start_variant(name, self.args.variants[name])
                return self.services[name]
            if name in self.args.compare_commands:
                self.services[name] = self._start_command(name, self.args.compare_commands[name])
                return self.services[name]
            starter = {
                "upstream": self._start_upstream,
                "passthrough": self._start_passthrough,
                "forwarder": lambda: self._start_passthrough("forwarder", "gateway"),
                "gateway": self._start_gateway,
                "gateway_alerts_off": self._start_gateway_alerts_off,
            }[name]
            self.services[name] = starter()
        return self.services[name]

    def _start_variant(self, name: str, source: str) -> Service:
        """The gateway of another source tree (``--variant``): same config, store and keys."""
        self.service("gateway")
        assert self.config_path is not None
        config = json.loads(self.config_path.read_text())
        port, admin = free_port(), free_port()
        config["server"]["port"], config["admin"]["port"] = port, admin
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        argv = [PYTHON, "-m", "gateway", "--config", str(path), "serve"]
        proc = self.procs.start(name, argv, self.tmp / f"{name}.log", cwd=source, env=env)
        wait_until(lambda: http_get(admin, "/readyz")[0] == 200, name, proc, 30)
        return Service(name, port, proc)

    def _start_gateway_alerts_off(self) -> Service:
        """The same gateway, config, store and keys, with ``alerts.enabled: false``."""
        self.service("gateway")
        assert self.config_path is not None
        config = json.loads(self.config_path.read_text())
        port, admin = free_port(), free_port()
        config["server"]["port"], config["admin"]["port"] = port, admin
        config["alerts"] = {"enabled": False}
        path = self.tmp / "gateway_alerts_off.yaml"
        path.write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        argv = [PYTHON, "-m", "gateway", "--config", str(path), "serve"]
        proc = self.procs.start(
            "gateway_alerts_off", argv, self.tmp / "gateway_alerts_off.log", cwd=ROOT, env=env
        )
        wait_until(lambda: http_get(admin, "/readyz")[0] == 200, "gateway_alerts_off", proc, 30)
        return Service("gateway_alerts_off", port, proc)

    def _start_command(self, name: str, command: str) -> Service:
        """A proxy of your own (``--compare``), run in front of the same upstream."""
        upstream = self.service("upstream")
        port = free_port()
        argv = shlex.split(
            command.format(port=port, upstream=f"http://127.0.0.1:{upstream.port}",
                           upstream_port=upstream.port, python=PYTHON)
        )  # fmt: skip
        proc = self.procs.start(name, argv, self.tmp / f"{name}.log", cwd=ROOT)
        wait_until(lambda: http_get(port, "/bench")[0] < 500, name, proc, 20)
        return Service(name, port, proc)

    def _start_upstream(self) -> Service:
        port = free_port()
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
        )
        kind = self.args.upstream
        if kind == "auto":
            kind = "nginx" if nginx else "stub"
        if kind == "nginx":
            if not nginx:
                raise RuntimeError("nginx is not installed (bench/install-wrk.sh installs it)")
            prefix = self.tmp / "nginx"
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (prefix / sub).mkdir(parents=True, exist_ok=True)
            conf = prefix / "nginx.conf"
            conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, body=BODY.decode()))
            argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        else:
            argv = [PYTHON, str(BENCH / "upstream_stub.py"), "--port", str(port)]
        proc = self.procs.start("upstream", argv, self.tmp / "upstream.log")
        wait_until(lambda: http_get(port, "/")[0] == 200, f"upstream ({kind})", proc, 15)
        self.upstream_kind = kind
        return Service("upstream", port, proc)

    def _start_passthrough(self, name: str = "passthrough", forwarder: str = "aiohttp") -> Service:
        upstream = self.service("upstream")
        port = free_port()
        argv = [PYTHON, str(BENCH / "passthrough.py"), "--port", str(port),
                "--upstream", f"http://127.0.0.1:{upstream.port}", "--forwarder", forwarder]  # fmt: skip
        proc = self.procs.start(name, argv, self.tmp / f"{name}.log", cwd=ROOT)
        wait_until(lambda: http_get(port, "/bench")[0] == 200, name, proc, 20)
        return Service(name, port, proc)

    def _start_gateway(self) -> Service:
        upstream = self.service("upstream")
        port, admin = free_port(), free_port()
        self.key_prefix = f"bench:{secrets.token_hex(4)}:"
        redis: dict = {"key_prefix": self.key_prefix}
        if self.redis_url:
            redis["url"] = self.redis_url
        else:
            redis["data_dir"] = str(self.tmp / "data")
        routes = [
            {k: (v.format(upstream=f"http://127.0.0.1:{upstream.port}") if k == "upstream" else v)
             for k, v in route.items()}
            for route in GATEWAY_ROUTES
        ]  # fmt: skip
        config = {
            "server": {"host": "127.0.0.1", "port": port, "access_log": True},
            "admin": {"host": "127.0.0.1", "port": admin, "enabled": True},
            "redis": redis,
            "plans": PLANS,
            "routes": routes,
        }
        self.config_path = self.tmp / "gateway.yaml"
        # JSON is YAML; no dependency on a YAML writer here.
        self.config_path.write_text(json.dumps(config, indent=2))
        argv = [PYTHON, "-m", "gateway", "--config", str(self.config_path), "serve"]
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        proc = self.procs.start("gateway", argv, self.tmp / "gateway.log", cwd=ROOT, env=env)
        wait_until(lambda: http_get(admin, "/readyz")[0] == 200, "gateway", proc, 30)
        account = self.cli("accounts", "create", "--name", "bench", "--json")
        self._accounts = {"default": account["id"]}
        return Service("gateway", port, proc)

    def account(self, plan: str) -> str:
        """The bench account on ``plan`` (created on first use)."""
        if plan not in self._accounts:
            made = self.cli(
                "accounts", "create", "--name", f"bench-{plan}", "--plan", plan, "--json"
            )
            self._accounts[plan] = made["id"]
        return self._accounts[plan]

    def cli(self, *args: str) -> dict:
        argv = [PYTHON, "-m", "gateway", "--config", str(self.config_path), *args]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"gateway {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def key(self, name: str) -> str:
        """The secret of bench key ``name`` (created on first use; never printed)."""
        if name not in self._keys:
            self.service("gateway")
            account = self.account(KEY_PLANS.get(name, "default"))
            created = self.cli("keys", "create", "--account", account,
                               "--name", f"bench-{name}", *KEYS[name], "--json")  # fmt: skip
            self._keys[name] = created["key"]
        return self._keys[name]

    def cleanup(self) -> None:
        self.procs.stop_all()
        data = self.tmp / "data" / "redis.pid"
        if data.exists():  # the embedded store, if the gateway left it running
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(data.read_text().strip()), signal.SIGTERM)
        if self.redis_url and self.key_prefix:
            delete_prefix(self.redis_url, self.key_prefix)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}
}}
"""


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
            batch = []
            for name in client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        finally:
            client.close()
    except Exception as exc:  # never hide the results because of cleanup
        print(f"bench: could not delete {prefix}* from Redis: {exc}", file=sys.stderr)


# -- wrk ----------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict:
    """requests/s, latency percentiles (ms), request and error counts from ``wrk --latency``."""
    result: dict = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not match:
        raise ValueError("no Requests/sec in wrk output:\n" + output)
    result["rps"] = float(match.group(1))
    match = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if match:
        result["avg_ms"] = _ms(match.group(1))
        result["max_ms"] = _ms(match.group(3))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M):
        result[f"p{pct}_ms"] = _ms(value)
    match = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if match:
        result["requests"] = int(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = sum(map(int, match.groups())) if match else 0
    return result


def run_wrk(bench: Bench, scenario: Scenario, seconds: float, port: int) -> dict:
    args = bench.args
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, math.ceil(seconds))}s",
            "--latency", "--timeout", "5s"]  # fmt: skip
    for name, value in scenario.headers(bench).items():
        argv += ["-H", f"{name}: {value}"]
    if scenario.lua:
        argv += ["-s", scenario.lua]
    elif scenario.method != "GET":
        argv += ["-s", str(method_script(bench.tmp, scenario.method))]
    argv.append(f"http://127.0.0.1:{port}{scenario.path}")
    client_cpus = bench.args.client_cpus

    nice = bench.args.nice

    def preexec() -> None:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            with contextlib.suppress(OSError):
                Path("/proc/self/autogroup").write_text(str(nice))

    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=preexec
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:500]}"
        )
    return parse_wrk(done.stdout)


def method_script(tmp: Path, method: str) -> Path:
    path = tmp / f"method-{method}.lua"
    path.write_text(f'wrk.method = "{method}"\n')
    return path


# -- main ---------------------------------------------------------------------


def place(bench: Bench, target: str) -> None:
    """The measured service on the server core, every other process on the client cores."""
    if bench.args.nice:
        for service in bench.services.values():
            renice(service.pids(), bench.args.nice)
    if not bench.args.server_cpus:
        return
    for name, service in bench.services.items():
        cpus = bench.args.server_cpus if name == target else bench.args.client_cpus
        pin(service.pids(), cpus)


def renice(pids: list[int], nice: int) -> None:
    """Scheduling priority of every thread of ``pids`` (ours only: started by this run).

    With autogroup scheduling a session's nice value counts between sessions
    only through its autogroup, so that is set too.
    """
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def measure(bench: Bench, scenario: Scenario, profile_to: Path | None) -> dict:
    service = bench.service(scenario.target)
    headers = scenario.headers(bench)
    if scenario.method == "GET":
        status, body = http_get(service.port, scenario.path, headers)
        if status != scenario.expect_status:
            raise RuntimeError(
                f"{scenario.name}: GET {scenario.path} answered {status}, "
                f"expected {scenario.expect_status}: {body[:300]!r}"
            )
    place(bench, scenario.target)
    if bench.args.warmup > 0:
        run_wrk(bench, scenario, bench.args.warmup, service.port)
    profiler = None
    if profile_to is not None:
        profiler = start_profiler(bench, service, profile_to)
    pids = service.pids()
    server_core = min(bench.args.server_cpus) if bench.args.server_cpus else None
    cpu_before, core_before, wall_before = cpu_seconds(pids), core_busy(server_core), time.time()
    try:
        result = run_wrk(bench, scenario, bench.args.duration, service.port)
        wall = time.time() - wall_before
        used = cpu_seconds(pids) - cpu_before
        result["cpu_us_per_req"] = used * 1e6 / max(result.get("requests", 0), 1)
        result["cpu_busy"] = used / wall
        if server_core is not None:
            # What else ran on the measured core meanwhile (other work on a shared machine).
            result["server_core_others"] = max(
                0.0, (core_busy(server_core) - core_before - used) / wall
            )
    finally:
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(bench.args.duration + 30)
            stop(profiler, "py-spy")
            bench.procs.started = [(n, p) for n, p in bench.procs.started if p is not profiler]
    if profile_to is not None:
        result["profile"] = str(profile_to.relative_to(ROOT))
    return result


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def core_busy(cpu: int | None) -> float:
    """Seconds core ``cpu`` has spent busy (anything but idle and iowait) since boot."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK
    return 0.0


def start_profiler(bench: Bench, service: Service, out: Path) -> subprocess.Popen:
    spy = shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
    if not os.access(spy, os.X_OK):
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    fmt = bench.args.profile_format
    argv = [spy, "record", "--pid", str(service.proc.pid), "--duration",
            str(int(bench.args.duration)), "--rate", "200", "--format", fmt, "-o", str(out)]  # fmt: skip
    # (py-spy pauses the process for each sample: --nonblocking is cheaper but its
    # stacks are often torn, which makes inclusive shares meaningless)
    proc = bench.procs.start("py-spy", argv, bench.tmp / "py-spy.log")
    if bench.args.client_cpus:
        pin([proc.pid], bench.args.client_cpus)
    if bench.args.nice:
        renice([proc.pid], bench.args.nice)
    time.sleep(0.5)
    return proc


def ratio(rows: dict[str, dict], name: str, baseline: str) -> float | None:
    if name not in rows or baseline not in rows or not rows[baseline]["rps"]:
        return None
    return rows[name]["rps"] / rows[baseline]["rps"]


def cpu_ratio(rows: dict[str, dict], name: str, baseline: str) -> float | None:
    """Throughput ratio implied by CPU cost per request (robust to a shared machine)."""
    mine = rows.get(name, {}).get("cpu_us_per_req")
    base = rows.get(baseline, {}).get("cpu_us_per_req")
    if not mine or not base:
        return None
    return base / mine


def print_table(rows: dict[str, dict], scenarios: list[Scenario]) -> None:
    baselines = [b for b in BASELINES if b in rows]
    width = max([len(s.title) for s in scenarios if s.name in rows] + [8]) + 2
    head = f"{'scenario':<{width}}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'cpu us/req':>11}"
    head += "".join(f"{'x ' + b:>15}" for b in baselines)
    if "passthrough" in rows:
        head += f"{'cpu x passthr.':>16}"
    print(head)
    print("-" * len(head))
    for s in scenarios:
        if s.name not in rows:
            continue
        r = rows[s.name]
        line = (
            f"{s.title:<{width}}{r['rps']:>9,.0f}{r.get('p50_ms', 0):>8.2f}{r.get('p99_ms', 0):>8.2f}"
            f"{r.get('cpu_us_per_req', 0):>11.1f}"
        )
        for b in baselines:
            value = ratio(rows, s.name, b)
            line += f"{value:>15.3f}" if value is not None else f"{'':>15}"
        if "passthrough" in rows:
            value = cpu_ratio(rows, s.name, "passthrough")
            line += f"{value:>16.3f}" if value is not None else f"{'':>16}"
        flags = []
        if r.get("server_core_others", 0) > 0.05:
            flags.append(f"server core {r['server_core_others']:.0%} busy with other work")
        if r.get("non_2xx"):
            flags.append(f"{r['non_2xx']} non-2xx")
        if r.get("socket_errors"):
            flags.append(f"{r['socket_errors']} socket errors")
        if r.get("profile"):
            flags.append("profiled")
        if flags:
            line += "  (" + ", ".join(flags) + ")"
        print(line)


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
        description="Benchmark the gateway against a plain aiohttp proxy and the bare upstream."
    )
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per row")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each row"
    )
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, interleaved; the median is reported")  # fmt: skip
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--upstream", choices=["auto", "nginx", "stub"], default="auto")
    parser.add_argument("--redis-url", help=f"default: $REDIS_URL, else {DEFAULT_REDIS} "
                        "when it answers, else the embedded store")  # fmt: skip
    parser.add_argument("--embedded", action="store_true",
                        help="use the embedded store even when a Redis answers")  # fmt: skip
    parser.add_argument("--server-cpu", default=None,
                        help="core(s) for the measured process (default: the last core)")  # fmt: skip
    parser.add_argument("--client-cpu", default=None,
                        help="core(s) for wrk and the rest (default: all the others)")  # fmt: skip
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of the processes this run starts and of wrk, e.g. -10 "
        "(root only) on a machine busy with other work; they then take most of its CPU",
    )
    parser.add_argument("--profile", action="store_true",
                        help="record each proxy row with py-spy into bench/results/")  # fmt: skip
    parser.add_argument("--profile-format", choices=["flamegraph", "speedscope", "raw"],
                        default="flamegraph")  # fmt: skip
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIRECTORY",
        help="also measure the gateway of another source tree (a copy with a change, "
        "say) with the same config, store and key, next to the gateway's own row",
    )
    parser.add_argument(
        "--pick",
        choices=["median", "best"],
        default="median",
        help="with --rounds: report each row's median run, or its fastest "
        "(best-of-N is the steadier figure on a machine busy with other work)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure a server of your own, e.g. "
        "'lean={python} /tmp/lean.py --port {port} --upstream {upstream}' "
        "({upstream_port} and {python} are filled in too)",
    )
    args = parser.parse_args(argv)
    args.variants = {}
    for item in args.variant:
        name, sep, source = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or not Path(source).is_dir():
            parser.error(f"--variant wants NAME=DIRECTORY (a tree holding gateway/), not {item!r}")
        args.variants[name] = str(Path(source).resolve())
    args.compare_commands = {}
    for item in args.compare:
        name, sep, command = item.partition("=")
        if (
            not sep
            or not re.fullmatch(r"[a-z][a-z0-9_]*", name)
            or name in {"upstream", "passthrough", "forwarder", "gateway", *args.variants}
        ):
            parser.error(f"--compare wants NAME=COMMAND with a new lower-case NAME, not {item!r}")
        args.compare_commands[name] = command
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
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<24} {s.title}  [{s.target} {s.method} {s.path}]")
        return 0
    scenarios = SCENARIOS + [
        Scenario(name, f"{name} (--compare)", name) for name in args.compare_commands
    ]
    for name in args.variants:  # after the gateway's own cached-key row, measured like it
        mine = Scenario(name, f"{name} (--variant)", name, headers=bearer("reader"))
        at = next((i + 1 for i, s in enumerate(scenarios) if s.name == "gateway_cached_key"), None)
        scenarios.insert(at if at is not None else len(scenarios), mine)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(wanted) - {s.name for s in scenarios}
        if unknown:
            print(f"bench: unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        scenarios = [s for s in scenarios if s.name in wanted]
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (run bench/install-wrk.sh)", file=sys.stderr)
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="gwb-", dir="/tmp"))  # short: unix socket paths
    bench = Bench(args, tmp)
    wanted_redis = args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS
    if args.embedded:
        pass  # the embedded store in the temp dir
    elif redis_answers(wanted_redis):
        bench.redis_url = wanted_redis
    elif args.redis_url or os.environ.get("REDIS_URL"):
        print(f"bench: no Redis answers at {wanted_redis}", file=sys.stderr)
        return 2
    samples: dict[str, list[dict]] = {s.name: [] for s in scenarios}
    status = 0
    try:
        for s in scenarios:  # start everything first: rows then differ only in what is hit
            bench.service(s.target)
            s.headers(bench)
        print(
            f"bench: upstream {bench.upstream_kind}, store "
            f"{'redis ' + bench.redis_url if bench.redis_url else 'embedded'}, "
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
            f"{args.rounds} round(s)"
            + (
                f", server cpu {sorted(args.server_cpus)}, client cpu {sorted(args.client_cpus)}"
                if args.server_cpus
                else ", not pinned"
            ),  # fmt: skip
            file=sys.stderr,
        )
        for round_no in range(args.rounds):
            for s in scenarios:
                profile_to = None
                if args.profile and s.target != "upstream":
                    ext = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}[
                        args.profile_format
                    ]
                    RESULTS.mkdir(exist_ok=True)
                    profile_to = RESULTS / f"{stamp}-{s.name}-r{round_no + 1}.{ext}"
                result = measure(bench, s, profile_to)
                samples[s.name].append(result)
                print(
                    f"  round {round_no + 1} {s.name:<22} {result['rps']:>10,.0f} req/s  "
                    f"p50 {result.get('p50_ms', 0):.2f} ms  p99 {result.get('p99_ms', 0):.2f} ms",
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        status = 130
    except Exception as exc:
        print(f"bench: {exc}", file=sys.stderr)
        status = 1
    finally:
        access_lines = count_lines(tmp / "gateway.log")
        bench.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {name: summarise(runs, args.pick) for name, runs in samples.items() if runs}
    if not rows:
        return status or 1
    print()
    print_table(rows, scenarios)
    goals = []
    for goal in GOALS:
        value = ratio(rows, goal.scenario, goal.baseline)
        if value is None:
            continue
        ok = value >= goal.min_ratio
        by_cpu = cpu_ratio(rows, goal.scenario, goal.baseline)
        goals.append({**goal.__dict__, "ratio": round(value, 4), "pass": ok,
                      "cpu_ratio": round(by_cpu, 4) if by_cpu else None})  # fmt: skip
        print(f"{'PASS' if ok else 'FAIL'}: {goal.text}: "
              f"{goal.scenario} = {value:.3f} x {goal.baseline} (goal >= {goal.min_ratio})"
              + (f"; by CPU per request {by_cpu:.3f}" if by_cpu else ""))  # fmt: skip
    for name, baseline, text in COMPARISONS:
        value = ratio(rows, name, baseline)
        if value is not None:
            by_cpu = cpu_ratio(rows, name, baseline)
            print(f"{text}: {name} = {value:.3f} x {baseline}"
                  + (f"; by CPU per request {by_cpu:.3f}" if by_cpu else ""))  # fmt: skip
    contended = [n for n, r in rows.items() if r.get("server_core_others", 0) > 0.05]
    if contended:
        print("note: other work shared the measured core during " + ", ".join(contended)
              + "; req/s ratios are unreliable, the CPU-per-request ratios less so")  # fmt: skip
    if "gateway" in bench.services:
        print(f"(gateway access log on: {access_lines:,} lines written)")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{stamp}.json"
        out.write_text(json.dumps(report(bench, rows, samples, goals, scenarios), indent=2) + "\n")
        print(f"results: {out.relative_to(ROOT)}")
    return status


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(
                chunk.count(b'"http.request.method":')
                for chunk in iter(lambda: f.read(1 << 20), b"")
            )
    except OSError:
        return 0


def summarise(runs: list[dict], pick: str = "median") -> dict:
    """The median (or fastest) run by requests/s, whole, so p50/p99 belong together."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    row = dict(ordered[-1] if pick == "best" else ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        row["rps_all"] = [r["rps"] for r in runs]
        row["rps_median"] = statistics.median(row["rps_all"])
    return row


def report(bench: Bench, rows, samples, goals, scenarios) -> dict:
    def version(module: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(module)
        except Exception:
            return None

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    args = bench.args
    return {
        "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_after": os.getloadavg(),
            "python": platform.python_version(),
            "aiohttp": version("aiohttp"),
            "uvloop": version("uvloop"),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "pick": args.pick,
            "upstream": bench.upstream_kind,
            "store": "redis" if bench.redis_url else "embedded",
            "server_cpus": sorted(args.server_cpus) if args.server_cpus else None,
            "client_cpus": sorted(args.client_cpus) if args.client_cpus else None,
        },  # fmt: skip
        "rows": [
            {
                "name": s.name,
                "title": s.title,
                **rows[s.name],
                **{
                    f"x_{b}": round(ratio(rows, s.name, b), 4)
                    for b in BASELINES
                    if ratio(rows, s.name, b) is not None
                },  # fmt: skip
            }
            for s in scenarios
            if s.name in rows
        ],
        "goals": goals,
    }


if __name__ == "__main__":
    sys.exit(main())

"""Every real process the tests start, started one way.

- :func:`free_port`: a loopback port for a listener that cannot bind port 0
  itself (a child process told its port on the command line). Ports come
  from below the kernel's ephemeral range, so an outgoing connection made in
  the meantime can never take one between the choice and the bind (the race
  of the usual "bind port 0, close, hand the number on"), and no port is
  handed out twice in one session.
- :class:`RedisServer`: a ``redis-server`` (or sentinel) of a test's own,
  started, stopped, killed, paused and restarted by its PID. Should its
  port be taken after all (another session on the machine), it starts again
  on another.
- :class:`ServiceProcess`: any other child process that listens (an upstream,
  httpbin), ready when a URL answers, stopped by its PID.

The gateway itself is started in process by ``conftest.gateways`` or as a
real process by ``conftest.GatewayProcess``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from gateway.store.embedded import redis_server_binary

_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return low


def free_port(host: str = "127.0.0.1") -> int:
    """A port no one listens on, below the ephemeral range, never handed out before."""
    top = min(_ephemeral_start(), 65536)
    bottom = max(10000, top - 20000)
    for _ in range(500):
        port = random.randrange(bottom, top)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host} between {bottom} and {top}")


def binary(name: str) -> str:
    """A system program the tests need; a failure naming the package when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: scripts/system-deps.sh installs it")
    return path


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; a failure naming ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.02)
    raise RuntimeError(f"{what} not within {timeout}s ({last})")


def redis_server() -> str:
    """The system's ``redis-server`` (built with TLS), else the embedded store's."""
    return shutil.which("redis-server") or redis_server_binary()


class PortTaken(RuntimeError):
    """The process could not bind the port it was given."""


class RedisServer:
    """One ``redis-server`` (or sentinel) process of a test's own.

    ``args(port)`` builds its command line for a port (so it can start again on
    another should that one be taken); ``extra`` is appended (a replica's
    ``--replicaof``). ``port`` fixes the port (no retry on another).
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        args: Callable[[int], list[str]],
        port: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.name = name
        self.workdir = Path(workdir)
        self._args = args
        self.fixed = port is not None
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.extra: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def plain(
        cls,
        workdir: Path,
        *extra: str,
        name: str = "redis",
        persist: bool = False,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> RedisServer:
        """A server on ``host``; ``persist``: every write on disk before it is acknowledged
        (appendfsync always), so its keys survive a kill."""
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if persist else [
            "--appendonly", "no"
        ]  # fmt: skip

        def args(port: int) -> list[str]:
            return [
                redis_server(), "--bind", host, "--port", str(port), "--save", "",
                *durability, "--dir", str(workdir), *extra,
            ]  # fmt: skip

        return cls(name, workdir, args, port=port, host=host)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def args(self) -> list[str]:
        return [*self._args(self.port), *self.extra]

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, socket_timeout=2, decode_responses=True, **kwargs
        )

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except PortTaken:
                if self.fixed or attempt == 2:
                    raise
                self.port = free_port(self.host)
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> RedisServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                if "Address already in use" in tail:
                    raise PortTaken(f"{self.name}: port {self.port} taken")
                raise RuntimeError(f"{self.name} exited:\n{tail}")
            with self.client() as c:
                return bool(c.ping())

        wait_for(answers, timeout, f"{self.name} answering on {self.port}")
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM and wait: the port refuses connections from then on."""
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a paused server must see its SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: the way a crashed or partitioned server disappears."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers (a hung store)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class ServiceProcess:
    """A child process that listens on ``port`` (an upstream, httpbin): ready when
    ``ready_path`` answers 2xx, stopped by its PID. ``command(port)`` builds its
    command line; a taken port means another one."""

    def __init__(
        self,
        name: str,
        command: Callable[[int], list[str]],
        ready_path: str = "/",
        port: int | None = None,
    ):
        self.name = name
        self._command = command
        self.ready_path = ready_path
        self.fixed = port is not None
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        fd, path = tempfile.mkstemp(prefix=f"gw-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)  # its output: a pipe nobody reads would block it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        for attempt in range(3):
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    self._command(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(self.url + self.ready_path, timeout=1) as answer,
                ):
                    if 200 <= answer.status < 300:
                        return self
                time.sleep(0.05)
            self.stop()
            error = self.log()[-2000:]
            if "in use" in error and not self.fixed and attempt < 2:
                self.port = free_port()
                continue
            raise RuntimeError(
                f"{self.name} did not answer on {self.url} within {timeout}s: {error}"
            )
        raise AssertionError("unreachable")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        """Stop it and remove its log."""
        self.stop()
        self.log_path.unlink(missing_ok=True)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl in ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM a process this test started and wait for it; killed if it will not stop."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode

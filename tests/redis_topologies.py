"""The Redis topologies production uses, started on loopback for the tests.

- :func:`start_single`: one ``redis-server`` listening three ways at once:
  plain TCP, TLS (its own CA; a client certificate is required) and a unix socket.
- :func:`start_cluster`: three masters made a cluster by ``redis-cli --cluster create``.
- :func:`start_sentinel`: a master, a replica and three sentinels watching them.

Each is started at most once per test session (the fixtures below share one
registry, whichever test module imports them) and every process started here
is stopped by its PID when the session ends. Data lives in a temporary
directory under /tmp (unix socket paths must stay short).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from realparts import RedisServer, binary, free_port, wait_for

MASTER_NAME = "gwmaster"
_started: dict[str, Any] = {}


def _server(name: str, workdir: Path, *extra: str) -> RedisServer:
    return RedisServer.plain(workdir, *extra, name=name)


class _Topology:
    workdir: Path
    processes: list[RedisServer]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- one server: TCP, TLS and a unix socket -----------------------------------------


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate."""
    openssl = binary("openssl")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=gateway test CA")  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        run("req", *curve, "-keyout", f"{who}.key", "-out", f"{who}.csr",
            "-subj", f"/CN=gateway test {who}")  # fmt: skip
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{who}.crt", "-days", "2",
            "-extfile", f"{who}.ext")  # fmt: skip
    return Certificates(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


@dataclass
class Single(_Topology):
    workdir: Path
    server: RedisServer
    tls_port: int
    certs: Certificates
    processes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server.port}/0"

    @property
    def tls_url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.workdir / 'redis.sock'}?db=0"

    def tls_config(self, *, client_cert: bool = True) -> dict[str, Any]:
        tls: dict[str, Any] = {"ca_file": str(self.certs.ca)}
        if client_cert:
            tls.update(cert_file=str(self.certs.client_cert), key_file=str(self.certs.client_key))
        return tls


def start_single() -> Single:
    workdir = Path(tempfile.mkdtemp(prefix="gw-topo-", dir="/tmp"))
    certs = make_certificates(workdir)
    tls_port = free_port()
    server = _server(
        "single", workdir,
        "--unixsocket", str(workdir / "redis.sock"), "--unixsocketperm", "700",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes",
    ).start()  # fmt: skip
    return Single(workdir, server, tls_port, certs, [server])


# -- a three-master cluster ---------------------------------------------------------


@dataclass
class Cluster(_Topology):
    workdir: Path
    processes: list[RedisServer]

    @property
    def nodes(self) -> list[str]:
        return [p.address for p in self.processes]


def start_cluster(masters: int = 3) -> Cluster:
    workdir = Path(tempfile.mkdtemp(prefix="gw-cluster-", dir="/tmp"))
    processes = []
    try:
        for i in range(masters):
            processes.append(
                _server(
                    f"cluster{i}",
                    workdir,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / f"nodes-{i}.conf"),
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    "2000",
                ).start()  # fmt: skip
            )
        subprocess.run(
            [binary("redis-cli"), "--cluster", "create", *[p.address for p in processes],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

        def ready() -> bool:
            for p in processes:
                with p.client() as c:
                    info = c.cluster("info")
                    if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != masters:
                        return False
            return True

        wait_for(ready, 15, "the cluster's state ok on every node")
    except BaseException:
        for p in processes:
            p.stop()
        raise
    return Cluster(workdir, processes)


# -- a Sentinel set -------------------------------------------------------------------


@dataclass
class SentinelSet(_Topology):
    workdir: Path
    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer]
    processes: list[RedisServer]
    master_name: str = MASTER_NAME

    @property
    def nodes(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def current_master(self) -> RedisServer:
        with self.sentinels[0].client() as c:
            host, port = c.sentinel_get_master_addr_by_name(self.master_name)
        return next(p for p in (self.master, self.replica) if p.port == int(port))

    def wait_healthy(self, timeout: float = 20) -> None:
        """Every sentinel sees the master up, one replica and the two other sentinels."""

        def healthy() -> bool:
            master = self.current_master()
            with master.client() as c:
                replication = c.info("replication")
                if replication.get("slave0", {}).get("state") != "online":
                    return False
            for s in self.sentinels:
                with s.client() as c:
                    state = c.sentinel_master(self.master_name)
                    if state["flags"] != "master" or int(state["num-other-sentinels"]) != 2:
                        return False
                    replicas = c.sentinel_slaves(self.master_name)
                    if len(replicas) != 1 or replicas[0]["flags"] != "slave":
                        return False
            return True

        wait_for(healthy, timeout, "the Sentinel set healthy")

    def restart(self, process: RedisServer) -> None:
        """Start a killed server again, as a replica of the current master."""
        master = self.current_master()
        process.extra = ["--replicaof", "127.0.0.1", str(master.port)]
        process.start()
        self.wait_healthy()


def start_sentinel() -> SentinelSet:
    workdir = Path(tempfile.mkdtemp(prefix="gw-sentinel-", dir="/tmp"))
    processes: list[RedisServer] = []
    try:
        master = _server("master", workdir).start()
        processes.append(master)
        replica = _server("replica", workdir)
        replica.extra = ["--replicaof", "127.0.0.1", str(master.port)]
        replica.start()
        processes.append(replica)
        sentinel_binary = shutil.which("redis-sentinel")
        sentinels = []
        for i in range(3):
            conf = workdir / f"sentinel{i}.conf"

            def args(port: int, conf: Path = conf) -> list[str]:
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                    f"sentinel failover-timeout {MASTER_NAME} 5000\n"
                    f"sentinel parallel-syncs {MASTER_NAME} 1\n"
                )
                if sentinel_binary:
                    return [sentinel_binary, str(conf)]
                return [binary("redis-server"), str(conf), "--sentinel"]

            sentinel = RedisServer(f"sentinel{i}", workdir, args).start()
            processes.append(sentinel)
            sentinels.append(sentinel)
        group = SentinelSet(workdir, master, replica, sentinels, processes)
        group.wait_healthy()
    except BaseException:
        for p in processes:
            p.stop()
        raise
    return group


# -- session fixtures -------------------------------------------------------------


def _once(name: str, start: Callable[[], _Topology]) -> Any:
    """Start a topology the first time any test asks for it."""
    topology = _started.get(name)
    if topology is None:
        topology = _started[name] = start()
        atexit.register(topology.stop)  # should the session end without teardown
    return topology


def _stop(name: str) -> None:
    topology = _started.pop(name, None)
    if topology is not None:
        topology.stop()


@pytest.fixture(scope="session")
def redis_single() -> Iterator[Single]:
    yield _once("single", start_single)
    _stop("single")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    yield _once("cluster", start_cluster)
    _stop("cluster")


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSet]:
    yield _once("sentinel", start_sentinel)
    _stop("sentinel")


def redis_section(topology: Any, kind: str = "tcp") -> dict[str, Any]:
    """The ``redis:`` config section that reaches ``topology`` (without key_prefix)."""
    if isinstance(topology, Cluster):
        return {"cluster": {"nodes": topology.nodes}}
    if isinstance(topology, SentinelSet):
        return {"sentinel": {"master_name": topology.master_name, "nodes": topology.nodes}}
    assert isinstance(topology, Single)
    if kind == "tls":
        return {"url": topology.tls_url, "tls": topology.tls_config()}
    if kind == "unix":
        return {"url": topology.unix_url}
    return {"url": topology.url}

"""The sidecar pod, for real: its containers as processes sharing one network namespace.

The sidecar overlay is rendered and its Deployment read; each container's
command (its ``command``/``args``, else the image's ``ENTRYPOINT``/``CMD``
from deploy/Dockerfile) runs with the image's ``ENV`` plus the container's
``env`` (the Secret resolved) and its ConfigMap volume mounted where the
manifest says, inside a network namespace of its own joined to this host by a
veth pair, as a pod is. Redis stands outside the pod, on the host end of the
veth, under the name the Secret's URL uses (``redis``).

From outside the pod, as a client or the kubelet would: the app cannot be
reached; through the gateway's port a valid key reaches it and no key gets
401; the probes answer as the manifest expects; and the shutdown the manifest
plans (``preStop``, then SIGTERM, within ``terminationGracePeriodSeconds``)
drains an in-flight request and stops the gateway cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from realparts import RedisServer, terminate
from test_deploy_image import image_root, parse_dockerfile  # noqa: F401 - image_root is a fixture
from test_deploy_kubernetes import K8S, config_of, container_env, find, prestop_seconds, render


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


class PodNetwork:
    """A network namespace and a veth pair: the pod's IP and the node's end of the link."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"kgpod{tag}"
        self.host_if, self.pod_if = f"kgh{tag}", f"kgp{tag}"
        used = run("ip", "-o", "addr").stdout
        octet = next(n for n in range(7, 250) if f"10.123.{n}." not in used)
        self.host_ip, self.pod_ip = f"10.123.{octet}.1", f"10.123.{octet}.2"
        self.etc = Path("/etc/netns") / self.name

    def create(self) -> PodNetwork:
        try:
            run("ip", "netns", "add", self.name)
        except FileNotFoundError:
            pytest.fail("no `ip` command: scripts/system-deps.sh installs iproute2")
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"cannot create a network namespace here: {exc.stderr.strip()}")
        try:
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.pod_if)
            run("ip", "link", "set", self.pod_if, "netns", self.name)
            run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            run("ip", "link", "set", self.host_if, "up")
            for argv in (
                ("ip", "addr", "add", f"{self.pod_ip}/30", "dev", self.pod_if),
                ("ip", "link", "set", self.pod_if, "up"),
                ("ip", "link", "set", "lo", "up"),
            ):
                run("ip", "netns", "exec", self.name, *argv)
            # The cluster's DNS, as far as this pod needs it: `ip netns exec`
            # mounts /etc/netns/<name>/hosts over /etc/hosts.
            self.etc.mkdir(parents=True, exist_ok=True)
            (self.etc / "hosts").write_text(f"127.0.0.1 localhost\n{self.host_ip} redis\n")
        except Exception:
            self.delete()
            raise
        return self

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        run("ip", "link", "del", self.host_if, check=False)
        run("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture
def pod_network() -> Iterator[PodNetwork]:
    if os.geteuid() != 0:
        pytest.fail("the pod test needs root (CAP_NET_ADMIN) for its network namespace")
    network = PodNetwork().create()
    try:
        yield network
    finally:
        network.delete()


class Pod:
    """The Deployment's pod template, its containers started as processes in the namespace."""

    def __init__(self, docs: list[dict[str, Any]], network: PodNetwork, root, workdir: Path):
        self.docs = docs
        self.network = network
        self.root = root
        self.workdir = workdir
        self.deployment = find(docs, "Deployment")
        self.spec = self.deployment["spec"]["template"]["spec"]
        self.image = parse_dockerfile()[-1]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def container(self, name: str) -> dict[str, Any]:
        return next(c for c in self.spec["containers"] if c["name"] == name)

    def mounts(self, container: dict[str, Any]) -> dict[str, str]:
        """mountPath -> a directory standing in for the volume."""
        out = {}
        for mount in container.get("volumeMounts", []):
            volume = next(v for v in self.spec["volumes"] if v["name"] == mount["name"])
            target = self.workdir / container["name"] / mount["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                for key, text in find(self.docs, "ConfigMap", volume["configMap"]["name"])[
                    "data"
                ].items():
                    (target / key).write_text(text)
            out[mount["mountPath"]] = str(target)
        return out

    def map_path(self, value: str, mounts: dict[str, str]) -> str:
        for path, target in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == path or value.startswith(path + "/"):
                return target + value[len(path) :]
        return self.root.map(value)

    def argv_env(self, name: str) -> tuple[list[str], dict[str, str], str]:
        """What the kubelet would run: Kubernetes' command/args over the image's ENTRYPOINT/CMD."""
        container = self.container(name)
        entry = container.get("command", self.image.exec_form("ENTRYPOINT"))
        args = container.get("args", [] if "command" in container else self.image.exec_form("CMD"))
        mounts = self.mounts(container)
        env = {k: self.map_path(v, mounts) for k, v in self.image.env().items()}
        env.update(container_env(self.docs, container))
        argv = [self.map_path(a, mounts) for a in [*entry, *args]]
        found = shutil.which(argv[0], path=env["PATH"])
        assert found, f"{argv[0]} is not on the image's PATH"
        argv[0] = found
        return argv, env, mounts.get("/tmp", str(self.workdir))

    def start(self, name: str) -> subprocess.Popen[bytes]:
        argv, env, cwd = self.argv_env(name)
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.network.exec_argv(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def exec_in(self, name: str, command: list[str], timeout: float = 10) -> int:
        """An exec probe or hook, run in the container's namespace with its env."""
        _, env, cwd = self.argv_env(name)
        command = [shutil.which(command[0], path=env["PATH"]) or command[0], *command[1:]]
        return subprocess.run(
            self.network.exec_argv(command), env=env, cwd=cwd, timeout=timeout, capture_output=True
        ).returncode

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-3000:] if name in self.logs else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            terminate(proc)


@pytest.fixture
def host_redis(pod_network: PodNetwork, tmp_path: Path) -> Iterator[str]:
    """The Redis the pod's Secret names, on the node's end of the veth (outside the pod)."""
    server = RedisServer.plain(
        tmp_path / "redis", "--protected-mode", "no", host=pod_network.host_ip, port=6379
    ).start()
    try:
        yield server.url
    finally:
        server.stop()


def wait_connect(
    host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {host}:{port} opened")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.3):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open")


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 2):
            return False
    except ConnectionRefusedError:
        return True


async def test_sidecar_pod_isolates_the_app_and_drains_as_planned(
    pod_network,
    host_redis,
    image_root,  # noqa: F811 - the fixture imported above
    tmp_path,
    http,
):
    docs = render(K8S / "overlays" / "sidecar")
    pod = Pod(docs, pod_network, image_root, tmp_path)
    ip = pod_network.pod_ip
    gateway = pod.container("gateway")
    app = next(c for c in pod.spec["containers"] if c["name"] != "gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    service = find(docs, "Service")
    service_port = ports[service["spec"]["ports"][0]["targetPort"]]
    app_command = app["command"]
    app_port = int(app_command[app_command.index("--port") + 1])
    try:
        pod.start(app["name"])
        deadline = time.monotonic() + 20
        while pod.exec_in(app["name"], app["readinessProbe"]["exec"]["command"]) != 0:
            assert pod.procs[app["name"]].poll() is None, pod.log(app["name"])
            assert time.monotonic() < deadline, pod.log(app["name"])
            await asyncio.sleep(0.2)
        gw_proc = pod.start("gateway")
        ready = gateway["readinessProbe"]["httpGet"]
        live = gateway["livenessProbe"]["httpGet"]
        admin = ports[ready["port"]]
        await asyncio.to_thread(wait_connect, ip, admin, gw_proc, 20)
        for _ in range(100):
            async with http.get(f"http://{ip}:{admin}{ready['path']}") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        # The kubelet's probes, on the pod IP.
        async with http.get(f"http://{ip}:{ports[ready['port']]}{ready['path']}") as resp:
            assert resp.status == 200, pod.log("gateway")
        async with http.get(f"http://{ip}:{ports[live['port']]}{live['path']}") as resp:
            assert resp.status == 200
        assert pod.exec_in(app["name"], app["livenessProbe"]["exec"]["command"]) == 0

        # From outside: the app's own port is closed on the pod IP.
        assert refused(ip, app_port)
        # A key, made with the CLI on the same Redis the pod uses.
        text, _ = config_of(docs)
        config_file = tmp_path / "cli.yaml"
        config_file.write_text(text)
        cli_env = {**os.environ, "REDIS_URL": host_redis}

        def cli(*args: str) -> dict:
            out = subprocess.run(
                [sys.executable, "-m", "gateway", "--config", str(config_file), *args, "--json"],
                capture_output=True, text=True, timeout=60, env=cli_env,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        account = cli("accounts", "create", "--name", "Pod")["id"]
        key = cli("keys", "create", "--account", account, "--name", "pod", "--permissions", "read")
        auth = {"Authorization": f"Bearer {key['key']}"}
        base = f"http://{ip}:{service_port}"
        async with http.get(base + "/orders/7") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "missing_api_key"
        async with http.get(base + "/orders/7", headers=auth) as resp:
            assert resp.status == 200
            seen = dict((await resp.json())["headers"])
        assert seen["X-Gateway-Key-Id"] == key["id"]
        assert pod_network.host_ip in seen["X-Forwarded-For"]  # the client, from outside the pod

        # Shutdown as the kubelet does it: preStop, then SIGTERM, within the grace period.
        grace = pod.spec["terminationGracePeriodSeconds"]
        drain_timeout = yaml.safe_load(text)["server"]["drain_timeout"]
        started = time.monotonic()
        pre_stop = asyncio.create_task(
            asyncio.to_thread(
                pod.exec_in, "gateway", gateway["lifecycle"]["preStop"]["exec"]["command"], 30
            )
        )
        await asyncio.sleep(0.5)
        async with http.get(base + "/orders/7", headers=auth) as resp:
            assert resp.status == 200  # still serving while the endpoints drop the pod
        assert await pre_stop == 0
        assert time.monotonic() - started >= prestop_seconds(gateway) - 0.5
        slow = asyncio.create_task(http.get(base + "/slow?seconds=2", headers=auth))
        await asyncio.sleep(0.5)
        gw_proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        async with http.get(f"http://{ip}:{admin}{ready['path']}") as resp:
            assert resp.status == 503  # out of the Service at once
        assert refused(ip, service_port)  # no new connection is taken
        resp = await slow
        async with resp:
            assert resp.status == 200  # the request in flight finished
            assert (await resp.json())["slow"] is True
        code = await asyncio.to_thread(gw_proc.wait, grace)
        assert code == 0, pod.log("gateway")
        stopped_in = time.monotonic() - signalled
        assert stopped_in < float(str(drain_timeout).rstrip("s"))
        assert prestop_seconds(gateway) + stopped_in < grace
        # The app outlives the gateway's drain, as its longer preStop plans.
        assert pod.procs[app["name"]].poll() is None
    finally:
        pod.stop()

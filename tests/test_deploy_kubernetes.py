"""The Kubernetes manifests (deploy/kubernetes), offline.

Each overlay is rendered (by the small kustomize subset below, checked against
``kubectl kustomize`` where that binary exists), then:

- every object validates against the Kubernetes schemas (strict: no unknown
  field) of the oldest and newest supported versions;
- checkov reports no failed check, and every skip carries its reason;
- the manifests and the gateway agree: the ConfigMap's config passes
  ``gateway check-config`` with the Secret's values as the env the Deployment
  gives it, ports, probe paths, the config path, the drain timing, the user
  and the image all match what the config and the Dockerfile say.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT, write_config
from test_deploy_image import parse_dockerfile

from gateway.config.loader import parse_config

K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("sidecar", "standalone")
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
}
CHECKOV = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


# -- rendering ----------------------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    """The subset of kustomize these manifests use: resources, namespace, configMapGenerator."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "configMapGenerator",
        "generatorOptions",
    }
    unknown = set(kustomization) - known
    assert not unknown, f"{directory}: kustomize features {unknown} need support in this renderer"
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    options = kustomization.get("generatorOptions", {})
    for generator in kustomization.get("configMapGenerator", []):
        assert options.get("disableNameSuffixHash") or generator.get("options", {}).get(
            "disableNameSuffixHash"
        ), "name suffix hashes need name-reference rewriting, which this renderer lacks"
        data = {}
        for item in generator.get("files", []):
            key, _, source = item.rpartition("=")
            data[key or Path(source).name] = (directory / source).read_text()
        for item in generator.get("literals", []):
            key, _, value = item.partition("=")
            data[key] = value
        made = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
            "data": data,
        }
        if generator.get("behavior") in ("replace", "merge"):
            old = find(docs, "ConfigMap", generator["name"])
            if generator["behavior"] == "merge":
                made["data"] = {**old.get("data", {}), **data}
            docs.remove(old)
        docs.append(made)
    namespace = kustomization.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_renderer_agrees_with_kustomize(name):
    command = kustomize_binary()
    if command is None:
        pytest.fail("no kustomize or kubectl to compare the renderer with: install one")
    out = subprocess.run(
        [*command, str(K8S / "overlays" / name)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(theirs, key=key) == sorted(render(K8S / "overlays" / name), key=key)


# -- schemas and policy ------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay, version):
    name, docs = overlay
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def test_the_validator_does_refuse_a_broken_object(overlay):
    _, docs = overlay
    broken = copy.deepcopy(find(docs, "Deployment"))
    gateway_container(broken)["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[-1], strict=True)


def checkov_results(directory: Path) -> list[dict[str, Any]]:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run scripts/system-deps.sh")
    out = subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert out.stdout.strip(), out.stderr[-3000:]
    data = json.loads(out.stdout)
    return data if isinstance(data, list) else [data]


def test_checkov_finds_no_failed_check_and_every_skip_says_why(tmp_path):
    shipped, careless = tmp_path / "shipped", tmp_path / "careless"
    shipped.mkdir()
    careless.mkdir()
    for name in OVERLAYS:
        docs = render(K8S / "overlays" / name)
        (shipped / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    # The same checks over a copy with the hardening taken out must fail: the run is real.
    worse = copy.deepcopy(find(render(K8S / "overlays" / "standalone"), "Deployment"))
    for container in worse["spec"]["template"]["spec"]["containers"]:
        container.pop("securityContext")
        container.pop("resources")
    (careless / "careless.yaml").write_text(yaml.safe_dump(worse))
    results = checkov_results(tmp_path)
    checks = [c for r in results for kind in ("passed_checks", "failed_checks", "skipped_checks")
              for c in r["results"][kind]]  # fmt: skip
    shipped_failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for r in results
        for c in r["results"]["failed_checks"]
        if "/shipped/" in c["file_abs_path"]
    ]
    assert shipped_failed == []
    assert sum(1 for c in checks if "/shipped/" in c["file_abs_path"]) > 100
    assert all(r["summary"]["parsing_errors"] == 0 for r in results)
    careless_failed = {
        c["check_id"]
        for r in results
        for c in r["results"]["failed_checks"]
        if "/careless/" in c["file_abs_path"]
    }
    assert {"CKV_K8S_22", "CKV_K8S_20", "CKV_K8S_13"} <= careless_failed
    for r in results:
        for c in r["results"]["skipped_checks"]:
            reason = c["check_result"].get("suppress_comment") or ""
            assert len(reason) > 20, (
                f"{c['check_id']} on {c['resource']} is skipped without a reason"
            )


# -- manifests and gateway agree ---------------------------------------------------------


def gateway_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "gateway"]
    assert len(found) == 1
    return found[0]


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"container {container['name']} has no port named {port}"
    return named[0]


def prestop_seconds(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def config_of(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    deployment = find(docs, "Deployment")
    container = gateway_container(deployment)
    image = parse_dockerfile()[-1]
    config_path = image.env()["GATEWAY_CONFIG"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(Path(config_path).parent)]
    assert "subPath" not in mount, (
        "a subPath mount is never updated: hot reload would not see changes"
    )
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
    text = configmap["data"][Path(config_path).name]
    return text, yaml.safe_load(text)


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The env the container gets, Secret and ConfigMap references resolved from the rendered set."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"]["configMapKeyRef"]
        kind = "Secret" if "secretKeyRef" in item["valueFrom"] else "ConfigMap"
        source = find(docs, kind, ref["name"])
        values = {**source.get("data", {}), **source.get("stringData", {})}
        assert ref["key"] in values, f"{kind} {ref['name']} has no key {ref['key']}"
        env[item["name"]] = values[ref["key"]]
    return env


def test_the_configmaps_config_passes_check_config_with_the_secrets_env(overlay, tmp_path):
    name, docs = overlay
    text, _ = config_of(docs)
    env = container_env(docs, gateway_container(find(docs, "Deployment")))
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    clean = {k: v for k, v in os.environ.items() if k not in env}
    ok = subprocess.run(
        [*run_cli_prefix(), "--config", str(path), "check-config"],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Without the Deployment's env the same file is refused, naming the variable.
    refused = subprocess.run(
        [*run_cli_prefix(), "--config", str(path), "check-config"],
        capture_output=True, text=True, timeout=60, env=clean,
    )  # fmt: skip
    assert refused.returncode == 1
    for variable in env:
        if "${" + variable in text:
            assert variable in refused.stdout + refused.stderr


def run_cli_prefix() -> list[str]:
    import sys

    return [sys.executable, "-m", "gateway"]


def test_every_variable_the_config_uses_is_set_by_the_deployment(overlay):
    name, docs = overlay
    text, _ = config_of(docs)
    env = container_env(docs, gateway_container(find(docs, "Deployment")))
    required = {m.group(1) for m in ENV_REF.finditer(text) if m.group(2) is None}
    assert required, "the config should take the Redis URL from the environment"
    assert required <= set(env), f"unset: {required - set(env)}"
    # Secrets stay out of the ConfigMap.
    assert "redis://" not in text and "rediss://" not in text


def test_ports_probes_and_service_match_the_config(overlay):
    name, docs = overlay
    _, raw = config_of(docs)
    env = container_env(docs, gateway_container(find(docs, "Deployment")))
    config = parse_with_env(raw, env)
    container = gateway_container(find(docs, "Deployment"))
    assert port_number(container, "http") == config.server.port
    assert port_number(container, "admin") == config.admin.port
    assert config.server.host == "0.0.0.0" and config.admin.host == "0.0.0.0"
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], port_number(container, ready["port"])) == ("/readyz", config.admin.port)
    assert (live["path"], port_number(container, live["port"])) == ("/healthz", config.admin.port)
    service = find(docs, "Service")
    pods = find(docs, "Deployment")["spec"]["template"]
    assert all(
        pods["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items()
    )
    for port in service["spec"]["ports"]:
        # The Service reaches the gateway's public port, never the admin port or the app.
        assert port_number(container, port["targetPort"]) == config.server.port
    policy = find(docs, "NetworkPolicy")
    assert all(
        pods["metadata"]["labels"].get(k) == v
        for k, v in policy["spec"]["podSelector"]["matchLabels"].items()
    )
    open_ports = {
        port_number(container, p["port"])
        for rule in policy["spec"]["ingress"]
        if "from" not in rule
        for p in rule["ports"]
    }
    assert open_ports == {config.server.port}


def parse_with_env(raw: dict[str, Any], env: dict[str, str]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return parse_config(raw)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def test_shutdown_timing_matches_the_drain_timeout(overlay):
    name, docs = overlay
    _, raw = config_of(docs)
    deployment = find(docs, "Deployment")
    config = parse_with_env(raw, container_env(docs, gateway_container(deployment)))
    drain = config.server.drain_timeout
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    gateway = gateway_container(deployment)
    gateway_done = (
        prestop_seconds(gateway) + drain
    )  # endpoints drop the pod, then SIGTERM and drain
    assert prestop_seconds(gateway) >= 3
    assert gateway_done + 3 <= grace <= gateway_done + 15
    for other in deployment["spec"]["template"]["spec"]["containers"]:
        if other is not gateway:
            # The app keeps serving while the gateway drains in front of it.
            assert prestop_seconds(other) >= gateway_done
            assert prestop_seconds(other) + 5 <= grace


def test_every_container_is_hardened_and_sized(overlay):
    _, docs = overlay
    user = parse_dockerfile()[-1].last("USER")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for part in ("requests", "limits"):
            assert set(container["resources"][part]) == {"cpu", "memory"}, (container["name"], part)
        assert container["livenessProbe"] and container["readinessProbe"]
        # A read-only root: the only writable place is an emptyDir at /tmp.
        writable = [m for m in container.get("volumeMounts", []) if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"]


def test_image_tag_is_the_packages_version(overlay):
    _, docs = overlay
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for container in find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]:
        assert container["image"].rsplit(":", 1)[1] == version


def test_sidecar_app_listens_on_loopback_where_the_gateway_sends_it():
    docs = render(K8S / "overlays" / "sidecar")
    deployment = find(docs, "Deployment")
    _, raw = config_of(docs)
    app = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] != "gateway"
    )
    command = app["command"] + app.get("args", [])
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    assert host == "127.0.0.1"
    assert "ports" not in app  # nothing about the app is published
    upstreams = {route["upstream"] for route in raw["routes"]}
    assert upstreams == {f"http://127.0.0.1:{port}"}


def test_standalone_scales_and_survives_disruption():
    docs = render(K8S / "overlays" / "standalone")
    deployment, hpa, pdb = (
        find(docs, "Deployment"),
        find(docs, "HorizontalPodAutoscaler"),
        find(docs, "PodDisruptionBudget"),
    )
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a node drain can proceed
    _, raw = config_of(docs)
    assert [r["upstream"] for r in raw["routes"]] == [
        "http://backend:8000"
    ]  # the backend's Service


# -- the ConfigMap's hot reload ----------------------------------------------------------


async def test_a_configmap_update_is_picked_up_without_a_restart(
    tmp_path, gateway_process, base_config, upstream, http
):
    """The kubelet's atomic update of a ConfigMap volume: a new ..data symlink target."""
    from conftest import upstream_url

    def publish(data: dict[str, Any], version: int) -> None:
        target = tmp_path / f"..v{version}"
        target.mkdir()
        write_config(target / "gateway.yaml", data)
        link = tmp_path / "..data_tmp"
        link.symlink_to(target.name)
        link.replace(tmp_path / "..data")

    gw = gateway_process(base_config(routes=[]))
    data = yaml.safe_load(gw.config_path.read_text())
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    tmp_path = mounted
    publish(data, 1)
    (mounted / "gateway.yaml").symlink_to("..data/gateway.yaml")
    gw.config_path = mounted / "gateway.yaml"
    gw.start()
    async with http.get(gw.url + "/public/x") as resp:
        assert resp.status == 404
    data["routes"] = [
        {"name": "public", "match": "/public", "upstream": upstream_url(upstream), "auth": "none"}
    ]
    publish(data, 2)
    import asyncio

    for _ in range(100):
        async with http.get(gw.url + "/public/x") as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.1)
    assert resp.status == 200, gw.log()[-2000:]
    assert gw.proc is not None and gw.proc.poll() is None

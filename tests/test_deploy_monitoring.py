"""The Prometheus Operator objects (deploy/kubernetes/monitoring), offline.

- the metrics Service validates against the Kubernetes schemas and reaches the
  gateway's admin port in both layouts; the ServiceMonitor selects that Service
  and names its port; the NetworkPolicy admits the scrape;
- the PrometheusRule's rules pass ``promtool check rules``, every series they
  read is one the gateway exposes (with those labels), and ``promtool test rules``
  runs each alert on series that must fire it and on series that must not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_deploy_kubernetes import (
    K8S,
    OVERLAYS,
    SCHEMA_VERSIONS,
    config_of,
    container_env,
    find,
    gateway_container,
    parse_with_env,
    port_number,
    render,
)

from gateway.telemetry.metrics import SERIES

MONITORING = K8S / "monitoring"
PROMTOOL = shutil.which("promtool")


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(MONITORING)


def promtool() -> str:
    if PROMTOOL is None:
        pytest.fail(
            "promtool is not installed (Debian package prometheus): run scripts/system-deps.sh"
        )
    return PROMTOOL


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_the_metrics_service_validates(docs, version):
    kubernetes_validate.validate(find(docs, "Service"), version, strict=True)


def test_operator_objects_have_the_fields_the_operator_reads(docs):
    monitor = find(docs, "ServiceMonitor")
    rule = find(docs, "PrometheusRule")
    for doc in (monitor, rule):
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["namespace"] == "keygate"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
        interval = int(endpoint["interval"].rstrip("s"))
        assert int(endpoint["scrapeTimeout"].rstrip("s")) < interval
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
            assert r["labels"]["severity"] in ("critical", "warning")


@pytest.mark.parametrize("layout", OVERLAYS)
def test_the_scrape_reaches_the_admin_port_of_each_layout(docs, layout):
    overlay = render(K8S / "overlays" / layout)
    deployment = find(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = gateway_container(deployment)
    _, raw = config_of(overlay)
    config = parse_with_env(raw, container_env(overlay, container))
    service = find(docs, "Service")
    monitor = find(docs, "ServiceMonitor")
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    # The ServiceMonitor must not also pick the public Service.
    public = find(overlay, "Service")
    assert not matches(monitor["spec"]["selector"]["matchLabels"], public["metadata"]["labels"])
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        port = ports[endpoint["port"]]
        assert port_number(container, port["targetPort"]) == config.admin.port
    assert service["spec"]["clusterIP"] == "None"  # every pod, not one behind a VIP
    # The base NetworkPolicy admits the admin port from the monitoring namespace.
    policy = find(overlay, "NetworkPolicy")
    scrapers = [
        rule for rule in policy["spec"]["ingress"]
        if any(port_number(container, p["port"]) == config.admin.port for p in rule["ports"])
    ]  # fmt: skip
    assert scrapers and all("from" in rule for rule in scrapers)
    assert service["metadata"]["namespace"] == find(overlay, "Deployment")["metadata"]["namespace"]


def rule_groups(docs) -> dict[str, Any]:
    return {"groups": find(docs, "PrometheusRule")["spec"]["groups"]}


def test_promtool_accepts_the_rules(docs, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(docs)))
    out = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 4 rules found" in out.stdout


def test_rules_read_only_series_and_labels_the_gateway_exposes(docs):
    # Labels Prometheus adds to every scraped series from its target.
    target = {"namespace", "pod", "job", "instance", "service", "container", "endpoint", "worker"}
    for group in rule_groups(docs)["groups"]:
        for rule in group["rules"]:
            names = set(re.findall(r"\b(gateway_[a-z_]+)", rule["expr"]))
            assert names, rule["alert"]
            for name in names:
                assert name in SERIES, (rule["alert"], name)
            for label in re.findall(r"\b(\w+)\s*=~?\s*\"", rule["expr"]):
                assert any(label in SERIES[n] for n in names), (rule["alert"], label)
            for clause in re.findall(r"by \(([^)]*)\)", rule["expr"]):
                for label in (x.strip() for x in clause.split(",")):
                    assert label in target or any(label in SERIES[n] for n in names), (
                        rule["alert"], label,
                    )  # fmt: skip


def counter(per_minute: float, minutes: int = 20) -> str:
    return f"0+{per_minute:g}x{minutes}"


UNIT_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            {
                "series": 'gateway_store_up{namespace="keygate",pod="down"}',
                "values": "1 1 0 0 0 0 0",
            },
            {
                "series": 'gateway_store_up{namespace="keygate",pod="fine"}',
                "values": "1 1 1 1 1 1 1",
            },
            {
                "series": 'gateway_store_up{namespace="keygate",pod="blip"}',
                "values": "1 0 1 1 1 1 1",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "KeygateStoreDown", "exp_alerts": []},  # pending
            {
                "eval_time": "4m",
                "alertname": "KeygateStoreDown",
                "exp_alerts": [
                    {"exp_labels": {"namespace": "keygate", "pod": "down", "severity": "critical"}}
                ],
            },
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # failing: 10% of 1/s are 5xx
            {
                "series": 'gateway_requests_total{namespace="keygate",route="failing",outcome="ok",status="2xx"}',
                "values": counter(54),
            },
            {
                "series": 'gateway_requests_total{namespace="keygate",route="failing",outcome="upstream_unavailable",status="5xx"}',
                "values": counter(6),
            },
            # healthy: 1% are 5xx
            {
                "series": 'gateway_requests_total{namespace="keygate",route="healthy",outcome="ok",status="2xx"}',
                "values": counter(594),
            },
            {
                "series": 'gateway_requests_total{namespace="keygate",route="healthy",outcome="ok",status="5xx"}',
                "values": counter(6),
            },
            # idle: every answer a 5xx, but one request every 10 minutes
            {
                "series": 'gateway_requests_total{namespace="keygate",route="idle",outcome="upstream_timeout",status="5xx"}',
                "values": counter(0.1),
            },
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "KeygateHigh5xxRatio", "exp_alerts": []},  # pending
            {
                "eval_time": "15m",
                "alertname": "KeygateHigh5xxRatio",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "namespace": "keygate",
                            "route": "failing",
                            "severity": "warning",
                        }
                    }
                ],
            },
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # guessed: 5/s refused of 10/s
            {
                "series": 'gateway_requests_total{namespace="keygate",route="guessed",outcome="ok",status="2xx"}',
                "values": counter(300),
            },
            {
                "series": 'gateway_requests_total{namespace="keygate",route="guessed",outcome="invalid_api_key",status="4xx"}',
                "values": counter(300),
            },
            {
                "series": 'gateway_auth_denials_total{namespace="keygate",route="guessed",code="invalid_api_key"}',
                "values": counter(300),
            },
            # busy: 2/s refused of 100/s, a normal share
            {
                "series": 'gateway_requests_total{namespace="keygate",route="busy",outcome="ok",status="2xx"}',
                "values": counter(5880),
            },
            {
                "series": 'gateway_requests_total{namespace="keygate",route="busy",outcome="revoked_api_key",status="4xx"}',
                "values": counter(120),
            },
            {
                "series": 'gateway_auth_denials_total{namespace="keygate",route="busy",code="revoked_api_key"}',
                "values": counter(120),
            },
            # quiet: every request refused, but one every two seconds
            {
                "series": 'gateway_requests_total{namespace="keygate",route="quiet",outcome="missing_api_key",status="4xx"}',
                "values": counter(30),
            },
            {
                "series": 'gateway_auth_denials_total{namespace="keygate",route="quiet",code="missing_api_key"}',
                "values": counter(30),
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "10m",
                "alertname": "KeygateAuthDenialBurst",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "namespace": "keygate",
                            "route": "guessed",
                            "severity": "warning",
                        }
                    }
                ],
            },
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {
                "series": 'gateway_config_reloads_total{namespace="keygate",pod="a",result="error"}',
                "values": "0 0 1 1 1",
            },
            {
                "series": 'gateway_config_reloads_total{namespace="keygate",pod="b",result="success"}',
                "values": "0 1 2 3 4",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "KeygateConfigReloadFailed", "exp_alerts": []},
            {
                "eval_time": "3m",
                "alertname": "KeygateConfigReloadFailed",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "namespace": "keygate",
                            "pod": "a",
                            "result": "error",
                            "severity": "warning",
                        }
                    }
                ],
            },
        ],
    },
]


def test_each_alert_fires_on_its_trouble_and_not_on_normal_traffic(docs, tmp_path):
    groups = rule_groups(docs)
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # templates are checked by promtool check rules
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    tested = {t["alertname"] for case in UNIT_TESTS for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for g in groups["groups"] for r in g["rules"]}
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": UNIT_TESTS}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_wrong_expectation_does_fail(docs, tmp_path):
    """The unit tests above can fail: an alert expected on the healthy pod is refused."""
    groups = rule_groups(docs)
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    wrong = [dict(UNIT_TESTS[0])]
    wrong[0]["alert_rule_test"] = [
        {
            "eval_time": "4m",
            "alertname": "KeygateStoreDown",
            "exp_alerts": [
                {"exp_labels": {"namespace": "keygate", "pod": "fine", "severity": "critical"}}
            ],
        }
    ]
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": wrong}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode != 0
    assert "KeygateStoreDown" in out.stdout + out.stderr


def test_the_readme_points_at_the_monitoring_objects():
    text = (Path(K8S).parent / "README.md").read_text()
    assert "kubectl apply -k deploy/kubernetes/monitoring" in text

"""Configuration (SPEC §9): typed loading, units, and every refusal naming its YAML path."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest
import yaml
from conftest import free_port, run_cli
from realparts import self_signed

from gateway.config import ConfigError, Rate, load_config, parse_config, parse_duration, parse_rate
from gateway.ratelimit.policy import plan_rate

FULL_EXAMPLE = """
server:   {host: 0.0.0.0, port: 8080, workers: 1, require_https: false,
           trusted_proxies: [10.0.0.0/8, "192.168.1.7", "fd00::/8"], max_body_bytes: 10485760}
admin:    {host: 127.0.0.1, port: 9090}
redis:    {url: redis://127.0.0.1:6379/0}
keys:     {prefix: sk, cache_ttl: 30s, rotation_days: 90}
management: {path_prefix: /v1}
plans:
  default: {rate_limit: 60/minute}
  pro:     {rate_limit: 1000/minute}
routes:
  - name: users
    match: /v1/users
    methods: [GET, post, DELETE]
    upstream: http://127.0.0.1:8000
    test_upstream: http://127.0.0.1:8001
    strip_prefix: false
    auth: required
    permissions: {GET: read, "*": write}
    rate_limit: 100/second
    timeout: 500ms
  - name: public
    match: /public/
    upstream: http://127.0.0.1:8000/
    auth: none
"""


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.errors


def route(**fields: object) -> dict[str, object]:
    return {"name": "r", "match": "/r", "upstream": "http://127.0.0.1:1", **fields}


# -- typed loading -------------------------------------------------------------------


class TestTypedLoading:
    def test_full_example_loads_into_typed_values(self, tmp_path):
        config = load_config(write(tmp_path, FULL_EXAMPLE))
        users, public = config.routes
        assert users.timeout == 0.5
        assert users.rate_limit == (Rate(limit=100, window=1, unit="second"),)
        assert users.methods == ("GET", "POST", "DELETE")
        assert users.permissions == {"GET": "read", "*": "write"}
        assert users.test_upstream == "http://127.0.0.1:8001"
        assert config.plans["default"].rate_limit == (Rate(60, 60, "minute"),)
        assert config.plans["pro"].rate_limit == (Rate(1000, 60, "minute"),)
        assert config.keys.cache_ttl == 30.0
        assert config.server.trusted_proxies == (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.7/32"),
            ipaddress.ip_network("fd00::/8"),
        )
        assert public.auth == "none"
        assert public.match == "/public"  # trailing slash dropped: a prefix on a segment boundary
        assert public.upstream == "http://127.0.0.1:8000"

    def test_loaded_config_is_immutable(self, tmp_path):
        config = load_config(write(tmp_path, FULL_EXAMPLE))
        with pytest.raises(pydantic.ValidationError):
            config.server.port = 1  # type: ignore[misc]
        with pytest.raises(pydantic.ValidationError):
            config.routes[0].timeout = 1.0  # type: ignore[misc]

    def test_empty_file_gives_documented_defaults(self, tmp_path):
        config = load_config(write(tmp_path, ""))
        assert config.server.port == 8080
        assert config.server.max_body_bytes == 10 * 1024 * 1024
        assert config.admin.host == "127.0.0.1" and config.admin.port == 9090
        assert config.redis.url is None  # the embedded store
        assert config.keys.prefix == "sk" and config.keys.cache_ttl == 30.0
        assert config.management.path_prefix == "/v1"
        assert config.routes == ()


class TestDurations:
    @pytest.mark.parametrize(
        "text, seconds",
        [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("24h", 86400.0), ("90d", 7776000.0),
         ("1.5s", 1.5), (" 2m ", 120.0), (0, 0.0), (45, 45.0)],
    )  # fmt: skip
    def test_duration_forms_are_seconds(self, text, seconds):
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize(
        "text", ["5", "ms", "1w", "-1s", "5 parsecs", "1h30m", "", True, -3, None]
    )
    def test_bad_durations_are_refused(self, text):
        with pytest.raises(ValueError):
            parse_duration(text)


class TestRates:
    @pytest.mark.parametrize(
        "text, rate",
        [("100/minute", Rate(100, 60, "minute")), ("5/second", Rate(5, 1, "second")),
         ("2/hour", Rate(2, 3600, "hour")), ("1/day", Rate(1, 86400, "day")),
         ("10 / minute", Rate(10, 60, "minute"))],
    )  # fmt: skip
    def test_rate_forms(self, text, rate):
        assert parse_rate(text) == rate
        assert str(parse_rate(text)) == f"{rate.limit}/{rate.unit}"

    @pytest.mark.parametrize(
        "text",
        ["0/minute", "100/fortnight", "100 per minute", "100/min", "/minute", "-1/second", 100],
    )
    def test_bad_rates_are_refused(self, text):
        with pytest.raises(ValueError):
            parse_rate(text)


# -- refusals with path and reason ------------------------------------------------------


class TestRefusals:
    def test_unknown_top_level_section(self):
        assert errors_of({"srever": {}}) == ["srever: unknown field"]

    def test_unknown_field_in_a_section(self):
        assert errors_of({"server": {"prot": 8080}}) == ["server.prot: unknown field"]

    def test_unknown_field_in_a_route_names_its_index(self):
        errors = errors_of({"routes": [route(), route(name="b", upstrem="http://x")]})
        assert errors == ["routes[1].upstrem: unknown field"]

    def test_route_without_upstream(self):
        errors = errors_of({"routes": [{"name": "users", "match": "/v1/users"}]})
        assert errors == ["routes[0].upstream: required field is missing"]

    def test_bad_duration_names_the_route_field(self):
        routes = [route(name="a"), route(name="b"), route(name="c", timeout="5 parsecs")]
        [error] = errors_of({"routes": routes})
        assert error.startswith("routes[2].timeout: ")
        assert "'5 parsecs' is not a duration" in error

    def test_bad_cache_ttl(self):
        [error] = errors_of({"keys": {"cache_ttl": "soon"}})
        assert error.startswith("keys.cache_ttl: ") and "not a duration" in error

    def test_duplicate_route_names(self):
        [error] = errors_of({"routes": [route(name="users"), route(name="users", match="/u2")]})
        assert error.startswith("routes[1].name: ")
        assert "duplicate route name 'users'" in error and "routes[0]" in error

    def test_bad_plan_rate(self):
        [error] = errors_of({"plans": {"default": {}, "pro": {"rate_limit": "5/fortnight"}}})
        assert error.startswith("plans.pro.rate_limit: ") and "not a rate" in error

    def test_bad_route_rate(self):
        [error] = errors_of({"routes": [route(rate_limit="lots")]})
        assert error.startswith("routes[0].rate_limit: ") and "not a rate" in error

    @pytest.mark.parametrize("cidr", ["10.0.0.0/33", "not-an-ip", "300.1.1.1"])
    def test_bad_trusted_proxy_cidr(self, cidr):
        [error] = errors_of({"server": {"trusted_proxies": ["10.0.0.0/8", cidr]}})
        assert (
            error.startswith("server.trusted_proxies[1]: ") and "not an IP address or CIDR" in error
        )

    def test_bad_upstream_url(self):
        [error] = errors_of({"routes": [route(upstream="ftp://files")]})
        assert error.startswith("routes[0].upstream: ")

    def test_match_must_be_a_path(self):
        [error] = errors_of({"routes": [route(match="users")]})
        assert error == "routes[0].match: must start with /"

    def test_unknown_method(self):
        [error] = errors_of({"routes": [route(methods=["GET", "FETCH"])]})
        assert error.startswith("routes[0].methods: ") and "FETCH" in error

    def test_bad_permission_in_route_map(self):
        [error] = errors_of({"routes": [route(permissions={"GET": "Read Everything"})]})
        assert error.startswith("routes[0].permissions: ")

    def test_auth_must_be_required_or_none(self):
        [error] = errors_of({"routes": [route(auth="optional")]})
        assert error.startswith("routes[0].auth: ")

    def test_require_https_needs_tls_or_trusted_proxy(self):
        [error] = errors_of({"server": {"require_https": True}})
        assert error.startswith("server.require_https: ")

    def test_tls_files_must_exist(self, tmp_path):
        tls = {"cert_file": str(tmp_path / "nope.pem"), "key_file": str(tmp_path / "nope.key")}
        [error] = errors_of({"server": {"tls": tls}})
        assert error.startswith("server.tls: ") and "does not exist" in error

    @pytest.mark.parametrize("broken", ["cert_file", "key_file", "both"])
    def test_tls_files_must_be_a_usable_certificate_and_key(self, tmp_path, broken):
        """check-config refuses what serve could not listen with, naming the fields."""
        cert, key = self_signed(tmp_path)
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("garbage\n")
        tls = {
            "cert_file": str(garbage if broken in ("cert_file", "both") else cert),
            "key_file": str(garbage if broken in ("key_file", "both") else key),
        }
        [error] = errors_of({"server": {"tls": tls}})
        assert error.startswith("server.tls: ") and "cert_file" in error and "key_file" in error
        assert "not a usable certificate and private key" in error
        config = parse_config({"server": {"tls": {"cert_file": str(cert), "key_file": str(key)}}})
        assert config.server.tls is not None and config.server.tls.cert_file == cert

    def test_default_plan_is_required(self):
        [error] = errors_of({"plans": {"pro": {"rate_limit": "5/second"}}})
        assert error.startswith("plans: ")

    def test_top_level_must_be_a_mapping(self):
        assert errors_of(["routes"]) == ["(top level): expected a mapping of sections"]

    def test_not_yaml(self, tmp_path):
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, "server: {port: [\n"))
        assert caught.value.errors[0].startswith("not valid YAML")

    def test_every_error_is_reported_at_once(self):
        errors = errors_of(
            {
                "server": {"prot": 1},
                "routes": [
                    {"name": "a", "match": "/a"},
                    route(name="b", timeout="never"),
                    route(name="c", rate_limit="5/fortnight"),
                ],
            }
        )
        where = sorted(e.split(":", 1)[0] for e in errors)
        assert where == [
            "routes[0].upstream",
            "routes[1].timeout",
            "routes[2].rate_limit",
            "server.prot",
        ]

    def test_duplicate_names_are_reported_alongside_other_errors(self):
        errors = errors_of({"routes": [route(name="a"), route(name="a", timeout="never")]})
        where = sorted(e.split(":", 1)[0] for e in errors)
        assert where == ["routes[1].name", "routes[1].timeout"]


# -- ${VAR} references ------------------------------------------------------------------


class TestEnvironmentReferences:
    def test_set_variable_is_substituted(self, monkeypatch):
        monkeypatch.setenv("GW_TEST_REDIS", "redis://10.1.2.3:6380/2")
        config = parse_config({"redis": {"url": "${GW_TEST_REDIS}"}})
        assert config.redis.url == "redis://10.1.2.3:6380/2"

    def test_whole_value_reference_becomes_a_number(self, monkeypatch):
        monkeypatch.setenv("GW_TEST_PORT", "8181")
        assert parse_config({"server": {"port": "${GW_TEST_PORT}"}}).server.port == 8181

    def test_reference_inside_a_string(self, monkeypatch):
        monkeypatch.setenv("GW_TEST_HOST", "10.9.8.7")
        config = parse_config({"routes": [route(upstream="http://${GW_TEST_HOST}:8000")]})
        assert config.routes[0].upstream == "http://10.9.8.7:8000"

    def test_default_is_used_when_unset(self, monkeypatch):
        monkeypatch.delenv("GW_TEST_UNSET", raising=False)
        config = parse_config({"keys": {"cache_ttl": "${GW_TEST_UNSET:-45s}"}})
        assert config.keys.cache_ttl == 45.0

    def test_set_variable_wins_over_default(self, monkeypatch):
        monkeypatch.setenv("GW_TEST_TTL", "10s")
        assert parse_config({"keys": {"cache_ttl": "${GW_TEST_TTL:-45s}"}}).keys.cache_ttl == 10.0

    def test_unset_variable_is_an_error_naming_variable_and_field(self, monkeypatch):
        monkeypatch.delenv("GW_TEST_MISSING", raising=False)
        errors = errors_of({"routes": [route(), route(name="b", upstream="${GW_TEST_MISSING}")]})
        assert errors == ["routes[1].upstream: environment variable GW_TEST_MISSING is not set"]

    def test_env_errors_are_reported_with_the_others(self, monkeypatch):
        monkeypatch.delenv("GW_TEST_MISSING", raising=False)
        errors = errors_of({"redis": {"url": "${GW_TEST_MISSING}"}, "server": {"prot": 1}})
        assert sorted(errors) == [
            "redis.url: environment variable GW_TEST_MISSING is not set",
            "server.prot: unknown field",
        ]

    def test_variable_value_is_validated(self, monkeypatch):
        monkeypatch.setenv("GW_TEST_TIMEOUT", "eventually")
        [error] = errors_of({"routes": [route(timeout="${GW_TEST_TIMEOUT}")]})
        assert error.startswith("routes[0].timeout: ") and "not a duration" in error


# -- the command line -------------------------------------------------------------------


BROKEN = """
server: {prot: 8080}
routes:
  - name: users
    match: /v1/users
  - name: slow
    match: /slow
    upstream: http://127.0.0.1:9
    timeout: 5 parsecs
  - name: slow
    match: /slow2
    upstream: http://127.0.0.1:9
    rate_limit: 5/fortnight
"""


class TestCheckConfig:
    def test_valid_file_exits_0(self, tmp_path):
        result = run_cli(write(tmp_path, FULL_EXAMPLE), "check-config")
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout and "2 route(s)" in result.stdout

    def test_path_argument_wins_over_config_option(self, tmp_path):
        good = write(tmp_path, FULL_EXAMPLE, "good.yaml")
        bad = write(tmp_path, BROKEN, "bad.yaml")
        assert run_cli(bad, "check-config", str(good)).returncode == 0
        assert run_cli(good, "check-config", str(bad)).returncode == 1

    def test_invalid_file_prints_every_error_and_exits_1(self, tmp_path):
        result = run_cli(write(tmp_path, BROKEN), "check-config")
        assert result.returncode == 1
        for expected in (
            "server.prot: unknown field",
            "routes[0].upstream: required field is missing",
            "routes[1].timeout: '5 parsecs' is not a duration",
            "routes[2].rate_limit: '5/fortnight' is not a rate",
            "routes[2].name: duplicate route name 'slow'",
        ):
            assert expected in result.stderr, result.stderr
        assert "5 error(s)" in result.stderr

    def test_missing_file_exits_1(self, tmp_path):
        result = run_cli(tmp_path / "absent.yaml", "check-config")
        assert result.returncode == 1
        assert "cannot read the file" in result.stderr

    def test_config_from_environment_variable(self, tmp_path):
        path = write(tmp_path, FULL_EXAMPLE)
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "check-config"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**__import__("os").environ, "GATEWAY_CONFIG": str(path)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TestServeRefusesInvalidConfig:
    def test_serve_exits_nonzero_without_opening_a_port(self, tmp_path):
        port, admin_port = free_port(), free_port()
        data = yaml.safe_load(BROKEN)
        data["server"] = {"host": "127.0.0.1", "port": port}
        data["admin"] = {"host": "127.0.0.1", "port": admin_port}
        data["redis"] = {"url": "redis://127.0.0.1:9/0"}
        path = write(tmp_path, yaml.safe_dump(data))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(path), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        opened = False
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            opened = opened or _listening(port) or _listening(admin_port)
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode not in (0, None)
        assert not opened
        assert "routes[1].timeout" in stderr and "routes[0].upstream" in stderr


# -- routes that can never be reached -------------------------------------------------


CONFLICTS = """
management: {path_prefix: /api}
routes:
  - {name: users, match: /users, upstream: "http://127.0.0.1:8000"}
  - {name: users-again, match: /users/, upstream: "http://127.0.0.1:8001"}
  - {name: keys, match: /api/api-keys/export, upstream: "http://127.0.0.1:8000"}
  - {name: verify, match: /api/auth/verify, upstream: "http://127.0.0.1:8000"}
  - {name: panel, match: /dashboard, upstream: "http://127.0.0.1:8000"}
  - {name: api, match: /api, upstream: "http://127.0.0.1:8000"}
  - {name: everything, match: /, upstream: "http://127.0.0.1:8000"}
  - {name: account-below, match: /api/account/extra, upstream: "http://127.0.0.1:8000"}
"""


class TestUnreachableRoutes:
    def test_check_config_names_every_unreachable_route_and_exits_1(self, tmp_path):
        result = run_cli(write(tmp_path, CONFLICTS), "check-config")
        assert result.returncode == 1
        err = result.stderr
        assert (
            "routes[1].match: '/users' is already the match of routes[0] ('users')" in err
        )  # the same match once normalised
        assert "routes[2].match: '/api/api-keys/export' is answered by the gateway itself" in err
        assert "management.path_prefix /api" in err
        assert "routes[3].match: '/api/auth/verify' is answered by the gateway itself" in err
        assert "routes[4].match: '/dashboard' is answered by the gateway itself" in err
        assert "dashboard.path /dashboard" in err
        # A route above a reserved path still gets everything else below it; and
        # /account is answered only as itself, so a route below it is reachable.
        for index in (5, 6, 7):
            assert f"routes[{index}]" not in err
        assert "4 error(s)" in err

    def test_moving_the_dashboard_or_turning_management_off_frees_the_paths(self):
        data = yaml.safe_load(CONFLICTS)
        data["routes"] = [r for r in data["routes"] if r["name"] != "users-again"]
        data["dashboard"] = {"path": "/console"}
        errors = errors_of(data)
        assert not any("routes[3]" in e for e in errors)  # /dashboard is a route now
        data["management"]["enabled"] = False
        parse_config(data)

    def test_serve_refuses_them_too(self, tmp_path):
        port, admin_port = free_port(), free_port()
        data = yaml.safe_load(CONFLICTS)
        data["server"] = {"host": "127.0.0.1", "port": port}
        data["admin"] = {"host": "127.0.0.1", "port": admin_port}
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(data))
        result = run_cli(path, "serve")
        assert result.returncode == 1
        assert "would never be reached" in result.stderr
        assert not _listening(port)


async def test_the_reserved_paths_are_those_the_running_gateway_answers(
    start_gateway, base_config, upstream
):
    from conftest import upstream_url

    from gateway.config.reserved import reserved_paths

    for management in ({"path_prefix": "/v1"}, {"path_prefix": "/manage/api"}):
        gw = await start_gateway(
            base_config(
                management=management,
                dashboard={"path": "/panel"},
                routes=[{"name": "a", "match": "/a", "upstream": upstream_url(upstream)}],
            )
        )
        answered = {(path, below) for path, below, _ in gw.runtime.snapshot.local_routes}
        assert {(p, below) for p, below, _ in reserved_paths(gw.config)} == answered


def test_an_account_on_a_plan_no_longer_configured_gets_the_default_plans_limits():
    """Rate limit and quota alike: removing a plan from the config must not leave its
    accounts unmetered."""
    config = parse_config(
        {"plans": {"default": {"rate_limit": "10/second", "quota": "5000/day"}, "pro": {}}}
    )
    gone = config.plan("retired")
    assert gone is config.plans["default"]
    assert str(gone.quota) == "5000/day" and plan_rate(config, "retired") is gone.rate_limit
    assert config.plan("pro").quota is None

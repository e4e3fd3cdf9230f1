"""docker/compose.yaml, the Prometheus config and Grafana provisioning parse and agree with the
code: port, health path, flags, variable names, and with each other (aliases, mounts, uids)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from server.api.health import router as probes
from server.settings import Settings, available_presets, env_var

from .conftest import DASHBOARD, DOCKER, load_yaml

PORT = Settings.model_fields["port"].default
SETTINGS_VARS = {env_var(name) for name in Settings.model_fields}
PROBE_PATHS = {route.path for route in probes.routes}  # type: ignore[attr-defined]
COMPOSE = load_yaml(DOCKER / "compose.yaml")
SERVERS = {"server": "gpu", "server-cpu": "cpu"}


def interpolate_defaults(value: str) -> str:
    """Compose `${VAR:-default}` -> default (what runs when .env does not set VAR)."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def compose_variables() -> set[str]:
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    return set(re.findall(r"\$\{(\w+)", text))


@pytest.mark.parametrize("name", SERVERS)
def test_server_services_build_our_images(name: str) -> None:
    service = COMPOSE["services"][name]
    assert service["profiles"] == [SERVERS[name]]
    dockerfile = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
    assert dockerfile.is_file()
    assert service["init"] is True, "tini as PID 1 (the image's ENTRYPOINT is the server itself)"
    assert "models:/models" in service["volumes"]


@pytest.mark.parametrize("name", SERVERS)
def test_server_port_healthcheck_and_alias_agree_with_the_code(name: str) -> None:
    service = COMPOSE["services"][name]
    assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [str(PORT)]
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "/usr/local/bin/kimi-vl-healthcheck"]
    assert test[3] == "/health" and test[3] in PROBE_PATHS
    assert "kimi-vl" in service["networks"]["default"]["aliases"]


def test_gpu_server_reserves_a_gpu() -> None:
    devices = COMPOSE["services"]["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in COMPOSE["services"]["server-cpu"]


def test_api_keys_come_from_the_environment_file() -> None:
    for name in SERVERS:
        env = COMPOSE["services"][name]["environment"]
        assert env["KIMI_VL_API_KEYS"].startswith("${KIMI_VL_API_KEYS:?")
    example = (DOCKER / ".env.example").read_text(encoding="utf-8")
    keys = {
        line.split("=", 1)[0] for line in example.splitlines() if "=" in line and line[0] != "#"
    }
    assert keys >= compose_variables() | {"COMPOSE_PROFILES"}, "document every variable"
    assert ".env" in (DOCKER / ".gitignore").read_text(encoding="utf-8").split()


def test_variable_names_match_settings() -> None:
    names = compose_variables()
    for service in COMPOSE["services"].values():
        names |= set(service.get("environment", {}))
    ours = {n for n in names if n.startswith("KIMI_VL_")}
    assert ours and ours <= SETTINGS_VARS, ours - SETTINGS_VARS


def test_command_flags_are_accepted_by_the_cli(cli_flags: set[str]) -> None:
    command = [interpolate_defaults(a) for a in COMPOSE["services"]["server"]["command"]]
    flags = {a.split("=", 1)[0] for a in command if a.startswith("--")}
    assert flags and flags <= cli_flags, flags - cli_flags
    assert command[command.index("--preset") + 1] in available_presets()


def test_prometheus_scrapes_the_server_alias() -> None:
    config = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "kimi-vl"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in PROBE_PATHS
    assert job["static_configs"] == [{"targets": [f"kimi-vl:{PORT}"]}]
    mounts = COMPOSE["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (scripts/ci-deps.sh installs Debian's prometheus)")
    config = DOCKER / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _mount_target(service: dict[str, Any], source: str) -> str:
    (target,) = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == source]
    return target


def test_grafana_provisioning_matches_its_mounts_and_the_dashboard() -> None:
    grafana = COMPOSE["services"]["grafana"]
    for volume in grafana["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DOCKER / source).exists(), volume
    datasources = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yaml")
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in COMPOSE["services"]
    providers = load_yaml(DOCKER / "grafana/provisioning/dashboards/kimi-vl.yaml")["providers"]
    assert providers[0]["options"]["path"] == _mount_target(grafana, "./grafana/dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{providers[0]['options']['path']}/{DASHBOARD.name}"

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}


def test_images_are_pinned() -> None:
    for name, service in COMPOSE["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"

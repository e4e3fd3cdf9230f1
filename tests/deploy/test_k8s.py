"""docker/k8s manifests parse and agree with the code (port, probe paths, flags, variables, preset
keys, metric names) and with each other (selectors, named ports, secrets, claims, adapter rules)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from server.api.health import router as probes
from server.settings import Settings, env_var, load_settings

from .conftest import K8S, REPO, k8s_objects, load_yaml, load_yaml_docs
from .promql import kimi_vl_series, metric_names

PORT = Settings.model_fields["port"].default
SETTINGS_VARS = {env_var(name) for name in Settings.model_fields}
PROBE_PATHS = {route.path for route in probes.routes}  # type: ignore[attr-defined]
OBJECTS = k8s_objects()
DEPLOYMENT = OBJECTS["Deployment/kimi-vl"]
POD = DEPLOYMENT["spec"]["template"]
(SERVER,) = POD["spec"]["containers"]
LWS = OBJECTS["LeaderWorkerSet/kimi-vl-multinode"]
ADAPTER_RULES = load_yaml(K8S / "prometheus-adapter-values.yaml")["rules"]["custom"]


def containers() -> list[dict[str, Any]]:
    templates = [POD] + [
        LWS["spec"]["leaderWorkerTemplate"][t] for t in ("leaderTemplate", "workerTemplate")
    ]
    return [c for t in templates for c in t["spec"]["containers"]]


def test_every_manifest_parses_and_kustomization_lists_existing_files() -> None:
    for path in K8S.glob("*.yaml"):
        assert load_yaml_docs(path), path
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert "hpa.yaml" not in resources and "multinode-lws.yaml" not in resources


def test_port_and_probes_agree_with_the_server() -> None:
    assert SERVER["ports"] == [{"name": "http", "containerPort": PORT}]
    env = {e["name"]: e.get("value") for e in SERVER["env"]}
    assert env["KIMI_VL_PORT"] == str(PORT) and env["KIMI_VL_HOST"] == "0.0.0.0"
    expected = {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe, path in expected.items():
        get = SERVER[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http") and path in PROBE_PATHS
    startup = SERVER["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60, (
        "model download + load"
    )
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in PROBE_PATHS


def test_termination_grace_covers_prestop_and_the_servers_drain() -> None:
    app = (REPO / "server/app.py").read_text()
    assert "math.ceil(settings.graceful_shutdown_seconds)" in app and (
        "drain.begin(settings.graceful_shutdown_seconds)" in app
    ), "server/app.py no longer drains for Settings.graceful_shutdown_seconds"
    args = " ".join(str(a) for a in SERVER.get("args", []))
    found = re.search(r"--graceful-shutdown-seconds[ =](\d+)", args)
    drain = (
        int(found[1]) if found else int(Settings.model_fields["graceful_shutdown_seconds"].default)
    )
    pre_stop = int(SERVER["lifecycle"]["preStop"]["exec"]["command"][1])
    assert POD["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + 20  # + engine stop


def test_pod_runs_as_the_images_user_with_a_gpu_and_the_model_cache() -> None:
    security = POD["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == security["fsGroup"] == 10001
    assert SERVER["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m["mountPath"] for m in SERVER["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in SERVER["env"]}
    assert mounts["models"] == env["HF_HOME"] == "/models"
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in OBJECTS


def test_files_and_batches_state_is_on_a_volume() -> None:
    """The root filesystem is read-only: the state folder the image names must be a volume,
    and a durable one (batches resume from it after a restart)."""
    assert SERVER["securityContext"]["readOnlyRootFilesystem"]
    image_env = re.search(r"KIMI_VL_STATE_DIR=(\S+)", (REPO / "Dockerfile").read_text())
    assert image_env is not None
    mounts = {m["mountPath"]: m["name"] for m in SERVER["volumeMounts"]}
    volume = {v["name"]: v for v in POD["spec"]["volumes"]}[mounts[image_env.group(1)]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in OBJECTS


def test_preset_configmap_is_a_valid_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_flags: set[str]
) -> None:
    args = SERVER["args"]
    assert {a for a in args if a.startswith("--")} <= cli_flags
    preset_path = Path(args[args.index("--preset") + 1])
    mounts = {m["name"]: m["mountPath"] for m in SERVER["volumeMounts"]}
    assert str(preset_path.parent) == mounts["preset"]
    volume = next(v for v in POD["spec"]["volumes"] if v["name"] == "preset")
    data = OBJECTS[f"ConfigMap/{volume['configMap']['name']}"]["data"]
    local = tmp_path / preset_path.name
    local.write_text(data[preset_path.name])
    for name in [k for k in os.environ if k.upper().startswith("KIMI_VL_")]:
        monkeypatch.delenv(name)
    settings = load_settings({"preset": str(local)})
    assert settings.model and settings.max_model_len


def test_variables_match_settings_and_secrets_exist() -> None:
    for container in containers():
        for item in container.get("env", []):
            name = item["name"]
            assert not name.startswith("KIMI_VL_") or name in SETTINGS_VARS, name
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["key"] in OBJECTS[f"Secret/{ref['name']}"]["stringData"], ref


def test_service_selects_the_pods_named_port() -> None:
    service = OBJECTS["Service/kimi-vl"]
    labels = POD["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_hpa_scales_the_deployment_on_an_adapter_metric() -> None:
    hpa = OBJECTS["HorizontalPodAutoscaler/kimi-vl"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    renamed = {rule["name"]["as"]: rule for rule in ADAPTER_RULES}
    rule = renamed[metric["pods"]["metric"]["name"]]
    (series,) = metric_names(rule["seriesQuery"])
    assert series == "vllm:num_requests_waiting" and re.fullmatch(rule["name"]["matches"], series)


def test_adapter_rules_name_real_metrics() -> None:
    for rule in ADAPTER_RULES:
        (series,) = metric_names(rule["seriesQuery"])
        assert series.startswith("vllm:") or series in kimi_vl_series(), series
        assert ":" not in rule["name"]["as"], "Kubernetes metric names cannot hold ':'"


def _leader_script() -> str:
    (leader,) = LWS["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
    return str(leader["args"][0]).replace("\\\n", " ")


def _leader_serve_argv() -> list[str]:
    (line,) = [line for line in _leader_script().splitlines() if "kimi-vl-serve" in line]
    argv = shlex.split(line)
    return argv[argv.index("kimi-vl-serve") + 1 :]


def test_multinode_leader_runs_our_server_with_ray() -> None:
    from server.cli import parse_settings

    settings = parse_settings(_leader_serve_argv())  # exits 2 on an unknown flag
    assert settings.distributed_executor_backend == "ray" and settings.port == PORT
    template = LWS["spec"]["leaderWorkerTemplate"]
    gpus = template["size"] * int(
        template["leaderTemplate"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert gpus == settings.tensor_parallel_size * settings.pipeline_parallel_size


def test_multinode_workers_join_the_leaders_ray_cluster() -> None:
    (worker,) = LWS["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"]
    assert '--address="${LWS_LEADER_ADDRESS}:6379"' in worker["args"][0]
    assert "ray start --head --port=6379" in _leader_script()

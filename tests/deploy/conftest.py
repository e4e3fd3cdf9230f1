"""Fixtures for deployment tests: the deploy files parsed, the CLI's flags, and (slow) one tiny
server plus a real Prometheus scraping it, shared by every slow test of this folder."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "kimi-vl.json"
SERVER_START_TIMEOUT_S = 180


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every manifest object under docker/k8s, keyed "Kind/name"."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_docs(path):
            if isinstance(doc, dict) and "kind" in doc and "metadata" in doc:
                objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL the process group this fixture started (engine children included)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {url} not 200 within {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(1)


@pytest.fixture(scope="session")
def cli_flags() -> set[str]:
    """Every flag `kimi-vl-serve --help` lists (`python -m server --help`)."""
    out = subprocess.run(
        [sys.executable, "-m", "server", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out))


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m server --port N`: the default command (the demo checkpoint); yields its base URL
    once /ready is 200.

    Fails (never skips) when the server cannot start: the deploy files describe this server.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("tiny-server") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KIMI_VL_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/ready", proc, log, SERVER_START_TIMEOUT_S, "python -m server")
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def prometheus(tiny_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the tiny server every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus binary not found (scripts/ci-deps.sh installs Debian's prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    target = tiny_server.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "kimi-vl",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/-/ready", proc, log, 60, "prometheus")
        yield base
    finally:
        _stop(proc)

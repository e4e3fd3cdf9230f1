"""If the engine process dies, requests fail fast, the engine restarts in-process (/ready 503
meanwhile, 200 after; the restart is counted in /metrics) — and once the restart budget is
spent, the next death makes the server exit non-zero, leaving no engine process behind.

Uses its own server with `--engine-restarts 1`, and kills its engine twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import RunningServer, running_server

pytestmark = pytest.mark.slow

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
RESTART_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def doomed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work: Path = tmp_path_factory.mktemp("doomed")
    with running_server(work, "--engine-restarts", "1") as running:
        yield running


def _kill_engine_core(server: RunningServer) -> list[psutil.Process]:
    """Kill the engine-core process; returns the engine's processes as they were (not Python's
    multiprocessing resource tracker: one per server process, it outlives engines)."""
    children = [
        p
        for p in psutil.Process(server.pid).children(recursive=True)
        if "multiprocessing.resource_tracker" not in " ".join(p.cmdline())
    ]
    (engine_core,) = [p for p in children if "EngineCore" in p.name()]
    engine_core.kill()
    return children


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_the_engine_restarts_once_then_the_server_exits(doomed_server: RunningServer) -> None:
    base = doomed_server.base_url
    assert httpx.post(base + "/v1/chat/completions", json=BODY, timeout=30).status_code == 200
    first = _kill_engine_core(doomed_server)

    deadline = time.monotonic() + 15
    while _status(base + "/ready") == 200:
        assert time.monotonic() < deadline, "/ready still 200 after the engine died"
        time.sleep(0.1)
    started = time.monotonic()
    response = httpx.post(base + "/v1/chat/completions", json=BODY, timeout=30)
    assert response.status_code == 503  # fast, while the engine is dead or restarting
    assert response.json()["error"]["code"] in ("engine_dead", "engine_starting")
    assert time.monotonic() - started < 1.0

    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while _status(base + "/ready") != 200:
        assert time.monotonic() < deadline, "the engine did not come back"
        time.sleep(0.5)
    assert httpx.get(base + "/health", timeout=5).status_code == 200
    assert httpx.post(base + "/v1/chat/completions", json=BODY, timeout=60).status_code == 200
    assert doomed_server.metric("kimi_vl_engine_restarts_total") == 1
    _, alive = psutil.wait_procs(first, timeout=15)
    assert not alive, "the dead engine's processes were left running"

    second = _kill_engine_core(doomed_server)  # the budget is spent: this death is final
    server = psutil.Process(doomed_server.pid)
    assert server.wait(60) == 1
    _, alive = psutil.wait_procs(second, timeout=15)
    assert not alive, "engine processes outlived the server"

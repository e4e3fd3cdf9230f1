"""If the engine process dies, /health turns 503 and requests fail fast with `engine_dead`.

Uses its own server (the second and last start of the e2e suite): killing the engine is final.
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


@pytest.fixture(scope="module")
def doomed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work: Path = tmp_path_factory.mktemp("doomed")
    with running_server(work) as running:
        yield running


def test_engine_death_turns_health_red_and_fails_fast(doomed_server: RunningServer) -> None:
    base = doomed_server.base_url
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(base + "/v1/chat/completions", json=body, timeout=30).status_code == 200

    children = psutil.Process(doomed_server.pid).children(recursive=True)
    (engine_core,) = [p for p in children if "EngineCore" in p.name()]
    engine_core.kill()

    deadline = time.monotonic() + 15
    while httpx.get(base + "/health", timeout=5).status_code == 200:
        assert time.monotonic() < deadline, "/health still 200 after the engine died"
        time.sleep(0.2)
    health = httpx.get(base + "/health", timeout=5)
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_dead"
    assert httpx.get(base + "/ready", timeout=5).status_code == 503

    started = time.monotonic()
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_dead"
    assert time.monotonic() - started < 1.0

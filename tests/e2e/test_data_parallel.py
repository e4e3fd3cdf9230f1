"""`--data-parallel-size 2` on the real server (vLLM's DP: two engine processes, one core each,
behind one front end): requests spread over both engines (`/metrics` counts them per `engine`
label), seeded outputs equal those of the shared one-engine server (the same tiny checkpoint),
and `/ready` turns 503 once one of the two engines is dead, until the server's supervisor has
restarted the engine (both again)."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer, running_server

pytestmark = pytest.mark.slow

PROMPTS = [f"Tell me about the number {i}." for i in range(8)]
_SUCCESS = re.compile(r"^vllm:request_success_total\{(?P<labels>[^}]*)\} (?P<n>[0-9.]+)$", re.M)


def _answers(base_url: str, headers: dict[str, str] | None = None) -> list[str]:
    def ask(prompt: str) -> str:
        body = {
            "model": TINY_MODEL_NAME,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 12,
            "temperature": 0.8,
            "seed": 7,
            "ignore_eos": True,
        }
        r = httpx.post(base_url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # all in flight: both engines get work
        return list(pool.map(ask, PROMPTS))


def _finished_per_engine(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    per_engine: dict[str, float] = {}
    for m in _SUCCESS.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        per_engine[labels["engine"]] = per_engine.get(labels["engine"], 0.0) + float(m["n"])
    return per_engine


def test_two_engines_share_the_work_answer_as_one_and_come_back_after_one_dies(
    tmp_path_factory: pytest.TempPathFactory, server: RunningServer
) -> None:
    one_engine = _answers(server.base_url, {"Authorization": f"Bearer {API_KEY}"})
    with running_server(tmp_path_factory.mktemp("dp2"), "--data-parallel-size", "2") as dp2:
        before = _finished_per_engine(dp2.base_url)
        assert sorted(before) == ["0", "1"]
        assert _answers(dp2.base_url) == one_engine
        after = _finished_per_engine(dp2.base_url)
        served = {e: after[e] - before.get(e, 0.0) for e in after}
        assert sum(served.values()) == len(PROMPTS)
        assert served["0"] > 0 and served["1"] > 0, served
        assert httpx.get(dp2.base_url + "/ready", timeout=10).status_code == 200

        engines = [
            p
            for p in psutil.Process(dp2.pid).children(recursive=True)
            if "EngineCore_DP" in " ".join(p.cmdline()) or p.name().startswith("VLLM::EngineCor")
        ]
        assert len(engines) == 2, [p.name() for p in engines]
        engines[1].kill()
        deadline, status = time.monotonic() + 30, 200
        while time.monotonic() < deadline and status == 200:
            time.sleep(0.5)
            status = httpx.get(dp2.base_url + "/ready", timeout=10).status_code
        assert status == 503
        body = json.loads(httpx.get(dp2.base_url + "/ready", timeout=10).text)
        assert body["error"]["code"] in ("engine_dead", "engine_starting")

        deadline = time.monotonic() + 180  # the supervisor restarts the whole DP engine
        while time.monotonic() < deadline and status != 200:
            time.sleep(1)
            status = httpx.get(dp2.base_url + "/ready", timeout=10).status_code
        assert status == 200
        assert sorted(_finished_per_engine(dp2.base_url)) == ["0", "1"]
        assert _answers(dp2.base_url) == one_engine
        metrics = httpx.get(dp2.base_url + "/metrics", timeout=10).text
        assert "kimi_vl_engine_restarts_total 1.0" in metrics

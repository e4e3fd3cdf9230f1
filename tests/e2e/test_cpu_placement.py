"""The running CPU server keeps its own threads and vLLM's engine core off the worker's cores."""

from __future__ import annotations

import os

import psutil
import pytest

from tests.e2e.conftest import RunningServer


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 usable cores")
def test_front_end_and_engine_core_stay_off_the_worker_cores(server: RunningServer) -> None:
    root = psutil.Process(server.pid)
    allowed = set(root.cpu_affinity()) | set().union(
        *(p.cpu_affinity() for p in root.children(recursive=True))
    )
    workers = [p for p in root.children(recursive=True) if "Worker" in p.name()]
    assert workers, [p.name() for p in root.children(recursive=True)]
    worker_cores = set().union(*(p.cpu_affinity() for p in workers))
    assert worker_cores < allowed  # vLLM bound the worker and reserved the rest
    front = [root, *(p for p in root.children(recursive=True) if p not in workers)]
    assert any(p.name() == "VLLM::EngineCore" for p in front)
    for proc in front:
        for thread in proc.threads():
            assert set(os.sched_getaffinity(thread.id)) == allowed - worker_cores, proc.name()

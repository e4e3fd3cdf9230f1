"""keep_off_worker_cores on real process trees: a root process with a 'worker' child bound to
one core and a free child; the root's threads and the free child move off the worker's core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

ROOT_SCRIPT = """
import json, os, subprocess, sys, threading, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
worker = subprocess.Popen(sleeper)
os.sched_setaffinity(worker.pid, {WORKER_CORES})
other = subprocess.Popen(sleeper)
before = threading.Thread(target=time.sleep, args=(60,), daemon=True)
before.start()
time.sleep(0.2)
from server.engine.cpu_placement import keep_off_worker_cores
rest = keep_off_worker_cores()
later = []
threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0)))).start()
time.sleep(0.2)
import psutil
print(json.dumps({
    "rest": sorted(rest) if rest is not None else None,
    "root_threads": [sorted(os.sched_getaffinity(t.id)) for t in psutil.Process().threads()],
    "thread_started_later": later[0],
    "worker": sorted(os.sched_getaffinity(worker.pid)),
    "other": sorted(os.sched_getaffinity(other.pid)),
}))
worker.kill(); other.kill()
"""


def run_root(worker_cores: set[int]) -> dict:
    script = ROOT_SCRIPT.replace("{WORKER_CORES}", repr(worker_cores))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 usable cores")
def test_front_end_leaves_the_worker_cores() -> None:
    cores = sorted(os.sched_getaffinity(0))
    worker = {cores[0]}
    rest = sorted(set(cores) - worker)
    result = run_root(worker)
    assert result["rest"] == rest
    assert len(result["root_threads"]) >= 2 and all(t == rest for t in result["root_threads"])
    assert result["thread_started_later"] == rest
    assert result["other"] == rest
    assert result["worker"] == [cores[0]]  # the worker itself is left alone


def test_nothing_changes_when_workers_cover_every_core() -> None:
    cores = set(os.sched_getaffinity(0))
    result = run_root(cores)  # a 'worker' on every core: nothing left to move to
    assert result["rest"] is None
    assert all(t == sorted(cores) for t in result["root_threads"])
    assert result["other"] == sorted(cores)

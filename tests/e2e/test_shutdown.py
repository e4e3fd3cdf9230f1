"""SIGTERM to the real server's main process only (as `docker stop` and Kubernetes send it):
a stream still generating at the end of the grace period ends with a `server_shutting_down`
error event and `[DONE]`, the server exits with status 0, and no engine process outlives it —
also when the signal comes while the engine is still loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import REPO, _free_port, running_server

pytestmark = pytest.mark.slow

LONG = {"ignore_eos": True, "max_tokens": 3000, "stream": True}


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _all_gone(processes: list[psutil.Process], timeout: float) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


def test_sigterm_drains_streams_exits_zero_and_stops_the_engine(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("shutdown")
    with running_server(work, "--graceful-shutdown-seconds", "4") as server:
        process = psutil.Process(server.pid)
        engine_processes = _children(server.pid)
        assert engine_processes, "the engine runs in child processes"
        events: list[str] = []
        first = threading.Event()

        def read() -> None:
            body = {
                "model": TINY_MODEL_NAME,
                "messages": [{"role": "user", "content": "Write forever."}],
                **LONG,
            }
            with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: ") :])
                        first.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(60), "the stream did not start"
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)  # the main process only, as docker stop does
        reader.join(30)
        assert not reader.is_alive()
        cut_after = time.monotonic() - signalled
        seen = (
            f"after {cut_after:.1f} s, last events {events[-3:]}; server log:\n"
            + (server.log_path.read_text(errors="replace")[-3000:])
        )
        assert events[-1] == "[DONE]", seen
        assert "error" in json.loads(events[-2]), seen
        error = json.loads(events[-2])["error"]
        assert error["code"] == "server_shutting_down"
        assert len(events) > 3  # tokens streamed before the cut
        assert 2.0 < cut_after < 10.0  # at the end of the 4 s grace period, not at once
        assert process.wait(30) == 0
        assert _all_gone(engine_processes, 10), "engine processes outlived the server"


def test_sigterm_while_the_engine_loads_leaves_no_process_behind(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "server",
        "--port", str(_free_port()),
        "--tiny-checkpoint-dir", str(tmp_path / "tiny"),
        "--state-dir", str(tmp_path / "state"),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        seen: list[psutil.Process] = []
        while time.monotonic() < deadline and not seen:  # until the engine process exists
            seen = [p for p in _children(server.pid) if "python" not in p.name().lower()]
            seen = seen or [
                p for p in _children(server.pid) if "EngineCore" in " ".join(p.cmdline())
            ]
            time.sleep(0.2)
        assert seen, "the engine never started loading"
        engine_processes = _children(server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert _all_gone(engine_processes, 15), (
            "engine processes outlived the server:\n"
            + (tmp_path / "server.log").read_text()[-2000:]
        )
    finally:
        if server.poll() is None:
            server.kill()

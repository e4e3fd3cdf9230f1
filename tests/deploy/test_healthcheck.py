"""docker/healthcheck.py (the images' HEALTHCHECK) against a real local HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import DOCKER, free_port

SCRIPT = DOCKER / "healthcheck.py"


class _Probe(BaseHTTPRequestHandler):
    status = {"/health": 200, "/ready": 503}
    seen_auth: list[str | None] = []

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.seen_auth.append(self.headers.get("Authorization"))
        self.send_response(self.status.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def probe_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def run_check(port: int, *args: str, keys: str = "") -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    env |= {"KIMI_VL_PORT": str(port), "KIMI_VL_API_KEYS": keys}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, timeout=30).returncode


def test_healthy_when_health_answers_200(probe_port: int) -> None:
    assert run_check(probe_port) == 0


def test_unhealthy_on_error_status_or_no_server(probe_port: int) -> None:
    assert run_check(probe_port, "/ready") == 1
    assert run_check(probe_port, "/missing") == 1
    assert run_check(free_port()) == 1


def test_sends_the_first_api_key(probe_port: int) -> None:
    _Probe.seen_auth.clear()
    assert run_check(probe_port, keys="k1,k2") == 0
    assert _Probe.seen_auth == ["Bearer k1"]

"""End-to-end fixtures: the real server (`python -m server --preset tiny`: real vLLM engine, the
tiny random checkpoint written on first use) started once per session, and a real local HTTP
media server."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from server.model.image_processing import ImageProcessorConfig
from server.model.tokenizer import TikTokenTokenizer
from server.settings import TINY_MODEL_NAME
from tests.media import videos

REPO = Path(__file__).resolve().parents[2]
API_KEY = "e2e-key"
MAX_MEDIA_BYTES = 2 * 2**20
MAX_IMAGE_PIXELS = 4_000_000
MAX_IMAGES = 4
STARTUP_TIMEOUT_S = 240
MAX_VIDEO_SECONDS = 10
MODEL_ALIAS = "kimi-tiny-alias"  # a second --served-model-name of the shared server
CORS_ORIGIN = "http://app.example"


def png(width: int, height: int, color: tuple[int, int, int] = (30, 120, 220)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def video(kind: str) -> bytes:
    """Real encoded test videos (96x64 unless named otherwise), written once per session."""
    makers = {
        "mp4": lambda: videos.mp4(seconds=3.0),
        "webm": lambda: videos.webm(seconds=3.0),
        "gif": lambda: videos.gif(seconds=2.0),
        "large.mp4": lambda: videos.mp4(seconds=3.0, size=(640, 480)),
        "long.mp4": lambda: videos.mp4(seconds=MAX_VIDEO_SECONDS + 2, fps=2),
    }
    return makers[kind]()


@dataclass
class MediaServer:
    """Real HTTP server on 127.0.0.1 that records every path it is asked for."""

    port: int = 0
    requests: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _routes(state: MediaServer) -> dict[str, tuple[int, dict[str, str], bytes]]:
    full = png(120, 90)
    return {
        "/img.png": (200, {"Content-Type": "image/png"}, full),
        "/wide.png": (200, {"Content-Type": "image/png"}, png(640, 200, (200, 40, 40))),
        "/not-an-image.png": (200, {"Content-Type": "image/png"}, b"<html>hello</html>" * 10),
        "/truncated.png": (200, {"Content-Type": "image/png"}, full[: len(full) // 2]),
        "/too-many-pixels.png": (200, {"Content-Type": "image/png"}, png(2100, 2100)),
        "/to-localhost": (302, {"Location": state.url("/img.png", host="localhost")}, b""),
        "/clip.mp4": (200, {"Content-Type": "video/mp4"}, video("mp4")),
        "/clip.webm": (200, {"Content-Type": "video/webm"}, video("webm")),
        "/truncated.mp4": (200, {"Content-Type": "video/mp4"}, video("mp4")[:1500]),
        "/empty.mp4": (200, {"Content-Type": "video/mp4"}, b""),
        "/text.mp4": (200, {"Content-Type": "video/mp4"}, b"just some notes, not a video\n" * 20),
    }


def _handler(state: MediaServer) -> type[BaseHTTPRequestHandler]:
    routes = _routes(state)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            state.requests.append(self.path)
            if self.path == "/huge":  # 4 MiB with no Content-Length: the cap must cut it off
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(64):
                        self.wfile.write(b"\0" * 65536)
                except OSError:
                    pass
                return
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up early (size caps) are expected


@pytest.fixture(scope="session")
def media_server() -> Iterator[MediaServer]:
    state = MediaServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def local_media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("local-media")
    (folder / "local.png").write_bytes(png(200, 150, (10, 200, 90)))
    (folder / "local.gif").write_bytes(video("gif"))
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    base_url: str
    tiny_dir: Path
    log_path: Path
    pid: int
    # One client for all the /metrics reads: a new one loads the CA bundle (~20 ms of CPU), and
    # while the engine generates on a 2-core machine a test process can wait seconds for that.
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10), repr=False)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples in /metrics: all label sets, or those with `labels`. A
        labelled sample not exported yet counts 0; an unknown metric name is a KeyError."""
        text = self.http.get(self.base_url + "/metrics").text
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                seen = True
                label_set = line[len(name) : line.rfind(" ")]
                if all(pair in label_set for pair in wanted):
                    total += float(line.rsplit(" ", 1)[1])
        if not seen:
            raise KeyError(f"{name} not in /metrics")
        return total


@contextlib.contextmanager
def running_server(work: Path, *extra_args: str) -> Iterator[RunningServer]:
    """Start `python -m server --preset tiny` (the tiny checkpoint, written on first use into
    `work`), wait for /ready, and stop it (with its engine processes) afterwards. Extra args come
    after, so a test may replace the preset or name a model."""
    tiny_dir = work / "tiny-checkpoint"
    log_path = work / "server.log"
    port = _free_port()
    argv = [
        sys.executable, "-m", "server",
        "--preset", "tiny",
        "--port", str(port),
        "--tiny-checkpoint-dir", str(tiny_dir),
        "--state-dir", str(work / "state"),
        "--log-level", "warning",
        *extra_args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_VL_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, process, log_path)
        running = RunningServer(
            base_url=base_url, tiny_dir=tiny_dir, log_path=log_path, pid=process.pid
        )
        with running.http:
            yield running
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, media_server: MediaServer, local_media_dir: Path
) -> Iterator[RunningServer]:
    """The server most e2e tests share: API key, media limits, 127.0.0.1 allowed for media."""
    with running_server(
        tmp_path_factory.mktemp("server"),
        "--api-key", API_KEY,
        "--allowed-media-hosts", "127.0.0.1",
        "--allowed-local-media-path", str(local_media_dir),
        "--max-media-bytes", str(MAX_MEDIA_BYTES),
        "--max-image-pixels", str(MAX_IMAGE_PIXELS),
        "--limit-images-per-request", str(MAX_IMAGES),
        "--max-video-seconds", str(MAX_VIDEO_SECONDS),
        "--served-model-name", TINY_MODEL_NAME, MODEL_ALIAS,
        "--cors-origins", CORS_ORIGIN,
    ) as running:  # fmt: skip
        yield running


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(base_url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"server not ready in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it owns the engine processes), then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    try:  # engine processes left behind in the group, if any
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def tokenizer(server: RunningServer) -> TikTokenTokenizer:
    """The shared server's tokenizer, read from its tiny checkpoint."""
    tok: TikTokenTokenizer = TikTokenTokenizer.from_pretrained(str(server.tiny_dir))
    return tok


@pytest.fixture(scope="session")
def image_cfg(server: RunningServer) -> ImageProcessorConfig:
    """The shared server's image processor config (token arithmetic for expected counts)."""
    raw = json.loads((server.tiny_dir / "preprocessor_config.json").read_text())
    return ImageProcessorConfig.from_dict(raw)

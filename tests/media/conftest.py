"""Fixtures for media tests: encoded images and a real local HTTP media server."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image


def encode_image(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    image = Image.new("RGB", (32, 24), (200, 30, 40))
    return encode_image(image, "PNG")


@dataclass
class MediaServer:
    """A real HTTP server on 127.0.0.1 that records the requests it receives."""

    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


def _handler(server_state: MediaServer, image: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # bodies end at connection close: no length needed

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            length: bool = True,
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            server_state.requests.append((self.path, self.headers.get("Host", "")))
            path = self.path
            if path == "/img.png":
                self._send(200, image, {"Content-Type": "image/png"})
            elif path.startswith("/redirect/"):
                hops = int(path.rsplit("/", 1)[1])
                target = "/img.png" if hops <= 1 else f"/redirect/{hops - 1}"
                self._send(302, headers={"Location": target})
            elif path == "/to-loopback-ip":
                self._send(302, headers={"Location": server_state.url("/img.png")})
            elif path == "/big-undeclared":
                self.send_response(200)
                self.end_headers()
                try:  # 4 MiB in 64 KiB chunks; the client hangs up early
                    for _ in range(64):
                        self.wfile.write(b"\0" * 65536)
                except OSError:
                    pass
            elif path == "/big-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 30))
                self.end_headers()
                try:
                    self.wfile.write(b"\0" * 1024)
                except OSError:
                    pass
            elif path == "/slow":
                time.sleep(1.5)
                self._send(200, image)
            else:
                self._send(404, b"not found")

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # the /slow handler must not hold up teardown

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up early (timeouts, size caps) are the point of several tests; a
        # traceback on stderr would only leak into whichever test captures output next.
        pass


@pytest.fixture(scope="module")
def media_server(png_bytes: bytes) -> Iterator[MediaServer]:
    state = MediaServer(port=0)
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state, png_bytes))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fresh_media_server(media_server: MediaServer) -> MediaServer:
    media_server.requests.clear()
    return media_server

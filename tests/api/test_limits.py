"""Header and body limits: too many or too large headers are a 431 envelope (from the HTTP
protocol, over a real socket), malformed HTTP a 400 one; a body of millions
of JSON values (a parser bomb that would hold the event loop for seconds) is refused from a
byte count before any parsing; the same size of ordinary data (a base64 image, token-id
prompts) is not; and the server stays responsive while it refuses such a body."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from server.api.middleware import MAX_JSON_VALUES, json_value_count
from server.app import create_app, uvicorn_config
from tests.api.conftest import MODEL, api_settings
from tests.fake_engine import FakeEngine

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def served(settings: dict[str, Any], kimi_tokenizer: Any) -> AsyncIterator[int]:
    """The app over a real socket, served by uvicorn with the server's own configuration
    (server.app.uvicorn_config); yields the port."""
    engine = FakeEngine(kimi_tokenizer)
    config_settings = api_settings(port=free_port(), **settings)
    app = create_app(config_settings, engine)
    await engine.start()
    config = uvicorn_config(app, config_settings)
    config.lifespan = "off"
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        yield config_settings.port
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` on a fresh connection; (status, headers, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(headers: str = "") -> bytes:
    return f"GET /health HTTP/1.1\r\nhost: x\r\n{headers}connection: close\r\n\r\n".encode()


async def test_header_count_and_size_are_capped_as_they_arrive(kimi_tokenizer: Any) -> None:
    async with served({"max_header_count": 20}, kimi_tokenizer) as port:
        assert (await exchange(port, get("x-one: 1\r\n")))[0] == 200
        many = "".join(f"x-extra-{i}: 1\r\n" for i in range(30))
        status, headers, body = await exchange(port, get(many))
        assert status == 431 and headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert error["code"] == "request_headers_too_large" and "20 headers" in error["message"]
        # One header of 16 MB: refused once 64 KiB have arrived, not after buffering it all.
        huge = b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (16 * 2**20)
        status, _, body = await exchange(port, huge)
        assert status == 431 and "65536 bytes" in json.loads(body)["error"]["message"]
        assert (await exchange(port, get()))[0] == 200


async def test_malformed_http_gets_an_envelope(kimi_tokenizer: Any) -> None:
    cases = {
        "bad chunking": b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "TLS hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64,
        "bad request line": b"GET\x00 / HTTP/1.1\r\n\r\n",
    }
    async with served({}, kimi_tokenizer) as port:
        for name, raw in cases.items():
            status, headers, body = await exchange(port, raw)
            assert status == 400, name
            assert headers["content-type"] == "application/json", name
            assert json.loads(body)["error"]["code"] == "invalid_http_request", name
        assert (await exchange(port, get()))[0] == 200


def wide_nested_arrays(size: int) -> bytes:
    """A `messages` value of nested empty arrays, `size` bytes of them."""
    unit = b"[[],[]],"
    return b'{"model": "%s", "messages": [' % MODEL.encode() + unit * (size // len(unit)) + b"[]]}"


async def test_a_parser_bomb_is_refused_before_parsing_and_the_loop_stays_free(
    make_client: Any,
) -> None:
    client, _ = await make_client(settings={"max_request_body_bytes": 32 * 2**20})
    body = wide_nested_arrays(10 * 2**20)
    assert json_value_count(body) > MAX_JSON_VALUES
    slowest = 0.0
    stop = asyncio.Event()

    async def probe() -> None:
        nonlocal slowest
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            slowest = max(slowest, time.perf_counter() - started)

    watcher = asyncio.create_task(probe())
    started = time.perf_counter()
    response = await client.post(URL, content=body, headers={"content-type": "application/json"})
    took = time.perf_counter() - started
    stop.set()
    await watcher
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request_too_complex"
    assert took < 2.0
    assert slowest < 0.2, f"the event loop stalled {slowest:.3f} s"


async def test_large_ordinary_bodies_pass(make_client: Any) -> None:
    client, engine = await make_client(settings={"max_request_body_bytes": 32 * 2**20})
    blob = base64.b64encode(b"\x89PNG" + b"\x00" * 3_000_000).decode()  # 4 MB of base64
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" + blob[:10]}]}
    assert json_value_count(blob.encode()) == 0
    assert (await client.post(URL, json=body)).status_code == 200
    ids = list(range(100)) * 1500  # 150k token ids: a long prompt as ids is ordinary
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 1}
    )
    assert response.status_code == 400  # longer than the stand-in's context, but parsed
    assert response.json()["error"]["code"] == "context_length_exceeded"

"""Header and body limits: too many or too large headers are a 431 envelope; a body of millions
of JSON values (a parser bomb that would hold the event loop for seconds) is refused from a
byte count before any parsing; the same size of ordinary data (a base64 image, token-id
prompts) is not; and the server stays responsive while it refuses such a body."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest

from server.api.middleware import MAX_JSON_VALUES, json_value_count
from tests.api.conftest import MODEL

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"


async def test_too_many_headers(make_client: Any) -> None:
    client, _ = await make_client(settings={"max_header_count": 20})
    headers = {f"x-extra-{i}": "1" for i in range(30)}
    response = await client.get("/health", headers=headers)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_headers_too_large"
    assert (await client.get("/health", headers={"x-one": "1"})).status_code == 200


async def test_headers_too_large(make_client: Any) -> None:
    client, _ = await make_client()
    response = await client.get("/health", headers={"x-big": "a" * 70_000})
    assert response.status_code == 431
    assert "65536 bytes" in response.json()["error"]["message"]


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

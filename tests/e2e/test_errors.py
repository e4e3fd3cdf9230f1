"""The real server's refusals: each a 4xx with the OpenAI envelope and code, /health still 200
afterwards; and a client that disconnects mid-stream frees its engine slot."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, MAX_IMAGES, MediaServer, RunningServer, png

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def chat(server: RunningServer, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(
        server.v1 + "/chat/completions",
        headers={**AUTH, "Content-Type": "application/json", **(headers or {})},
        timeout=60,
        **kwargs,
    )


def with_image(url: str) -> dict[str, Any]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    return {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": parts}]}


def _data(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


CASES: dict[str, tuple[Callable[[MediaServer], Any], dict[str, str], int, str]] = {
    "malformed json": (lambda m: b'{"messages": [', {}, 400, "invalid_json"),
    "unknown model": (
        lambda m: {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        {},
        404,
        "model_not_found",
    ),
    "missing api key": (lambda m: with_image(_data(png(8, 8))), {"Authorization": ""}, 401,
                        "invalid_api_key"),
    "wrong api key": (lambda m: with_image(_data(png(8, 8))), {"Authorization": "Bearer x"}, 401,
                      "invalid_api_key"),
    "bad base64": (lambda m: with_image("data:image/png;base64,!!notbase64"), {}, 400,
                   "invalid_image_url"),
    "non-image bytes": (lambda m: with_image(m.url("/not-an-image.png")), {}, 400, "invalid_image"),
    "truncated png": (lambda m: with_image(m.url("/truncated.png")), {}, 400, "invalid_image"),
    "over the pixel cap": (lambda m: with_image(m.url("/too-many-pixels.png")), {}, 400,
                           "image_too_large"),
    "too many images": (
        lambda m: {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": _data(png(8, 8))}}]
                    * (MAX_IMAGES + 1),
                }
            ]
        },
        {},
        400,
        "too_many_images",
    ),
    "over the context length": (
        lambda m: {"messages": [{"role": "user", "content": "word " * 5000}]},
        {},
        400,
        "context_length_exceeded",
    ),
    "max_tokens past the context": (
        lambda m: {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
        {},
        400,
        "context_length_exceeded",
    ),
    "oversized download": (lambda m: with_image(m.url("/huge")), {}, 400, "media_too_large"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_refusals(name: str, server: RunningServer, media_server: MediaServer) -> None:
    build, headers, status, code = CASES[name]
    response = chat(server, build(media_server), headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "Traceback" not in response.text
    assert set(error) == {"message", "type", "param", "code"}
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


def test_media_param_names_the_part(server: RunningServer, media_server: MediaServer) -> None:
    error = chat(server, with_image(media_server.url("/truncated.png"))).json()["error"]
    assert error["param"] == "messages[0].content[0].image_url"


def test_loopback_name_without_allowlist_is_never_fetched(
    server: RunningServer, media_server: MediaServer
) -> None:
    """`localhost` resolves to loopback and is not on --allowed-media-hosts (only 127.0.0.1 is):
    refused before any connection is made."""
    before = len(media_server.requests)
    response = chat(server, with_image(media_server.url("/img.png", host="localhost")))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "media_host_not_allowed"
    assert media_server.requests[before:] == []


def test_redirect_to_a_refused_address(server: RunningServer, media_server: MediaServer) -> None:
    before = len(media_server.requests)
    response = chat(server, with_image(media_server.url("/to-localhost")))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "media_host_not_allowed"
    assert media_server.requests[before:] == ["/to-localhost"]  # the target was never asked


MAX_TOKENS = 3900  # ~40 s of generation, far longer than a client that hangs up early waits
CHAT_ROUTE = "/v1/chat/completions"


def wait_stopped(server: RunningServer, generated_before: float) -> float:
    """Wait until the engine runs nothing, then return the tokens generated since
    `generated_before`. /metrics itself can be slow on a busy 2-core machine, so the wait is
    generous; the proof of the abort is the count of generated tokens, below
    MAX_TOKENS (with ignore_eos an unaborted request runs to exactly all of them)."""
    deadline = time.monotonic() + 120  # a request that was not aborted may run to its end
    while server.metric("vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "engine request still running after disconnect"
        time.sleep(0.2)
    time.sleep(1.0)  # one more stat-logger interval for the token counter
    return server.metric("vllm:generation_tokens_total") - generated_before


def test_disconnect_mid_stream_aborts_the_engine_request(server: RunningServer) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write forever"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    before = server.metric("vllm:generation_tokens_total")
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", server.v1 + "/chat/completions", json=body, headers=AUTH) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(8):  # a few chunks: the request is running in the engine
                next(lines)
    generated = wait_stopped(server, before)
    assert 0 < generated < MAX_TOKENS, f"{generated} tokens: ran to the end, not aborted"
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


def _hang_up_after(server: RunningServer, wait_s: float) -> tuple[float, bool]:
    """Send a long non-streaming chat request on a plain socket and close the connection
    `wait_s` seconds later. Returns the tokens the engine then generated for it, and whether
    the server saw the hang-up before it answered (it counts such a request as 499).

    Nothing is polled in between: while the engine generates on a 2-core machine, a test
    process that needs a few milliseconds of CPU (an HTTP client, parsing /metrics) can wait
    tens of seconds for them, long enough for the whole request to run before it looks."""
    port = int(server.base_url.rsplit(":", 1)[1])
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Write forever"}],
         "max_tokens": MAX_TOKENS, "ignore_eos": True}
    ).encode()  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    closed_early = server.metric("kimi_vl_http_requests_total", route=CHAT_ROUTE, status="499")
    before = server.metric("vllm:generation_tokens_total")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        time.sleep(wait_s)
    generated = wait_stopped(server, before)
    seen = server.metric("kimi_vl_http_requests_total", route=CHAT_ROUTE, status="499")
    return generated, seen > closed_early


def test_disconnect_while_waiting_for_a_full_response(server: RunningServer) -> None:
    """Non-streaming: the handler notices the hang-up and aborts the engine request too.

    The client hangs up a few seconds after sending: tokens generated for the request show it
    ran in the engine, fewer than MAX_TOKENS that it was aborted, a 499 that the server saw the
    hang-up. An attempt where it had not started generating yet (a busy machine) tests only
    the earlier path, so it is repeated with a longer wait."""
    for wait_s in (2.0, 5.0, 10.0):
        generated, seen = _hang_up_after(server, wait_s)
        if generated > 0:
            break
    assert generated > 0, "the request never ran in the engine"
    assert seen, "the server never saw the client hang up (no request counted as 499)"
    assert generated < MAX_TOKENS, f"{generated} tokens: ran to the end, not aborted"

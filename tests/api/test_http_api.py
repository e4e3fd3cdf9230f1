"""HTTP hygiene and the small endpoints: auth, probes, models, metrics, body limit, CORS,
request ids, and legacy /v1/completions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import MODEL, sse_events

pytestmark = pytest.mark.asyncio

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def test_probes_follow_the_engine(make_client: Any) -> None:
    client, engine = await make_client(start=False)
    assert (await client.get("/health")).json() == {"status": "ok"}
    starting = await client.get("/ready")
    assert starting.status_code == 503 and starting.json()["error"]["code"] == "engine_starting"
    await engine.start()
    assert (await client.get("/ready")).json() == {"status": "ready"}
    engine.alive = False
    for path in ("/health", "/ready"):
        dead = await client.get(path)
        assert dead.status_code == 503 and dead.json()["error"]["code"] == "engine_dead"


async def test_models_and_version(make_client: Any) -> None:
    client, _ = await make_client()
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 4096
    assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
    missing = await client.get("/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert (await client.get("/version")).json()["model"] == MODEL


async def test_api_keys(make_client: Any) -> None:
    client, _ = await make_client(settings={"api_keys": ["k1", "k2"]})
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
        response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # Refused before parsing: a malformed body without a key is still a 401.
    response = await client.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 401
    for key in ("k1", "k2"):
        ok = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
        assert ok.status_code == 200
    assert (await client.get("/v1/models")).status_code == 401
    for probe in ("/health", "/ready", "/metrics"):
        assert (await client.get(probe)).status_code == 200


async def test_probes_can_require_the_key(make_client: Any) -> None:
    client, _ = await make_client(settings={"api_keys": ["k"], "open_health_and_metrics": False})
    assert (await client.get("/health")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer k"})).status_code == 200


async def test_body_size_limit(make_client: Any) -> None:
    client, engine = await make_client(settings={"max_request_body_bytes": 2048})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    response = await client.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(4):
            yield b" " * 1024

    response = await client.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413 and not engine.requests
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_request_ids(make_client: Any) -> None:
    client, engine = await make_client()
    given = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc.1"})
    assert given.headers["x-request-id"] == "abc.1" and engine.requests[-1].request_id == "abc.1"
    generated = await client.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"
    assert len(generated.headers["x-request-id"]) == 32


async def test_cors_off_unless_configured(make_client: Any) -> None:
    client, _ = await make_client()
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    response = await client.options("/v1/chat/completions", headers=headers)
    assert "access-control-allow-origin" not in response.headers
    client, _ = await make_client(
        settings={"cors_origins": ["https://app.example"], "api_keys": ["k"]}
    )
    response = await client.options("/v1/chat/completions", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"


async def test_metrics_exposition(make_client: Any) -> None:
    client, _ = await make_client()
    await client.post("/v1/chat/completions", json=CHAT)
    await client.get("/no/such/route")
    text = (await client.get("/metrics")).text
    assert (
        'kimi_vl_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
        in text
    )
    assert 'route="unmatched",status="404"' in text
    assert "kimi_vl_requests_in_flight" in text and "kimi_vl_images_per_request" in text


async def test_errors_use_the_envelope(make_client: Any) -> None:
    client, _ = await make_client()
    response = await client.post(
        "/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    # Nesting too deep for the JSON parser itself (RecursionError inside FastAPI's body read).
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await client.post(
        "/v1/chat/completions", content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    # Tools without a forced call: the model has no tool-call format to choose one by itself.
    tools = {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}
    response = await client.post("/v1/chat/completions", json=tools)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_value"
    assert response.json()["error"]["param"] == "tool_choice"
    assert "tool_choice" in response.json()["error"]["message"]
    assert (await client.get("/nope")).json()["error"]["code"] == "not_found"


async def test_legacy_completions(make_client: Any) -> None:
    client, engine = await make_client()
    body = {"model": MODEL, "prompt": ["one", "two"], "n": 2, "max_tokens": 5, "logprobs": 1}
    data = (await client.post("/v1/completions", json=body)).json()
    assert data["object"] == "text_completion"
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "Hello world!" for c in data["choices"])
    logprobs = data["choices"][0]["logprobs"]
    assert logprobs["text_offset"][0] == 0 and len(logprobs["tokens"]) == len(
        logprobs["text_offset"]
    )
    assert (
        len(engine.requests) == 2 and engine.requests[0].request_id != engine.requests[1].request_id
    )

    stream = await client.post(
        "/v1/completions",
        json={"prompt": "one", "stream": True, "stream_options": {"include_usage": True}},
    )
    events = sse_events(stream.text)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[-1]["usage"]["prompt_tokens"] > 0
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Hello world!"

    pad = {"prompt": "look <|media_pad|>"}
    response = await client.post("/v1/completions", json=pad)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"

    # Token ids outside the vocabulary: a 400 naming the prompt, also when streaming.
    oov = {"prompt": [[1, 2], [3, 10**9]], "stream": True}
    response = await client.post("/v1/completions", json=oov)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt[1]"
    assert response.json()["error"]["code"] == "invalid_value"

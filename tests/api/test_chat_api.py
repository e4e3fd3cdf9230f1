"""/v1/chat/completions front-end logic over a stand-in engine: shapes, streaming, reasoning,
images, defaults, limits, admission and in-stream errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.engine.contract import OutputConstraint
from server.model.image_processing import num_image_tokens
from server.model.tiny import PREPROCESSOR_CONFIG
from server.serving.images import ImageBudget
from tests.api.conftest import MODEL, png_data_url, sse_events

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
THINKING = ["◁think", "▷ Let me", " count. ", "◁/", "think▷", " Three", " apples."]


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, **fields}


async def test_non_streaming_shape(make_client: Any) -> None:
    client, engine = await make_client()
    response = await client.post(URL, json=_body(max_tokens=10))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    assert data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"]["content"] == "Hello world!"
    assert choice["message"]["reasoning_content"] is None
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    usage = data["usage"]
    request = engine.requests[0]
    assert usage["prompt_tokens"] == len(request.prompt_token_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert request.sampling.max_tokens == 10 and request.multi_modal_data is None


async def test_streaming_with_usage(make_client: Any) -> None:
    client, _ = await make_client()
    body = _body(stream=True, n=2, stream_options={"include_usage": True})
    response = await client.post(URL, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""}
    ] * 2
    texts = {0: "", 1: ""}
    for chunk in chunks[2:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        assert chunk["usage"] is None
    assert texts == {0: "Hello world!", 1: "Hello world!"}
    finals = [
        c["choices"][0]["finish_reason"] for c in chunks[2:-1] if c["choices"][0]["finish_reason"]
    ]
    assert finals == ["length", "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


async def test_reasoning_split_and_counted(make_client: Any) -> None:
    client, engine = await make_client(script=THINKING, reasoning=True)
    data = (await client.post(URL, json=_body())).json()
    message = data["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] == "Let me count."
    assert message["content"] == "Three apples."
    # Token-accurate: every token before and including the end marker is reasoning.
    ids = [engine.tokenizer.encode_text(piece) for piece in THINKING]
    expected = sum(len(i) for i in ids[:5])
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == expected
    assert data["usage"]["completion_tokens"] == sum(len(i) for i in ids)

    response = await client.post(URL, json=_body(stream=True))
    deltas = [json.loads(e)["choices"][0]["delta"] for e in sse_events(response.text)[:-1]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    assert reasoning == "".join(d.get("reasoning", "") for d in deltas) == "Let me count."
    assert "".join(d.get("content", "") for d in deltas) == "Three apples."

    hidden = (await client.post(URL, json=_body(include_reasoning=False))).json()
    assert hidden["choices"][0]["message"]["reasoning_content"] is None


async def test_images_in_order_with_token_counts(make_client: Any) -> None:
    client, engine = await make_client()
    sizes = [(64, 64), (300, 200), (1000, 800)]
    content: list[dict[str, Any]] = [{"type": "text", "text": "Compare"}]
    content += [{"type": "image_url", "image_url": {"url": png_data_url(w, h)}} for w, h in sizes]
    text_only = (await client.post(URL, json=_body())).json()["usage"]["prompt_tokens"]
    body = _body(messages=[{"role": "user", "content": content}])
    data = (await client.post(URL, json=body)).json()
    request = engine.requests[-1]
    assert [im.size for im in request.multi_modal_data["image"]] == sizes  # all within budget
    cfg = ImageBudget.from_preprocessor(PREPROCESSOR_CONFIG).model
    pad = engine.tokenizer.convert_tokens_to_ids("<|media_pad|>")
    assert list(request.prompt_token_ids).count(pad) == 3
    expected = sum(num_image_tokens(w, h, cfg) for w, h in sizes)
    # Same text around, plus per image: <|media_start|>image<|media_content|> … <|media_end|>
    # and the image's tokens in place of its single <|media_pad|>.
    block = len(engine.tokenizer.encode_text("image")) + 3
    prompt_tokens = data["usage"]["prompt_tokens"]
    text_delta = len(engine.tokenizer.encode_text("Compare")) - len(
        engine.tokenizer.encode_text("hi")
    )
    assert prompt_tokens == text_only + text_delta + 3 * block + expected


async def test_detail_low_uses_fewer_tokens(make_client: Any) -> None:
    client, engine = await make_client()

    async def prompt_tokens(detail: str) -> int:
        part = {
            "type": "image_url",
            "image_url": {"url": png_data_url(1200, 900), "detail": detail},
        }
        body = _body(messages=[{"role": "user", "content": [part]}])
        return int((await client.post(URL, json=body)).json()["usage"]["prompt_tokens"])

    high, low = await prompt_tokens("high"), await prompt_tokens("low")
    assert low < high and low - (high - 1000) <= 300
    assert engine.requests[-1].multi_modal_data["image"][0].width < 1200


async def test_defaults_fill_missing_fields(make_client: Any) -> None:
    client, engine = await make_client(
        settings={"default_temperature": 0.2, "default_max_tokens": 7},
        generation_defaults={"top_p": 0.8, "temperature": 0.9, "repetition_penalty": 1.1},
    )
    await client.post(URL, json=_body())
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (0.2, 0.8, 7)
    assert sampling.repetition_penalty == 1.1
    await client.post(URL, json=_body(temperature=1.5, top_p=0.5, max_completion_tokens=3))
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (1.5, 0.5, 3)


async def test_logprobs_and_response_format(make_client: Any) -> None:
    client, engine = await make_client()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = _body(
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    data = (await client.post(URL, json=body)).json()
    tokens = data["choices"][0]["logprobs"]["content"]
    assert tokens and all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert tokens[0]["bytes"] == list(tokens[0]["token"].encode())
    assert engine.requests[-1].sampling.constraint == OutputConstraint("json", schema)


async def test_context_and_image_limits(make_client: Any) -> None:
    client, _ = await make_client(max_model_len=64, settings={"limit_images_per_request": 1})
    long = _body(messages=[{"role": "user", "content": "word " * 200}])
    response = await client.post(URL, json=long)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    response = await client.post(URL, json=_body(max_tokens=60))
    assert response.json()["error"] == {
        "message": response.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "context_length_exceeded",
    }
    image = {"type": "image_url", "image_url": {"url": png_data_url(8, 8)}}
    two = _body(messages=[{"role": "user", "content": [image, image]}])
    response = await client.post(URL, json=two)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_images"


async def test_bad_image_names_its_part(make_client: Any) -> None:
    client, engine = await make_client()
    parts = [
        {"type": "text", "text": "x"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    response = await client.post(URL, json=_body(messages=[{"role": "user", "content": parts}]))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages[0].content[1].image_url"
    assert error["code"] == "invalid_image" and not engine.requests


async def test_unknown_model_and_not_ready(make_client: Any) -> None:
    client, engine = await make_client(start=False)
    response = await client.post(URL, json=_body())
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_starting"
    assert response.headers["Retry-After"]
    await engine.start()
    response = await client.post(URL, json=_body(model="gpt-4o"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    engine.alive = False
    response = await client.post(URL, json=_body())
    assert response.status_code == 503 and response.json()["error"]["code"] == "engine_dead"


async def test_overload_is_503_with_retry_after(make_client: Any) -> None:
    client, engine = await make_client(max_num_seqs=1, settings={"max_queued_requests": 1})
    engine.hold = asyncio.Event()
    first = [asyncio.create_task(client.post(URL, json=_body())) for _ in range(2)]
    while len(engine.requests) < 2:
        await asyncio.sleep(0.01)
    response = await client.post(URL, json=_body())
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "server_overloaded"
    engine.hold.set()
    assert [r.status_code for r in await asyncio.gather(*first)] == [200, 200]
    assert (await client.post(URL, json=_body())).status_code == 200  # seats were released


async def test_request_id_is_the_engine_id_and_unique(make_client: Any) -> None:
    client, engine = await make_client()
    engine.hold = asyncio.Event()
    headers = {"X-Request-Id": "client-42"}
    tasks = [asyncio.create_task(client.post(URL, json=_body(), headers=headers)) for _ in range(2)]
    while len(engine.requests) < 2:
        await asyncio.sleep(0.01)
    engine.hold.set()
    responses = await asyncio.gather(*tasks)
    assert [r.headers["x-request-id"] for r in responses] == ["client-42"] * 2
    ids = [r.request_id for r in engine.requests]
    assert ids[0] == "client-42" and ids[1].startswith("client-42-") and len(set(ids)) == 2


async def test_engine_failure_mid_stream_is_an_sse_error(make_client: Any) -> None:
    client, engine = await make_client()
    engine.fail_at_step = 1
    response = await client.post(URL, json=_body(stream=True))
    events = sse_events(response.text)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "internal_error" and "exploded" not in error["message"]
    assert engine.closed == [engine.requests[0].request_id]
    non_stream = await client.post(URL, json=_body())
    assert non_stream.status_code == 500 and "Traceback" not in non_stream.text


async def test_token_ids_outside_the_vocabulary(make_client: Any) -> None:
    client, engine = await make_client()
    for field, value in (("logit_bias", {"999999": 5}), ("stop_token_ids", [999999])):
        response = await client.post(URL, json=_body(stream=True, **{field: value}))
        assert response.status_code == 400 and response.json()["error"]["param"] == field
    assert not engine.requests


@pytest.mark.parametrize("stream", [False, True])
async def test_first_token_metrics_for_streamed_and_whole_responses(
    make_client: Any, stream: bool
) -> None:
    """TTFT is observed for every request; time to first *content* token only once the
    reasoning is over (here: a Thinking-model script whose content starts after ◁/think▷)."""
    from prometheus_client import REGISTRY

    def count(name: str) -> float:
        return REGISTRY.get_sample_value(f"kimi_vl_{name}_seconds_count") or 0.0

    client, _ = await make_client(script=THINKING, reasoning=True)
    before = count("time_to_first_token"), count("time_to_first_content_token")
    response = await client.post(URL, json=_body(stream=stream))
    assert response.status_code == 200
    assert count("time_to_first_token") == before[0] + 1
    assert count("time_to_first_content_token") == before[1] + 1

    reasoning_only, _ = await make_client(script=["◁think▷", "still thinking"], reasoning=True)
    before = count("time_to_first_token"), count("time_to_first_content_token")
    assert (await reasoning_only.post(URL, json=_body(stream=stream))).status_code == 200
    assert count("time_to_first_token") == before[0] + 1
    assert count("time_to_first_content_token") == before[1]  # no content came

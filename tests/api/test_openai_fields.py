"""The field policy and the OpenAI/vLLM extras over the stand-in engine: what reaches the engine,
the response shapes of forced tool calls (the stand-in streams a scripted call), echo,
truncation, the engine's pre-flight refusal as a 400, and /tokenize accounting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.engine.contract import OutputConstraint
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.tiny import PREPROCESSOR_CONFIG
from tests.api.conftest import MODEL, png_data_url, sse_events

pytestmark = pytest.mark.asyncio

URL = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
CALL = ('{"city":', '"Paris",', '"days":3}')
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, "max_tokens": 16, **fields}


async def test_ignored_fields_header(make_client: Any) -> None:
    client, _ = await make_client()
    response = await client.post(URL, json=_body(verbosity="low", user="u", stream=True))
    assert response.status_code == 200
    assert response.headers["X-Ignored-Params"] == "user,verbosity"
    plain = await client.post(URL, json=_body())
    assert "X-Ignored-Params" not in plain.headers


async def test_extras_reach_the_engine(make_client: Any) -> None:
    client, engine = await make_client()
    body = _body(
        skip_special_tokens=False,
        include_stop_str_in_output=True,
        priority=4,
        cache_salt="s1",
        structured_outputs={"choice": ["a", "b"]},
    )
    assert (await client.post(URL, json=body)).status_code == 200
    sent = engine.requests[-1]
    assert sent.priority == 4 and sent.cache_salt == "s1"
    assert sent.sampling.constraint == OutputConstraint("choice", ("a", "b"))
    assert not sent.sampling.skip_special_tokens and sent.sampling.include_stop_str_in_output


async def test_named_tool_call(make_client: Any) -> None:
    client, engine = await make_client(script=CALL)
    data = (await client.post(URL, json=_body(tools=TOOLS, tool_choice=NAMED))).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": "".join(CALL)}
    schema = TOOLS[0]["function"]["parameters"]  # type: ignore[index]
    assert engine.requests[-1].sampling.constraint == OutputConstraint("json", schema)
    # The model is told about the function in a system turn of its own.
    prompt = client_prompt(engine)
    assert "Call the function get_weather." in prompt


def client_prompt(engine: Any) -> str:
    text = engine.tokenizer.decode(list(engine.requests[-1].prompt_token_ids))
    return str(text)


async def test_named_tool_call_stream(make_client: Any) -> None:
    client, _ = await make_client(script=CALL)
    response = await client.post(URL, json=_body(tools=TOOLS, tool_choice=NAMED, stream=True))
    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    head = deltas[1]["tool_calls"][0]
    assert head["index"] == 0 and head["type"] == "function" and head["id"].startswith("call_")
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    pieces = [d["tool_calls"][0]["function"] for d in deltas[2:] if "tool_calls" in d]
    assert [p["arguments"] for p in pieces] == list(CALL)
    assert all("name" not in p for p in pieces)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_required_tool_call_stream(make_client: Any) -> None:
    script = ('{"name":"get_weather",', '"arguments":{"city":"Lima"}}')
    client, engine = await make_client(script=script)
    response = await client.post(URL, json=_body(tools=TOOLS, tool_choice="required", stream=True))
    chunks = [json.loads(e) for e in sse_events(response.text)[:-1]]
    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in chunks
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    assert len(calls) == 1  # the name is only known at the end: one delta with everything
    assert calls[0][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Lima"}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    constraint = engine.requests[-1].sampling.constraint
    assert constraint.kind == "json" and constraint.value["properties"]["name"]["enum"] == [
        "get_weather"
    ]


async def test_cut_tool_call_is_text_with_length(make_client: Any) -> None:
    client, _ = await make_client(script=('{"city":', '"Par'))
    data = (await client.post(URL, json=_body(tools=TOOLS, tool_choice="required"))).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == '{"city":"Par'
    assert "tool_calls" not in choice["message"]


async def test_chat_echo_and_continue(make_client: Any) -> None:
    client, engine = await make_client()
    messages = [*HI, {"role": "assistant", "content": "Well,"}]
    body = _body(
        messages=messages, continue_final_message=True, add_generation_prompt=False, echo=True
    )
    data = (await client.post(URL, json=body)).json()
    assert data["choices"][0]["message"]["content"] == "Well,Hello world!"
    assert client_prompt(engine).endswith("<|im_assistant|>assistant<|im_middle|>Well,")
    stream = await client.post(URL, json={**body, "stream": True})
    deltas = [json.loads(e)["choices"][0]["delta"] for e in sse_events(stream.text)[:-1]]
    assert deltas[1] == {"content": "Well,"}


async def test_truncate_prompt_tokens(make_client: Any) -> None:
    client, engine = await make_client()
    long = [{"role": "user", "content": "many words " * 50}]
    data = (await client.post(URL, json=_body(messages=long, truncate_prompt_tokens=12))).json()
    assert data["usage"]["prompt_tokens"] == 12 == len(engine.requests[-1].prompt_token_ids)


async def test_engine_refusal_is_a_400_before_streaming(make_client: Any) -> None:
    client, engine = await make_client()
    engine.reject = "Failed to transform regex into a grammar"
    body = _body(stream=True, structured_outputs={"regex": "("})
    response = await client.post(URL, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "structured_outputs" and "regex" in error["message"]
    assert not engine.requests  # nothing was generated


async def test_legacy_echo(make_client: Any) -> None:
    client, _ = await make_client()
    data = (
        await client.post("/v1/completions", json={"model": MODEL, "prompt": "Say:", "echo": True})
    ).json()
    assert data["choices"][0]["text"] == "Say:Hello world!"
    both = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "echo": True, "logprobs": 1}
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "echo"


async def test_tokenize_counts_images(make_client: Any) -> None:
    client, engine = await make_client()
    cfg = ImageProcessorConfig.from_dict(dict(PREPROCESSOR_CONFIG))
    content = [
        {"type": "image_url", "image_url": {"url": png_data_url(60, 40)}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": png_data_url(30, 90)}},
    ]
    messages = [{"role": "user", "content": content}]
    counted = (await client.post("/tokenize", json={"messages": messages})).json()
    used = (await client.post(URL, json=_body(messages=messages))).json()["usage"]["prompt_tokens"]
    assert counted["count"] == used == len(counted["tokens"])
    pads = sum(num_image_tokens(w, h, cfg) for w, h in ((60, 40), (30, 90)))
    pad_id = engine.tokenizer.convert_tokens_to_ids("<|media_pad|>")
    assert counted["tokens"].count(pad_id) == pads
    assert counted["max_model_len"] == 4096

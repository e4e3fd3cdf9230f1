"""/v1/responses over the stand-in engine: response shape, the event stream's order and
numbering, the reasoning split, the store (previous_response_id, retrieve, delete, LRU),
X-Ignored-Params, errors pointing at Responses fields, in-stream failures.

The stand-in engine ends every script with finish reason `length`, so its responses are
`incomplete` (completed responses are checked against the real engine in tests/e2e)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import openai
import pytest

from server.model.image_processing import num_image_tokens
from server.model.tiny import PREPROCESSOR_CONFIG
from server.serving.images import ImageBudget
from tests.api.conftest import MODEL, png_data_url

pytestmark = pytest.mark.asyncio

URL = "/v1/responses"
THINKING = ["◁think", "▷ Let me", " count. ", "◁/", "think▷", " Three", " apples."]


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi", **fields}


def events_of(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each `event: …\\ndata: …` block of an SSE body."""
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def prompt_text(engine: Any, index: int = -1) -> str:
    text: str = engine.tokenizer.decode(engine.requests[index].prompt_token_ids)
    return text


async def test_response_shape_usage_and_echo(make_client: Any) -> None:
    client, engine = await make_client()
    body = _body(
        instructions="Be brief.", max_output_tokens=9, temperature=0.5, metadata={"k": "v"}
    )
    response = await client.post(URL, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["id"].startswith("resp_") and data["object"] == "response"
    assert data["model"] == MODEL and isinstance(data["created_at"], int)
    assert data["status"] == "incomplete"
    assert data["incomplete_details"] == {"reason": "max_output_tokens"}
    [message] = data["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["role"] == "assistant" and message["status"] == "incomplete"
    assert message["content"] == [{"type": "output_text", "text": "Hello world!", "annotations": [], "logprobs": []}]  # fmt: skip
    request = engine.requests[0]
    usage = data["usage"]
    assert usage["input_tokens"] == len(request.prompt_token_ids)
    assert usage["output_tokens"] == sum(
        len(engine.tokenizer.encode_text(s)) for s in ("Hello", " world", "!")
    )
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert data["instructions"] == "Be brief." and data["max_output_tokens"] == 9
    assert data["temperature"] == 0.5 and data["metadata"] == {"k": "v"}
    assert data["text"] == {"format": {"type": "text"}} and data["tools"] == []
    assert data["store"] is True and data["error"] is None
    assert "output_text" not in data  # an SDK-side property
    assert request.sampling.max_tokens == 9 and request.sampling.temperature == 0.5
    prompt = prompt_text(engine)
    assert prompt.index("Be brief.") < prompt.index("hi")  # instructions come first


async def test_message_items_and_image(make_client: Any) -> None:
    client, engine = await make_client()
    image = png_data_url(300, 200)
    body = _body(
        input=[
            {"role": "developer", "content": "Answer in French."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is"},
                    {"type": "input_image", "image_url": image, "detail": "original"},
                ],
            },
        ]
    )
    data = (await client.post(URL, json=body)).json()
    request = engine.requests[0]
    assert len(request.multi_modal_data["image"]) == 1
    budget = ImageBudget.from_preprocessor(PREPROCESSOR_CONFIG, None)
    tokens = num_image_tokens(300, 200, budget.model)
    assert data["usage"]["input_tokens"] == len(request.prompt_token_ids) - 1 + tokens
    assert "Answer in French." in prompt_text(engine)


async def test_stream_event_order_and_numbering(make_client: Any) -> None:
    client, engine = await make_client()
    response = await client.post(URL, json=_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    final = events[-1][1]["response"]
    assert final["id"] == created["id"] and final["status"] == "incomplete"
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    done = events[7][1]
    assert deltas == done["text"] == final["output"][0]["content"][0]["text"] == "Hello world!"
    assert events[2][1]["item"]["status"] == "in_progress"
    assert events[9][1]["item"] == final["output"][0]
    item_id = final["output"][0]["id"]
    assert {d["item_id"] for _, d in events[3:9]} == {item_id}
    assert final["usage"]["input_tokens"] == len(engine.requests[0].prompt_token_ids)
    assert engine.closed == [engine.requests[0].request_id]


async def test_reasoning_split(make_client: Any) -> None:
    client, engine = await make_client(script=THINKING, reasoning=True)
    data = (await client.post(URL, json=_body())).json()
    reasoning, message = data["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me count."}]
    assert reasoning["summary"] == []
    assert message["content"][0]["text"] == "Three apples."
    ids = [engine.tokenizer.encode_text(piece) for piece in THINKING]
    assert data["usage"]["output_tokens_details"]["reasoning_tokens"] == sum(map(len, ids[:5]))

    events = events_of((await client.post(URL, json=_body(stream=True))).text)
    names = [name for name, _ in events]
    assert names[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
    ]
    first_text = names.index("response.output_text.delta")
    assert names[first_text - 5 : first_text] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
    ]
    reasoning_deltas = [d for n, d in events if n == "response.reasoning_text.delta"]
    text_deltas = [d for n, d in events if n == "response.output_text.delta"]
    assert "".join(d["delta"] for d in reasoning_deltas) == "Let me count."
    assert "".join(d["delta"] for d in text_deltas) == "Three apples."
    assert {d["output_index"] for d in reasoning_deltas} == {0}
    assert {d["output_index"] for d in text_deltas} == {1}
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"][0]["text"] == "Let me count."


async def test_store_continue_retrieve_delete(make_client: Any) -> None:
    client, engine = await make_client()
    first = (await client.post(URL, json=_body(input="My name is Ada.", instructions="X1"))).json()
    second = await client.post(
        URL, json=_body(input="What is my name?", previous_response_id=first["id"])
    )
    assert second.status_code == 200 and second.json()["previous_response_id"] == first["id"]
    prompt = prompt_text(engine)
    # The earlier turn and its answer come back; the earlier instructions do not (as OpenAI).
    assert prompt.index("My name is Ada.") < prompt.index("Hello world!")
    assert prompt.index("Hello world!") < prompt.index("What is my name?")
    assert "X1" not in prompt
    third = await client.post(
        URL, json=_body(input="And now?", previous_response_id=second.json()["id"])
    )
    assert prompt_text(engine).count("Hello world!") == 2 and third.status_code == 200

    got = await client.get(f"{URL}/{first['id']}")
    assert got.status_code == 200 and got.json() == first
    deleted = await client.delete(f"{URL}/{first['id']}")
    assert deleted.json() == {"id": first["id"], "object": "response", "deleted": True}
    for response in (
        await client.get(f"{URL}/{first['id']}"),
        await client.delete(f"{URL}/{first['id']}"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "response_not_found"
    unknown = await client.post(URL, json=_body(previous_response_id=first["id"]))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "previous_response_id"
    assert len(engine.requests) == 3


async def test_store_false_and_store_size_zero(make_client: Any) -> None:
    client, _ = await make_client()
    unstored = (await client.post(URL, json=_body(store=False))).json()
    assert unstored["store"] is False
    assert (await client.get(f"{URL}/{unstored['id']}")).status_code == 404

    client, _ = await make_client(settings={"responses_store_size": 0})
    data = (await client.post(URL, json=_body())).json()
    assert (await client.get(f"{URL}/{data['id']}")).status_code == 404


async def test_store_is_an_lru(make_client: Any) -> None:
    client, _ = await make_client(settings={"responses_store_size": 2})

    async def create() -> str:
        rid: str = (await client.post(URL, json=_body())).json()["id"]
        return rid

    async def stored(rid: str) -> bool:
        return (await client.get(f"{URL}/{rid}")).status_code == 200

    a, b = await create(), await create()
    assert await stored(a)  # a is now the most recently used
    c = await create()  # evicts b
    assert [await stored(rid) for rid in (b, a, c)] == [False, True, True]
    streamed = await client.post(URL, json=_body(stream=True))  # streamed ones are stored too
    rid = events_of(streamed.text)[-1][1]["response"]["id"]
    assert [await stored(x) for x in (a, c, rid)] == [False, True, True]


async def test_ignored_params_header(make_client: Any) -> None:
    client, _ = await make_client()
    plain = await client.post(URL, json=_body())
    assert "x-ignored-params" not in plain.headers
    body = _body(
        user="u1",
        reasoning={"effort": "low", "summary": "auto"},
        safety_identifier="s",
        text={"verbosity": "low"},
        include=["reasoning.encrypted_content"],
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        truncation="disabled",
        background=False,
        service_tier="auto",
        prompt_cache_key="k",
    )
    response = await client.post(URL, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-params"].split(",") == [
        "include",
        "parallel_tool_calls",
        "prompt_cache_key",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "text.verbosity",
        "user",
    ]
    streamed = await client.post(URL, json=_body(stream=True, stream_options={"include_obfuscation": False}))  # fmt: skip
    assert streamed.headers["x-ignored-params"] == "stream_options.include_obfuscation"


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"temprature": 1}, 400, "unknown_parameter", "temprature"),
        ({"tools": [{"type": "web_search"}]}, 400, "unsupported_parameter", "tools"),
        ({"tool_choice": "required"}, 400, "unsupported_parameter", "tool_choice"),
        ({"background": True}, 400, "unsupported_parameter", "background"),
        ({"truncation": "auto"}, 400, "unsupported_parameter", "truncation"),
        ({"max_output_tokens": 10_000}, 400, "context_length_exceeded", "max_output_tokens"),
        ({"input": []}, 400, "invalid_value", "input"),
        ({"model": "other"}, 404, "model_not_found", "model"),
        ({"previous_response_id": "resp_nope"}, 404, "response_not_found", "previous_response_id"),
        ({"stream_options": {"include_obfuscation": True}}, 400, "invalid_value", None),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
            400,
            "invalid_value",
            "input[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            400,
            "invalid_value",
            "input[0].content[0]",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x"}}},
            400,
            "invalid_value",
            "text.format",
        ),
    ],
)
async def test_errors_name_the_responses_field(
    make_client: Any, fields: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    client, engine = await make_client()
    response = await client.post(URL, json=_body(**fields))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert not engine.requests


async def test_bad_image_names_the_input_part(make_client: Any) -> None:
    client, engine = await make_client()
    content = [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
    ]
    body = _body(input=[{"role": "user", "content": "hello"}, {"role": "user", "content": content}])
    response = await client.post(URL, json=_body(instructions="sys", **{"input": body["input"]}))
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "input[1].content[1].image_url"
    assert not engine.requests


async def test_json_schema_reaches_the_engine(make_client: Any) -> None:
    client, engine = await make_client()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}
    data = (await client.post(URL, json=_body(text={"format": fmt}))).json()
    assert data["text"] == {"format": fmt}
    assert schema in _values(dataclasses.asdict(engine.requests[0].sampling))


def _values(value: Any) -> list[Any]:
    """Every value nested in dicts and lists (the schema's place in SamplingOptions aside)."""
    found = [value]
    if isinstance(value, dict):
        for item in value.values():
            found.extend(_values(item))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.extend(_values(item))
    return found


async def test_engine_failure_mid_stream_is_an_error_event(make_client: Any) -> None:
    client, engine = await make_client()
    engine.fail_at_step = 1
    response = await client.post(URL, json=_body(stream=True))
    events = events_of(response.text)
    name, error = events[-1]
    assert name == "error" and error["code"] == "internal_error"
    assert "exploded" not in error["message"]
    assert error["sequence_number"] == len(events) - 1
    assert not any(n in ("response.completed", "response.incomplete") for n, _ in events)
    assert engine.closed == [engine.requests[0].request_id]
    # A failed response is not stored: the only stored id would come from a final event.
    created = events[0][1]["response"]["id"]
    assert (await client.get(f"{URL}/{created}")).status_code == 404


def _finish_with_stop(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the stand-in engine end with `stop` (an answer that ended by itself)."""
    generate = engine.generate

    async def stopping(request: Any) -> Any:
        async for out in generate(request):
            yield dataclasses.replace(out, finish_reason="stop") if out.finished else out

    monkeypatch.setattr(engine, "generate", stopping)


async def test_the_openai_sdk_parses_it(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, engine = await make_client(script=THINKING, reasoning=True)
    _finish_with_stop(engine, monkeypatch)
    sdk = openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0
    )
    created = await sdk.responses.create(model=MODEL, input="hi", instructions="Be brief.")
    assert created.status == "completed" and created.incomplete_details is None
    assert created.output_text == "Three apples."
    assert created.output[0].type == "reasoning"
    assert created.usage is not None and created.usage.output_tokens_details.reasoning_tokens > 0

    async with sdk.responses.stream(
        model=MODEL, input="again", previous_response_id=created.id
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert final.output_text == "Three apples." and final.previous_response_id == created.id
    assert final.output[0].type == "reasoning" and final.output[0].content is not None
    assert final.output[0].content[0].text == "Let me count."

    retrieved = await sdk.responses.retrieve(final.id)
    assert retrieved.output_text == "Three apples." and retrieved.id == final.id
    await sdk.responses.delete(final.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(final.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model=MODEL, input="x", previous_response_id=final.id)

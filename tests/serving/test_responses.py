"""Responses -> chat translation (message order, sources for error params, image detail,
reasoning items) and the LRU store, without an engine."""

from __future__ import annotations

from typing import Any

import pytest

from server.app import create_app
from server.errors import InvalidRequest
from server.protocol.chat import ChatMessage
from server.protocol.responses import ResponseObject, ResponsesRequest
from server.serving.response_store import ResponseStore, StoredResponse
from server.serving.responses_input import chat_messages, chat_request_for, responses_param
from tests.api.conftest import api_settings
from tests.fake_engine import FakeEngine


def _request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate(fields)


def test_instructions_history_then_input() -> None:
    history = (
        ChatMessage.model_validate({"role": "user", "content": "before"}),
        ChatMessage.model_validate({"role": "assistant", "content": "answer"}),
    )
    request = _request(
        instructions="rules",
        input=[
            {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "skip me"}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:x", "detail": "original"},
                ],
            },
        ],
    )
    messages, sources, turns = chat_messages(request, history)
    assert [(m.role, m.text) for m in messages] == [
        ("system", "rules"),
        ("user", "before"),
        ("assistant", "answer"),
        ("user", "look"),
    ]
    assert sources == ["instructions", "previous_response_id", "previous_response_id", "input[1]"]
    assert turns == messages[1:]  # instructions are not carried over
    image = messages[-1].content[1].image_url
    assert image is not None and (image.url, image.detail) == ("data:x", "high")


def test_only_reasoning_items_is_an_error() -> None:
    request = _request(input=[{"type": "reasoning", "summary": []}])
    with pytest.raises(InvalidRequest) as caught:
        chat_messages(request, ())
    assert caught.value.param == "input"


def test_chat_request_fields() -> None:
    schema = {"type": "boolean"}
    request = _request(
        input="x",
        max_output_tokens=7,
        temperature=0.3,
        top_p=0.9,
        stream=True,
        text={"format": {"type": "json_schema", "name": "b", "schema": schema, "strict": True}},
    )
    messages, _, _ = chat_messages(request, ())
    chat = chat_request_for(request, messages)
    assert (chat.effective_max_tokens, chat.temperature, chat.top_p, chat.stream) == (
        7,
        0.3,
        0.9,
        True,
    )
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.schema_ == schema
    json_object = _request(input="x", text={"format": {"type": "json_object"}})
    fmt = chat_request_for(json_object, messages).response_format
    assert fmt is not None and fmt.type == "json_object"
    assert chat_request_for(_request(input="x", text={"format": {"type": "text"}}), messages).response_format is None  # fmt: skip


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("messages[3].content[1].image_url", "input[2].content[1].image_url"),
        ("messages[3].content[0].image_url.url", "input[2].content[0].image_url"),
        ("messages[0]", "instructions"),
        ("messages[1].content[0].image_url", "previous_response_id"),
        ("messages", "input"),
        ("max_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format"),
        ("model", "model"),
        (None, None),
    ],
)
def test_chat_params_map_to_responses_fields(param: str | None, expected: str | None) -> None:
    sources = ["instructions", "previous_response_id", "previous_response_id", "input[2]"]
    assert responses_param(param, sources) == expected


def _stored(rid: str) -> StoredResponse:
    response = ResponseObject(id=rid, created_at=0, status="completed", model="m")
    return StoredResponse(response, ())


def test_store_lru_and_capacity() -> None:
    store = ResponseStore(2)
    store.put(_stored("a"))
    store.put(_stored("b"))
    assert store.get("a") is not None  # a is now the most recently used
    store.put(_stored("c"))
    assert (store.get("b"), len(store)) == (None, 2)
    assert store.delete("a") and not store.delete("a")
    empty = ResponseStore(0)
    empty.put(_stored("a"))
    assert empty.get("a") is None and len(empty) == 0


@pytest.mark.asyncio
async def test_closing_the_stream_aborts_the_engine_request(kimi_tokenizer: Any) -> None:
    """What a client disconnect does (EventStreamResponse closes the body generator): the
    engine generator is closed at once and the admission seat is given back."""
    engine = FakeEngine(kimi_tokenizer, script=["a", "b", "c", "d"])
    app = create_app(api_settings(), engine)
    await engine.start()
    service = app.state.responses
    request = ResponsesRequest.model_validate({"input": "hi", "stream": True})
    prepared = await service.prepare(request, "r1")
    assert service.ctx.gate.active == 1
    stream = service.stream(prepared)
    names = [(await anext(stream)).split("\n", 1)[0] for _ in range(5)]
    assert names[-1] == "event: response.output_text.delta"
    await stream.aclose()
    assert engine.closed == ["r1"] and service.ctx.gate.active == 0
    assert service.store.get(prepared.skeleton.id) is None  # never finished: not stored

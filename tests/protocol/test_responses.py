"""The Responses wire models: input normalisation, validation, the field policy, and that the
official SDK's own types parse the response object and every stream event we send."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from server.protocol.policy import ignored_fields
from server.protocol.responses import (
    ContentPartEvent,
    ErrorEvent,
    InputTokensDetails,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    ReasoningItem,
    ReasoningText,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)


def test_string_input_is_one_user_message() -> None:
    request = ResponsesRequest.model_validate({"input": "hi"})
    [item] = request.input
    assert (item.type, item.role) == ("message", "user")
    assert [(p.type, p.text) for p in item.content or []] == [("input_text", "hi")]
    assert request.store is True and request.stream is False


def test_items_the_sdk_sends_back_are_accepted() -> None:
    earlier_output: list[dict[str, Any]] = [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hmm"}],
            "status": "completed",
        },
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": []}],
        },
    ]
    request = ResponsesRequest.model_validate(
        {"input": [*earlier_output, {"role": "user", "content": "and?"}]}
    )
    assert [item.type for item in request.input] == ["reasoning", "message", "message"]


@pytest.mark.parametrize(
    "item",
    [
        {"content": "no role"},
        {"role": "user"},
        {"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]},
        {"role": "user", "content": [{"type": "input_image"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "a", "image_url": "x"}]},
        {"role": "user", "content": [{"type": "reasoning_text", "text": "a"}]},
        {"type": "reasoning", "content": [{"type": "input_text", "text": "a"}]},
        {"role": "tool", "content": "x"},
    ],
)
def test_malformed_items_are_rejected(item: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ResponsesRequest.model_validate({"input": [item]})


def test_text_format_needs_name_and_schema_for_json_schema() -> None:
    ok = {"type": "json_schema", "name": "n", "schema": {"type": "boolean"}}
    fmt = ResponsesRequest.model_validate({"input": "x", "text": {"format": ok}}).text
    assert fmt is not None and fmt.format is not None and fmt.format.schema_ == {"type": "boolean"}
    for bad in ({"type": "json_schema", "name": "n"}, {"type": "text", "schema": {}}):
        with pytest.raises(pydantic.ValidationError):
            ResponsesRequest.model_validate({"input": "x", "text": {"format": bad}})


def test_ignored_fields_are_named() -> None:
    request = ResponsesRequest.model_validate(
        {
            "input": "x",
            "top_logprobs": 2,
            "user": "u",
            "text": {"verbosity": "high"},
            "metadata": {"a": "b"},
            "store": False,
        }
    )
    assert ignored_fields(request) == ["text.verbosity", "top_logprobs", "user"]


def _response() -> ResponseObject:
    return ResponseObject(
        id="resp_1",
        created_at=1,
        status="completed",
        model="m",
        output=[
            ReasoningItem(id="rs_1", content=[ReasoningText(type="reasoning_text", text="why")]),
            OutputMessage(id="msg_1", status="completed", content=[OutputText(text="answer")]),
        ],
        usage=ResponseUsage(
            input_tokens=3,
            input_tokens_details=InputTokensDetails(),
            output_tokens=2,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=1),
            total_tokens=5,
        ),
    )


def test_the_sdk_parses_the_response_object() -> None:
    parsed = Response.model_validate(_response().model_dump(mode="json"))
    assert parsed.output_text == "answer"
    assert parsed.usage is not None and parsed.usage.output_tokens_details.reasoning_tokens == 1
    assert parsed.output[0].type == "reasoning"


def test_the_sdk_parses_every_event() -> None:
    common: dict[str, Any] = {
        "sequence_number": 1,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
    }
    events: list[StreamEvent] = [
        ResponseEvent(type="response.created", sequence_number=0, response=_response()),
        OutputItemEvent(
            type="response.output_item.added",
            sequence_number=1,
            output_index=0,
            item=_response().output[0],
        ),
        ContentPartEvent(
            type="response.content_part.added",
            part=ReasoningText(type="reasoning_text", text=""),
            **common,
        ),
        ContentPartEvent(type="response.content_part.done", part=OutputText(text="a"), **common),
        ReasoningDeltaEvent(delta="w", **common),
        ReasoningDoneEvent(text="why", **common),
        TextDeltaEvent(delta="a", **common),
        TextDoneEvent(text="a", **common),
        ErrorEvent(sequence_number=9, code="internal_error", message="boom"),
    ]
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
    for event in events:
        parsed: Any = adapter.validate_python(event.model_dump(mode="json"))
        assert parsed.type == event.type

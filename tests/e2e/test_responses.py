"""The Responses API on the real server with the official `openai` SDK: text, images, instructions,
max_output_tokens, streaming (`client.responses.stream`), text.format json_schema, the store
(previous_response_id, retrieve, delete), and errors as the SDK's exceptions."""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import (
    ResponseFormatTextJSONSchemaConfigParam,
    ResponseInputMessageContentListParam,
    ResponseTextConfigParam,
)

from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.tokenizer import TikTokenTokenizer
from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer, png

pytestmark = pytest.mark.slow

MODEL = TINY_MODEL_NAME
# A schema the grammar decides almost alone: the random tiny model can only pick a value.
VERDICT = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
VERDICT_FORMAT: ResponseFormatTextJSONSchemaConfigParam = {
    "type": "json_schema",
    "name": "verdict",
    "schema": VERDICT,
    "strict": True,
}
VERDICT_TEXT: ResponseTextConfigParam = {"format": VERDICT_FORMAT}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)


def test_text_input_and_usage(client: openai.OpenAI) -> None:
    result = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=8)
    assert result.object == "response" and result.id.startswith("resp_")
    assert result.model == MODEL and result.status in ("completed", "incomplete")
    assert isinstance(result.output_text, str)
    assert result.usage is not None and 0 < result.usage.output_tokens <= 8
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


def test_image_data_url_and_instructions(
    client: openai.OpenAI, tokenizer: TikTokenTokenizer, image_cfg: ImageProcessorConfig
) -> None:
    image = "data:image/png;base64," + base64.b64encode(png(300, 200)).decode()

    def input_tokens(with_image: bool, instructions: str | None = None) -> int:
        content: ResponseInputMessageContentListParam = [
            {"type": "input_text", "text": "What is this?"}
        ]
        if with_image:
            content.append({"type": "input_image", "image_url": image, "detail": "auto"})
        result = client.responses.create(
            model=MODEL,
            input=[{"role": "user", "content": content}],
            max_output_tokens=1,
            instructions=instructions,
        )
        assert result.usage is not None
        return result.usage.input_tokens

    text_only = input_tokens(False)
    block = len(tokenizer.encode_text("image")) + 3  # start, "image", content, end
    expected = num_image_tokens(300, 200, image_cfg) + block
    assert input_tokens(True) == text_only + expected
    # Instructions are the system turn: their text is in the prompt, token for token.
    short, long = "Be brief.", "Be brief. " * 10
    grown = len(tokenizer.encode_text(long)) - len(tokenizer.encode_text(short))
    assert input_tokens(False, long) == input_tokens(False, short) + grown


def test_small_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    result = client.responses.create(
        model=MODEL, input="Tell me a long story", max_output_tokens=2, temperature=0.0
    )
    assert result.status == "incomplete"
    assert result.incomplete_details is not None
    assert result.incomplete_details.reason == "max_output_tokens"
    assert result.usage is not None and result.usage.output_tokens == 2


def test_stream_matches_final_response(client: openai.OpenAI) -> None:
    kinds: list[str] = []
    deltas: list[str] = []
    with client.responses.stream(
        model=MODEL, input="Is the sky blue?", text=VERDICT_TEXT, temperature=0.0
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and deltas
    assert final.status == "completed" and final.output_text == "".join(deltas)
    jsonschema.validate(json.loads(final.output_text), VERDICT)
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    result = client.responses.create(
        model=MODEL,
        input="Answer yes or no.",
        text={"format": VERDICT_FORMAT},  # type: ignore[typeddict-item]
    )
    assert result.status == "completed"
    jsonschema.validate(json.loads(result.output_text), VERDICT)
    assert result.text is not None and result.text.format is not None
    assert result.text.format.type == "json_schema"


def test_store_previous_response_retrieve_delete(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=4)
    second = client.responses.create(
        model=MODEL, input="My name is Ada.", previous_response_id=first.id, max_output_tokens=4
    )
    assert first.usage is not None and second.usage is not None
    # The second prompt holds the first turn, its answer and the same input again.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.previous_response_id == first.id

    retrieved = client.responses.retrieve(first.id)
    assert retrieved.id == first.id and retrieved.output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)

    unstored = client.responses.create(model=MODEL, input="hi", max_output_tokens=1, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_unknown_previous_response_id_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_unknown")
    assert caught.value.code == "response_not_found"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "previous_response_id"


def test_unknown_field_and_tools_are_400(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", extra_body={"frobnicate": 1})
    assert caught.value.code == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=MODEL,
            input="hi",
            tools=[{"type": "function", "name": "f", "parameters": {}, "strict": True}],
        )
    assert caught.value.code == "unsupported_parameter"
    # Accepted-and-ignored fields are named in X-Ignored-Params.
    response = httpx.post(
        server.v1 + "/responses",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL, "input": "hi", "max_output_tokens": 1, "user": "u", "reasoning": {}},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-ignored-params"] == "reasoning,user"

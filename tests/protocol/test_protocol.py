"""OpenAI wire-format models: good requests, bad values, unsupported fields, responses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from server.api.errors import validation_error
from server.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    ErrorResponse,
    ModelCard,
    ModelList,
    TopLogprob,
    Usage,
)
from server.protocol.policy import ignored_fields

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields})


def chat_error(body: dict[str, Any]) -> tuple[str | None, str, str]:
    """(param, code, message) the API would answer for `body`."""
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    err = validation_error(info.value.errors())
    return err.param, err.code, err.message


def test_full_request() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "kimi",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Really."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x.example/a.png", "detail": "high"},
                        },
                        {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
                        {"type": "video_url", "video_url": {"url": "file:///v.mp4"}},
                    ],
                },
                {"role": "assistant", "content": "A cat.", "reasoning_content": "looks feline"},
                {"role": "user", "content": "Sure?"},
            ],
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 20,
            "min_p": 0.05,
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "n": 2,
            "stop": "END",
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "repetition_penalty": 1.1,
            "logprobs": True,
            "top_logprobs": 5,
            "logit_bias": {"42": -100, "7": 2.5},
            "stream": True,
            "stream_options": {"include_usage": True},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
            "user": "u1",
            "video": {"fps": 1, "max_frames": 16, "max_tokens": 4096},
            "chat_template_kwargs": {"add_generation_prompt": True},
            "include_reasoning": False,
            "tools": [],
            "tool_choice": "none",
            "modalities": ["text"],
            "store": False,
        }
    )
    user = request.messages[2]
    assert [p.type for p in user.content] == ["text", "image_url", "image_url", "video_url"]
    assert user.content[1].image_url is not None and user.content[1].image_url.detail == "high"
    assert user.content[2].image_url is not None
    assert user.content[2].image_url.url.startswith("data:")
    assert request.messages[0].text == "Be brief." and request.messages[1].role == "developer"
    assert request.messages[3].reasoning_content == "looks feline"
    assert request.stop == ["END"] and request.logit_bias == {42: -100.0, 7: 2.5}
    assert request.effective_max_tokens == 20 and request.include_usage_in_stream
    assert request.response_format is not None and request.response_format.json_schema
    assert request.response_format.json_schema.schema_ == {"type": "object"}


def test_minimal_defaults() -> None:
    request = chat()
    assert request.model is None and request.n == 1 and request.stop == []
    assert request.temperature is None and not request.stream and request.include_reasoning
    assert request.messages[0].content[0].text == "hi"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": [""]}, "stop[0]"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"x": 1}}, "logit_bias.x"),
        ({"seed": 2**64}, "seed"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"video": {"fps": 0}}, "video.fps"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
def test_out_of_range(fields: dict[str, Any], param: str) -> None:
    got_param, code, _ = chat_error({"messages": USER, **fields})
    assert (got_param, code) == (param, "invalid_value")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "user"}], "messages[0]"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "narrator", "content": "x"}], "messages[0].role"),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": 5},
                    ],
                }
            ],
            "messages[0].content[1].image_url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {}},
                    ],
                }
            ],
            "messages[0].content[1].image_url.url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}],
                }
            ],
            "messages[0].content[0].image_url.detail",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "messages[0].content[0].type",
        ),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0]"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a", "image_url": "u"}]}],
            "messages[0].content[0]",
        ),
        ([{"role": "system", "content": [{"type": "image_url", "image_url": "u"}]}], "messages[0]"),
    ],
)
def test_bad_messages(messages: list[Any], param: str) -> None:
    got_param, code, message = chat_error({"messages": messages})
    assert got_param == param
    assert code in ("invalid_value", "missing_required_parameter")
    assert message


def test_missing_messages() -> None:
    assert chat_error({"model": "m"})[:2] == ("messages", "missing_required_parameter")


@pytest.mark.parametrize(
    "fields",
    [
        {"functions": [{"name": "f"}]},
        {"function_call": "auto"},
        {"audio": {"voice": "alloy"}},
        {"modalities": ["text", "audio"]},
        {"web_search_options": {}},
    ],
)
def test_unsupported_fields_named(fields: dict[str, Any]) -> None:
    """Fields whose effect this model cannot give (audio out, web search) are refused."""
    (name,) = fields
    param, code, message = chat_error({"messages": USER, **fields})
    assert (param, code) == (name, "unsupported_parameter")
    assert name in message


def test_ignored_fields_are_accepted_and_named() -> None:
    request = chat(
        messages=[{"role": "user", "content": "hi", "name": "ann"}],
        reasoning_effort="high",
        verbosity="low",
        safety_identifier="s",
        prompt_cache_key="k",
        service_tier="flex",
        store=True,
        metadata={"a": "b"},
        user="u",
        parallel_tool_calls=False,
        prediction={"type": "content", "content": "x"},
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        structured_outputs={"regex": "a+", "whitespace_pattern": " "},
    )
    assert ignored_fields(request) == [
        "messages[].name",
        "metadata",
        "parallel_tool_calls",
        "prediction",
        "prompt_cache_key",
        "reasoning_effort",
        "safety_identifier",
        "service_tier",
        "store",
        "stream_options.include_obfuscation",
        "structured_outputs.whitespace_pattern",
        "user",
        "verbosity",
    ]
    assert ignored_fields(chat(messages=USER, temperature=0.5)) == []


def test_vllm_extras_accepted() -> None:
    request = chat(
        messages=[*USER, {"role": "assistant", "content": "The answer is"}],
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        include_stop_str_in_output=True,
        truncate_prompt_tokens=-1,
        structured_outputs={"choice": ["a", "b"]},
        continue_final_message=True,
        add_generation_prompt=False,
        echo=True,
        priority=-3,
        cache_salt="tenant-1",
        mm_processor_kwargs={"in_token_limit": 256},
    )
    assert request.structured_outputs is not None and request.structured_outputs.kind == "choice"
    assert not request.generation_prompt and request.continue_final_message
    assert request.mm_processor_kwargs is not None
    assert request.mm_processor_kwargs.in_token_limit == 256


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"json": {}}, "response_format": {"type": "json_object"}}, None),
        ({"chat_template_kwargs": {"enable_thinking": True}}, "chat_template_kwargs"),
        ({"continue_final_message": True}, None),
        ({"mm_processor_kwargs": {"max_pixels": 10}}, "mm_processor_kwargs.max_pixels"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ],
)
def test_vllm_extras_checked(fields: dict[str, Any], param: str | None) -> None:
    got_param, code, message = chat_error({"messages": USER, **fields})
    assert got_param == param and message
    assert code in ("invalid_value", "unsupported_parameter", "unknown_parameter")


def test_tool_messages_and_calls() -> None:
    request = chat(
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
    )
    assert request.forced_tool == "f" and request.messages[2].role == "tool"
    assert chat(messages=USER, tools=[], tool_choice="required").forced_tool == "*"
    assert chat_error({"messages": [{"role": "tool", "content": "x"}]})[0] == "messages[0]"
    param, _, _ = chat_error({"messages": [{"role": "function", "content": "x", "name": "f"}]})
    assert param == "messages[0].role"


def test_unknown_field_rejected() -> None:
    param, code, message = chat_error({"messages": USER, "frobnicate": 1})
    assert (param, code) == ("frobnicate", "unknown_parameter")
    assert "frobnicate" in message


def test_echoed_assistant_message_accepted() -> None:
    echoed = ChatCompletionMessage(content="A cat.").model_dump()
    echoed.update({"annotations": None, "audio": None, "function_call": None, "tool_calls": None})
    request = chat(messages=[*USER, echoed, {"role": "user", "content": "and?"}])
    assert request.messages[1].text == "A cat."


@pytest.mark.parametrize(
    ("prompt", "normalized"),
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_completion_prompt_shapes(prompt: Any, normalized: list[Any]) -> None:
    assert CompletionRequest.model_validate({"prompt": prompt}).prompt == normalized


@pytest.mark.parametrize("prompt", [[], [1, "a"], [[]], [-1], [True], 5, None, [[1], "a"]])
def test_completion_bad_prompt(prompt: Any) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"prompt": prompt})
    assert validation_error(info.value.errors()).param == "prompt"


def test_completion_fields() -> None:
    request = CompletionRequest.model_validate(
        {"prompt": "x", "logprobs": 5, "echo": True, "best_of": 1, "stop": ["\n"]}
    )
    assert request.logprobs == 5 and request.stop == ["\n"] and request.echo
    cases: list[tuple[dict[str, Any], str]] = [
        ({"logprobs": 6}, "logprobs"),
        ({"suffix": "s"}, "suffix"),
        ({"best_of": 3}, "best_of"),
    ]
    for fields, param in cases:
        with pytest.raises(ValidationError) as info:
            CompletionRequest.model_validate({"prompt": "x", **fields})
        assert validation_error(info.value.errors()).param == param


def test_responses_serialise_like_openai() -> None:
    usage = Usage.build(10, 5, cached=4, reasoning=3)
    assert usage.total_tokens == 15
    logprobs = ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token="a",
                logprob=float("-inf"),
                bytes=[97],
                top_logprobs=[TopLogprob(token="a", logprob=float("nan"))],
            )
        ]
    )
    completion = ChatCompletion(
        id="chatcmpl-1",
        created=1,
        model="m",
        usage=usage,
        choices=[
            ChatCompletionChoice(
                index=0,
                finish_reason="stop",
                logprobs=logprobs,
                message=ChatCompletionMessage(content="hi", reasoning_content="r"),
            )
        ],
    )
    data = json.loads(completion.model_dump_json())
    assert data["object"] == "chat.completion"
    assert data["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert data["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    token = data["choices"][0]["logprobs"]["content"][0]
    assert token["logprob"] == -9999.0 and token["top_logprobs"][0]["logprob"] == -9999.0
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hi",
        "reasoning_content": "r",
        "reasoning": None,
        "refusal": None,
    }

    chunk = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[
            ChatCompletionChunkChoice(
                index=0, delta=DeltaMessage(reasoning_content="x", reasoning="x")
            )
        ],
    )
    chunk_data = json.loads(chunk.model_dump_json())
    assert chunk_data["choices"][0]["delta"] == {"reasoning_content": "x", "reasoning": "x"}
    assert chunk_data["choices"][0]["finish_reason"] is None  # present, as OpenAI sends it

    legacy = Completion(
        id="cmpl-1",
        created=1,
        model="m",
        choices=[CompletionChoice(index=0, text="t", finish_reason="length")],
    )
    assert json.loads(legacy.model_dump_json())["object"] == "text_completion"
    models = ModelList(data=[ModelCard(id="kimi", created=1, max_model_len=4096)])
    assert json.loads(models.model_dump_json())["data"][0]["object"] == "model"


def test_error_envelope_shape() -> None:
    body = {
        "error": {
            "message": "m",
            "type": "invalid_request_error",
            "param": "n",
            "code": "invalid_value",
        }
    }
    assert ErrorResponse.model_validate(body).model_dump() == body

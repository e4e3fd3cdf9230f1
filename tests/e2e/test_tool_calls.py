"""Forced tool calls through the real server and the official `openai` SDK: a named function or
`required`, streamed and not; arguments always validate against the tool's schema (they are
generated under that schema); tool turns in the history; clear 400s for what cannot work."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, RunningServer

pytestmark = pytest.mark.slow

MODEL = TINY_MODEL_NAME
WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_ARGS = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER_ARGS},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_ARGS}},
]
SCHEMAS = {"get_weather": WEATHER_ARGS, "get_time": TIME_ARGS}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


def test_named_function(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_ARGS)
    assert " " not in call.function.arguments  # compact, as OpenAI's


def test_required_picks_a_listed_tool(client: openai.OpenAI) -> None:
    for seed in range(3):
        result = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, seed=seed
        )
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("tool_choice", ["named", "required"])
def test_streamed_call_assembles_like_the_plain_one(
    client: openai.OpenAI, tool_choice: str
) -> None:
    choice: Any = (
        {"type": "function", "function": {"name": "get_time"}}
        if tool_choice == "named"
        else "required"
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=80, stream=True
    )
    ids, names, arguments, finishes = set(), [], "", []
    for chunk in stream:
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                assert delta.index == 0
                if delta.id:
                    ids.add(delta.id)
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
            if c.finish_reason:
                finishes.append(c.finish_reason)
    assert len(ids) == 1 and len(names) == 1 and finishes == ["tool_calls"]
    jsonschema.validate(json.loads(arguments), SCHEMAS[names[0]])
    if tool_choice == "named":
        assert names == ["get_time"]


def test_tool_results_in_the_history(client: openai.OpenAI, server: RunningServer) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    history: list[ChatCompletionMessageParam] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": '{"high": 21}'},
    ]
    follow = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4)
    assert follow.usage is not None
    assert follow.choices[0].finish_reason in ("stop", "length")
    # The prompt, as rendered: the call as JSON in the assistant turn, the result as a `tool` turn.
    auth = {"Authorization": f"Bearer {API_KEY}"}
    ids = httpx.post(
        server.base_url + "/tokenize", json={"messages": history}, headers=auth
    ).json()["tokens"]
    assert len(ids) == follow.usage.prompt_tokens
    text = httpx.post(server.base_url + "/detokenize", json={"tokens": ids}, headers=auth).json()
    arguments = json.dumps(json.loads(call.function.arguments), ensure_ascii=False)
    assert (
        f'<|im_assistant|>assistant<|im_middle|>{{"name": "get_weather", "arguments": {arguments}}}<|im_end|>'
        in text["prompt"]
    )
    assert 'tool<|im_middle|>{"high": 21}<|im_end|><|im_assistant|>' in text["prompt"]


def test_what_cannot_work_is_a_clear_400(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": TOOLS}, "tool_choice"),  # "auto" by default: no native tool format
        ({"tools": TOOLS, "tool_choice": "auto"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tools"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **fields)
        assert info.value.body["param"] == param, fields  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, max_tokens=4, stream=True
        )
    assert "tool_choice" in info.value.message
    none = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=2
    )
    assert not none.choices[0].message.tool_calls

"""The field policy through the real server and the official `openai` SDK: ignored fields are
named in X-Ignored-Params, vLLM's extra fields change the output as documented (README: field
policy), tokenize counts equal prompt_tokens, CORS preflight with the OpenAI JS SDK's headers."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from server.settings import TINY_MODEL_NAME
from tests.e2e.conftest import API_KEY, CORS_ORIGIN, RunningServer, png, video

pytestmark = pytest.mark.slow

MODEL = TINY_MODEL_NAME
USER = [{"role": "user", "content": "Tell me something."}]
# The random tiny model may sample <|im_end|> at any step; `ignore_eos` keeps lengths fixed.
FULL = {"ignore_eos": True}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as c:
        yield c


def chat(client: openai.OpenAI, **fields: Any) -> Any:
    """A chat completion; fields outside the SDK's signature go through `extra_body`."""
    known = {"messages", "max_tokens", "temperature", "stream", "response_format", "tools"}
    known |= {"tool_choice", "logit_bias", "stop", "n", "seed"}
    extra = {k: v for k, v in fields.items() if k not in known}
    args = {k: v for k, v in fields.items() if k in known}
    args.setdefault("messages", USER)
    return client.chat.completions.create(model=MODEL, extra_body=extra or None, **args)


def special_id(server: RunningServer, token: str) -> int:
    config = json.loads((server.tiny_dir / "tokenizer_config.json").read_text())
    return next(int(i) for i, t in config["added_tokens_decoder"].items() if t["content"] == token)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# -- ignored fields ------------------------------------------------------------------------------


def test_ignored_fields_are_named_in_a_header(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is it?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": data_url(png(64, 64)), "detail": "original"},
                    },
                ],
            }
        ],
        "max_tokens": 2,
        "reasoning_effort": "low",
        "verbosity": "low",
        "safety_identifier": "s-1",
        "prompt_cache_key": "k-1",
        "service_tier": "flex",
        "store": True,
        "metadata": {"team": "x"},
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    ignored = response.headers["X-Ignored-Params"].split(",")
    assert set(ignored) == {
        "reasoning_effort",
        "verbosity",
        "safety_identifier",
        "prompt_cache_key",
        "service_tier",
        "store",
        "metadata",
        "user",
        "stream_options.include_obfuscation",
    }
    assert response.text.rstrip().endswith("data: [DONE]")
    plain = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 1}
    )
    assert "X-Ignored-Params" not in plain.headers
    legacy = http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1, "user": "u"}
    )
    assert legacy.headers["X-Ignored-Params"] == "user"


def test_unknown_field_is_still_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, max_tokens=1, frobnicate=True)
    assert info.value.body["code"] == "unknown_parameter"  # type: ignore[index]
    assert info.value.body["param"] == "frobnicate"  # type: ignore[index]


# -- vLLM's extra fields -------------------------------------------------------------------------


def test_skip_and_spaces_between_special_tokens(
    client: openai.OpenAI, server: RunningServer
) -> None:
    start = special_id(server, "<|media_start|>")
    forced = {"logit_bias": {str(start): 100}, "max_tokens": 3, "temperature": 0.0, **FULL}
    hidden = chat(client, **forced).choices[0].message.content
    assert "<|media_start|>" not in hidden
    shown = chat(client, skip_special_tokens=False, **forced).choices[0].message.content
    assert shown.count("<|media_start|>") == 3
    joined = (
        chat(client, skip_special_tokens=False, spaces_between_special_tokens=False, **forced)
        .choices[0]
        .message.content
    )
    assert joined == "<|media_start|>" * 3
    assert shown != joined  # spaced: the tokens are separated


def test_structured_outputs_choice_regex_json_grammar(client: openai.OpenAI) -> None:
    for seed in range(3):
        choice = chat(
            client, max_tokens=8, seed=seed, structured_outputs={"choice": ["red", "blue"]}
        )
        assert choice.choices[0].message.content in ("red", "blue")
    # No ignore_eos with a constraint: once the pattern is complete only the end may follow.
    regex = chat(client, max_tokens=12, structured_outputs={"regex": "[0-9]{3}-[a-z]{2}"})
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", regex.choices[0].message.content)
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    as_json = chat(client, max_tokens=20, structured_outputs={"json": schema})
    assert isinstance(json.loads(as_json.choices[0].message.content)["ok"], bool)
    grammar = chat(client, max_tokens=8, structured_outputs={"grammar": 'root ::= "yes" | "no"'})
    assert grammar.choices[0].message.content in ("yes", "no")


def test_structural_tag_is_honoured(client: openai.OpenAI) -> None:
    tag = {
        "type": "structural_tag",
        "format": {"type": "const_string", "value": "<done>"},
    }
    result = chat(client, max_tokens=16, structured_outputs={"structural_tag": json.dumps(tag)})
    assert result.choices[0].message.content == "<done>"


def test_bad_constraints_are_400s_before_streaming(client: openai.OpenAI) -> None:
    for structured, param in (
        ({"regex": "(unclosed"}, "structured_outputs"),
        ({"grammar": "root ::= ("}, "structured_outputs"),
        ({"structural_tag": "{not json"}, "structured_outputs"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, max_tokens=4, stream=True, structured_outputs=structured)
        assert info.value.body["param"] == param  # type: ignore[index]


def test_json_output_is_compact(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "array", "items": {"type": "boolean"}},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    for fmt in (
        {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
        {"type": "json_object"},
    ):
        result = chat(client, max_tokens=40, response_format=fmt, seed=1)
        text = result.choices[0].message.content
        assert not re.search(r"\s{2,}|\n", text), text  # no free whitespace between tokens


def test_include_stop_str_in_output(client: openai.OpenAI) -> None:
    forced = {"structured_outputs": {"regex": "abcXdef"}, "max_tokens": 12, "stop": ["X"]}
    assert chat(client, **forced).choices[0].message.content == "abc"
    kept = chat(client, include_stop_str_in_output=True, **forced)
    assert kept.choices[0].message.content == "abcX"


def test_truncate_prompt_tokens(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "word " * 200}]
    full = chat(client, messages=long, max_tokens=1)
    cut = chat(client, messages=long, max_tokens=1, truncate_prompt_tokens=20)
    assert full.usage.prompt_tokens > 20 and cut.usage.prompt_tokens == 20
    image = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png(200, 200))}},
                {"type": "text", "text": "hi"},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, messages=image, max_tokens=1, truncate_prompt_tokens=5)
    assert info.value.body["param"] == "truncate_prompt_tokens"  # type: ignore[index]


def test_generation_prompt_continue_and_echo(client: openai.OpenAI, http: httpx.Client) -> None:
    prefix = "The answer is"
    history = [*USER, {"role": "assistant", "content": prefix}]
    normal = chat(client, messages=USER, max_tokens=1).usage.prompt_tokens
    bare = chat(client, messages=USER, max_tokens=1, add_generation_prompt=False)
    via_kwargs = chat(
        client, messages=USER, max_tokens=1, chat_template_kwargs={"add_generation_prompt": False}
    )
    header = http.post("/tokenize", json={"prompt": "assistant"}).json()["count"] + 2
    assert bare.usage.prompt_tokens == via_kwargs.usage.prompt_tokens == normal - header
    cont = chat(
        client,
        messages=history,
        max_tokens=4,
        add_generation_prompt=False,
        continue_final_message=True,
        echo=True,
        **FULL,
    )
    assert cont.choices[0].message.content.startswith(prefix)
    tokens = http.post(
        "/tokenize",
        json={"messages": history, "add_generation_prompt": False, "continue_final_message": True},
    ).json()
    assert tokens["count"] == cont.usage.prompt_tokens
    tail = http.post("/tokenize", json={"prompt": prefix}).json()["tokens"]
    assert tokens["tokens"][-len(tail) :] == tail  # the turn is left open after the prefix
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, messages=USER, max_tokens=1, chat_template_kwargs={"enable_thinking": True})
    assert info.value.body["param"] == "chat_template_kwargs"  # type: ignore[index]


def test_legacy_echo(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=3, echo=True, extra_body=FULL
    )
    assert result.choices[0].text.startswith("Once upon") and len(result.choices[0].text) > 9
    stream = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=3, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices).startswith("Once upon")


def test_cache_salt_and_priority(client: openai.OpenAI) -> None:
    """The salt reaches the engine (tests/api checks the value it receives); on this CPU engine
    MLA turns prefix caching off, so it cannot change the cached-token count here. `priority`
    needs --scheduling-policy priority (tests/engine/test_vllm_check.py), which this server
    does not run: a clear 400 before any output."""
    greedy = {"max_tokens": 4, "temperature": 0.0, **FULL}
    plain = chat(client, **greedy).choices[0].message.content
    salted = chat(client, cache_salt="tenant-a", **greedy)
    assert salted.choices[0].message.content == plain
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, priority=-2, stream=True, **greedy)
    assert info.value.body["param"] == "priority"  # type: ignore[index]


def test_mm_processor_kwargs_budget(client: openai.OpenAI) -> None:
    image = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": data_url(png(640, 480))}}],
        }
    ]
    full = chat(client, messages=image, max_tokens=1).usage.prompt_tokens
    small = chat(client, messages=image, max_tokens=1, mm_processor_kwargs={"in_token_limit": 64})
    assert small.usage.prompt_tokens < full
    assert small.usage.prompt_tokens <= full - (640 // 28) * (480 // 28) + 16


# -- tokenize ------------------------------------------------------------------------------------


def _image(width: int, height: int) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(png(width, height))}}


@pytest.mark.parametrize(
    "content",
    [
        "just text",
        [_image(96, 64), {"type": "text", "text": "one image"}],
        [_image(96, 64), _image(40, 300), _image(500, 120), {"type": "text", "text": "three"}],
        [
            {"type": "video_url", "video_url": {"url": data_url(video("mp4"), "video/mp4")}},
            {"type": "text", "text": "a video"},
        ],
    ],
    ids=["text", "one-image", "three-images", "video"],
)
def test_tokenize_counts_equal_prompt_tokens(
    client: openai.OpenAI, http: httpx.Client, content: Any
) -> None:
    messages = [{"role": "user", "content": content}]
    counted = http.post("/tokenize", json={"model": MODEL, "messages": messages}).json()
    used = chat(client, messages=messages, max_tokens=1).usage.prompt_tokens
    assert counted["count"] == used == len(counted["tokens"])
    assert counted["max_model_len"] > used


def test_tokenize_prompt_and_detokenize(client: openai.OpenAI, http: httpx.Client) -> None:
    counted = http.post(
        "/tokenize", json={"prompt": "Hello, world", "return_token_strs": True}
    ).json()
    used = client.completions.create(model=MODEL, prompt="Hello, world", max_tokens=1)
    assert used.usage is not None and counted["count"] == used.usage.prompt_tokens
    assert "".join(counted["token_strs"]) == "Hello, world"
    back = http.post("/detokenize", json={"tokens": counted["tokens"]}).json()
    assert back == {"prompt": "Hello, world"}
    bad = http.post("/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    both = http.post("/tokenize", json={"prompt": "x", "messages": USER})
    assert both.status_code == 400 and "error" in both.json()


# -- CORS ----------------------------------------------------------------------------------------

# What the OpenAI JS SDK (openai-node) sends with a browser request.
JS_SDK_HEADERS = (
    "authorization,content-type,openai-organization,openai-project,x-stainless-arch,"
    "x-stainless-lang,x-stainless-os,x-stainless-package-version,x-stainless-retry-count,"
    "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)


def test_cors_preflight_with_the_js_sdk_headers(server: RunningServer) -> None:
    response = httpx.options(
        server.v1 + "/chat/completions",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": JS_SDK_HEADERS,
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    allowed = response.headers["access-control-allow-headers"].lower()
    assert all(h in allowed for h in JS_SDK_HEADERS.split(","))
    other = httpx.options(
        server.v1 + "/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers
    real = httpx.post(
        server.v1 + "/chat/completions",
        headers={"Origin": CORS_ORIGIN, "Authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL, "messages": USER, "max_tokens": 1, "user": "u"},
        timeout=60,
    )
    exposed = real.headers["access-control-expose-headers"].lower()
    assert (
        "x-request-id" in exposed and "x-ignored-params" in exposed and "x-video-frames" in exposed
    )

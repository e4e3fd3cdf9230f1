"""Sampling defaults (request > preset > generation_config > OpenAI) and the context check."""

from __future__ import annotations

import pytest

from server.engine.contract import ModelInfo, OutputConstraint
from server.errors import ContextLengthExceeded
from server.protocol.chat import ChatCompletionRequest
from server.serving.sampling import generation_defaults, max_output_tokens, sampling_options
from server.settings import load_settings

MESSAGES = [{"role": "user", "content": "hi"}]


def _request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **fields})


def _model(**defaults: object) -> ModelInfo:
    return ModelInfo(root="r", max_model_len=100, reasoning=False, generation_defaults=defaults)


def test_defaults_priority() -> None:
    settings = load_settings({"preset": "kimi-vl-a3b-thinking"})  # temperature 0.6
    defaults = generation_defaults(settings, _model(temperature=0.3, top_p=0.9, top_k=20))
    assert defaults["temperature"] == 0.6  # preset beats generation_config.json
    assert defaults["top_p"] == 0.9 and defaults["top_k"] == 20  # checkpoint fills the rest
    assert defaults["min_p"] == 0.0 and defaults["max_tokens"] == 4096

    options = sampling_options(_request(), defaults, max_tokens=10)
    assert (options.temperature, options.top_p, options.top_k) == (0.6, 0.9, 20)
    options = sampling_options(_request(temperature=0.0, top_k=-1), defaults, max_tokens=10)
    assert (options.temperature, options.top_k) == (0.0, -1)


def test_openai_defaults_without_preset_or_checkpoint_values() -> None:
    defaults = generation_defaults(load_settings({"model": "x"}), _model())
    options = sampling_options(_request(), defaults, max_tokens=5)
    assert (options.temperature, options.top_p, options.repetition_penalty) == (1.0, 1.0, 1.0)


def test_request_fields_pass_through() -> None:
    request = _request(
        n=3,
        seed=7,
        stop=["x", "y"],
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        logit_bias={"12": 5},
        min_tokens=50,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": {"type": "object"}},
        },
    )
    options = sampling_options(request, {}, max_tokens=20, logprobs=True, top_logprobs=2)
    assert (options.n, options.seed, options.stop) == (3, 7, ("x", "y"))
    assert (options.presence_penalty, options.frequency_penalty) == (0.5, -0.5)
    assert options.repetition_penalty == 1.2 and options.logit_bias == {12: 5}
    assert options.min_tokens == 20  # never above max_tokens
    assert options.constraint == OutputConstraint("json", {"type": "object"})
    assert options.logprobs and options.top_logprobs == 2
    json_object = _request(response_format={"type": "json_object"})
    assert sampling_options(json_object, {}, max_tokens=1).constraint == OutputConstraint(
        "json_object", True
    )


@pytest.mark.parametrize(
    ("structured", "expected"),
    [
        ({"json": {"type": "integer"}}, OutputConstraint("json", {"type": "integer"})),
        ({"regex": "[ab]+"}, OutputConstraint("regex", "[ab]+")),
        ({"choice": ["yes", "no"]}, OutputConstraint("choice", ("yes", "no"))),
        ({"grammar": 'root ::= "x"'}, OutputConstraint("grammar", 'root ::= "x"')),
        ({"json_object": True}, OutputConstraint("json_object", True)),
    ],
)
def test_structured_outputs_become_one_constraint(
    structured: dict[str, object], expected: OutputConstraint
) -> None:
    options = sampling_options(_request(structured_outputs=structured), {}, max_tokens=1)
    assert options.constraint == expected


def test_vllm_extras_reach_the_engine_options() -> None:
    request = _request(
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        include_stop_str_in_output=True,
    )
    options = sampling_options(request, {}, max_tokens=1)
    assert not options.skip_special_tokens and not options.spaces_between_special_tokens
    assert options.include_stop_str_in_output
    assert sampling_options(_request(), {}, max_tokens=1).skip_special_tokens


def test_max_tokens_room_and_errors() -> None:
    assert max_output_tokens(None, 30, 100, None, param="messages") == 70
    assert max_output_tokens(None, 30, 100, 16, param="messages") == 16
    assert max_output_tokens(None, 95, 100, 16, param="messages") == 5
    assert max_output_tokens(70, 30, 100, 16, param="messages") == 70
    with pytest.raises(ContextLengthExceeded) as info:
        max_output_tokens(71, 30, 100, None, param="messages")
    assert info.value.param == "max_tokens" and "101 tokens" in info.value.message
    with pytest.raises(ContextLengthExceeded) as info:
        max_output_tokens(None, 100, 100, None, param="messages")
    assert info.value.param == "messages" and info.value.code == "context_length_exceeded"

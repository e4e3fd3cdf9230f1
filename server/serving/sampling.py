"""OpenAI sampling fields -> engine SamplingOptions, with defaults and the context-length check.

A field the request leaves out takes, in order: the preset / operator setting
(`default_temperature`, `default_top_p`, `default_max_tokens`), then the checkpoint's
generation_config.json (as vLLM reads it), then OpenAI's default. `max_tokens` that is not
given becomes the room left in the context (capped by the defaults above); one that is given
must fit, or the request is rejected before it reaches the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.engine.contract import ModelInfo, OutputConstraint, SamplingOptions
from server.errors import ContextLengthExceeded, InvalidRequest
from server.protocol.common import SamplingRequest
from server.settings import Settings

# OpenAI's defaults for fields neither the request, the preset nor the checkpoint sets.
_OPENAI_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


def generation_defaults(settings: Settings, model: ModelInfo) -> dict[str, Any]:
    """Defaults for absent request fields: settings/preset over generation_config.json."""
    defaults = dict(_OPENAI_DEFAULTS)
    defaults.update({k: v for k, v in model.generation_defaults.items() if v is not None})
    preset = {
        "temperature": settings.default_temperature,
        "top_p": settings.default_top_p,
        "max_tokens": settings.default_max_tokens,
    }
    defaults.update({k: v for k, v in preset.items() if v is not None})
    return defaults


def max_output_tokens(
    requested: int | None,
    num_prompt_tokens: int,
    max_model_len: int,
    default: int | None,
    *,
    param: str,
) -> int:
    """Output budget for the request; raises ContextLengthExceeded when it cannot fit."""
    room = max_model_len - num_prompt_tokens
    if room <= 0:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {num_prompt_tokens} tokens (text and media), which leaves no room "
            "for the completion. Please shorten the messages or send fewer or smaller images, "
            "videos or document pages.",
            param=param,
        )
    if requested is not None:
        if requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {num_prompt_tokens + requested} tokens ({num_prompt_tokens} in the "
                f"prompt, {requested} for the completion). Please reduce the prompt or the "
                "completion length.",
                param="max_tokens",
            )
        return requested
    return min(default, room) if default else room


def check_token_ids(request: SamplingRequest, vocab_size: int) -> None:
    """Token ids in `logit_bias` / `stop_token_ids` must exist (checked before streaming starts,
    so a bad id is a 400 rather than an error event)."""
    for name, ids in (
        ("logit_bias", list(request.logit_bias or {})),
        ("stop_token_ids", request.stop_token_ids),
    ):
        bad = [i for i in ids if i >= vocab_size]
        if bad:
            raise InvalidRequest(
                f"Token id {bad[0]} in '{name}' is outside the vocabulary (size {vocab_size}).",
                param=name,
                code="invalid_value",
            )


def output_constraint(request: SamplingRequest) -> OutputConstraint | None:
    """`response_format` (json_schema, json_object) or vLLM's `structured_outputs`, as one
    engine constraint (the request model allows at most one of the two)."""
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        return OutputConstraint("json", fmt.json_schema.schema_)
    if fmt is not None and fmt.type == "json_object":
        return OutputConstraint("json_object", True)
    structured = request.structured_outputs
    if structured is None:
        return None
    value = structured.value
    return OutputConstraint(structured.kind, tuple(value) if structured.kind == "choice" else value)  # type: ignore[arg-type]


def sampling_options(
    request: SamplingRequest,
    defaults: Mapping[str, Any],
    *,
    max_tokens: int,
    logprobs: bool = False,
    top_logprobs: int = 0,
    constraint: OutputConstraint | None = None,
) -> SamplingOptions:
    """The engine's SamplingOptions for one request (max_tokens already decided). `constraint`
    (a forced tool call's) replaces the request's own output constraint."""

    def pick(name: str) -> Any:
        value = getattr(request, name)
        return value if value is not None else defaults.get(name, _OPENAI_DEFAULTS.get(name))

    return SamplingOptions(
        n=request.n,
        max_tokens=max_tokens,
        min_tokens=min(request.min_tokens, max_tokens),
        temperature=float(pick("temperature")),
        top_p=float(pick("top_p")),
        top_k=int(pick("top_k")),
        min_p=float(pick("min_p")),
        seed=request.seed,
        stop=tuple(request.stop),
        stop_token_ids=tuple(request.stop_token_ids),
        ignore_eos=request.ignore_eos,
        presence_penalty=float(pick("presence_penalty")),
        frequency_penalty=float(pick("frequency_penalty")),
        repetition_penalty=float(pick("repetition_penalty")),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        logit_bias=dict(request.logit_bias) if request.logit_bias else None,
        constraint=constraint or output_constraint(request),
        skip_special_tokens=request.skip_special_tokens,
        spaces_between_special_tokens=request.spaces_between_special_tokens,
        include_stop_str_in_output=request.include_stop_str_in_output,
    )

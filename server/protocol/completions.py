"""OpenAI legacy completions wire format (`POST /v1/completions`): raw prompt in, text out."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from server.protocol.common import FinishReason, SamplingRequest, Usage, unsupported

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's cap for the legacy endpoint


def _normalize_prompt(value: Any) -> Any:
    """str | list[str] | list[int] | list[list[int]] -> list[str] | list[list[int]].

    Checked here rather than with a pydantic union so an error names `prompt`, not a union tag.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            return [value]
        if all(
            isinstance(v, list)
            and v
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)
            for v in value
        ):
            return value
    raise PydanticCustomError(
        "invalid_prompt",
        "prompt must be a non-empty string, list of strings, list of token ids "
        "or list of token-id lists",
    )


Prompt = Annotated[
    list[str] | list[list[int]],
    BeforeValidator(
        _normalize_prompt,
        json_schema_input_type=str | list[str] | list[int] | list[list[int]],
    ),
]


class CompletionRequest(SamplingRequest):
    prompt: Prompt
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False  # the prompt text goes before each choice's text
    suffix: Annotated[str | None, unsupported("")] = None  # Kimi-VL has no fill-in-the-middle
    best_of: Annotated[int | None, unsupported(1)] = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """Both the full response and each stream chunk (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None

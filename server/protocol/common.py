"""Wire-format pieces shared by chat and legacy completions: sampling fields, usage, logprobs.

Request models are strict: unknown fields are rejected (as OpenAI does) and fields this server
knows but cannot honour (tools, audio, …) are rejected with an `unsupported_parameter` error that
names the field, instead of being silently ignored.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_N = 16  # choices per request; each choice is a full sequence in the engine
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
LOGPROB_FLOOR = -9999.0  # OpenAI's stand-in for -inf (JSON has no infinities)

UNSUPPORTED_PARAMETER = "unsupported_parameter"


def unsupported(*harmless: Any) -> AfterValidator:
    """Validator for a known OpenAI field this server cannot honour.

    Values in `harmless` (plus None) are accepted because they mean "feature off" — clients and
    SDKs sometimes send e.g. `tools: []` or `store: false` unconditionally.
    """

    def reject(value: Any, info: ValidationInfo) -> Any:
        if value is None or any(value == ok for ok in harmless):
            return value
        raise PydanticCustomError(
            UNSUPPORTED_PARAMETER,
            "'{param}' is not supported by this server",
            {"param": info.field_name},
        )

    return AfterValidator(reject)


def _normalize_stop(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


StopList = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    BeforeValidator(_normalize_stop),
    Field(max_length=MAX_STOP_SEQUENCES),
]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
BiasValue = Annotated[float, Field(ge=-100.0, le=100.0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    # `schema` would shadow a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema_only_for_json_schema(
        cls, value: JsonSchemaFormat | None, info: ValidationInfo
    ) -> JsonSchemaFormat | None:
        if value is not None and info.data.get("type") != "json_schema":
            raise ValueError("'json_schema' is only allowed with type 'json_schema'")
        return value

    @model_validator(mode="after")
    def _json_schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object")
        return self


class SamplingRequest(BaseModel):
    """Fields common to chat and legacy completions, with OpenAI's ranges.

    None means "not given": the serving layer fills in the preset default or the engine default.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM convention: 0 or -1 = disabled
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: StopList = Field(default_factory=list)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    # JSON object keys are strings; lax validation turns "1234" into the token id 1234.
    logit_bias: dict[Annotated[int, Field(ge=0)], BiasValue] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None

    # Known OpenAI fields without an effect here; accepted only in their "off" form.
    store: Annotated[bool | None, unsupported(False)] = None
    metadata: dict[str, str] | None = None  # only meaningful with `store`; ignored
    service_tier: Annotated[str | None, unsupported("auto", "default")] = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return value

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# -- responses -------------------------------------------------------------------------------


def _finite_logprob(value: float) -> float:
    return LOGPROB_FLOOR if math.isnan(value) or value < LOGPROB_FLOOR else value


Logprob = Annotated[float, AfterValidator(_finite_logprob)]
FinishReason = Literal["stop", "length", "content_filter"]


class TopLogprob(BaseModel):
    token: str
    logprob: Logprob
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: Logprob
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @classmethod
    def build(
        cls, prompt_tokens: int, completion_tokens: int, *, cached: int = 0, reasoning: int = 0
    ) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning),
        )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kimi-vl-server"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)

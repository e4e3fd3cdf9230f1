"""Wire-format pieces shared by chat and legacy completions: sampling fields, usage, logprobs.

Request models are strict: unknown fields are rejected (as OpenAI does). Every known field is
honoured, accepted and ignored because it cannot apply to this model (`ignored()`, reported in
the `X-Ignored-Params` header), or — where ignoring it would silently change what the client
asked for (audio output, web search) — rejected with an `unsupported_parameter` error that names
it. vLLM's documented extra fields are honoured (README: field policy).
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

from server.protocol.policy import ignored

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
    BeforeValidator(_normalize_stop, json_schema_input_type=str | list[str] | None),
    Field(max_length=MAX_STOP_SEQUENCES),
]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
BiasValue = Annotated[float, Field(ge=-100.0, le=100.0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = ignored("no obfuscation padding is added to stream events")


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extra: exactly one constraint on the output (xgrammar)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, min_length=1)
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    grammar: str | None = Field(default=None, min_length=1)
    json_object: bool | None = None
    structural_tag: dict[str, Any] | str | None = None
    disable_any_whitespace: bool | None = ignored("engine-wide: see --json-whitespace")
    disable_additional_properties: bool | None = ignored("not used by the xgrammar backend")
    whitespace_pattern: str | None = ignored("not used by the xgrammar backend")

    @model_validator(mode="after")
    def _one_constraint(self) -> StructuredOutputs:
        given = [k for k in CONSTRAINTS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            names = ", ".join(f"'{k.rstrip('_')}'" for k in CONSTRAINTS)
            raise ValueError(f"set exactly one of {names} (got {len(given)})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in CONSTRAINTS if getattr(self, k) not in (None, False)).rstrip("_")

    @property
    def value(self) -> Any:
        return getattr(self, self.kind if self.kind != "json" else "json_")


CONSTRAINTS = ("json_", "regex", "choice", "grammar", "json_object", "structural_tag")


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

    # OpenAI fields that cannot apply to a self-hosted model.
    user: str | None = ignored("no per-user abuse tracking")
    safety_identifier: str | None = ignored("no per-user abuse tracking")
    prompt_cache_key: str | None = ignored("prefix caching needs no key (see cache_salt)")
    store: bool | None = ignored("completions are not stored for distillation or evals")
    metadata: dict[str, str] | None = ignored("only meaningful with store")
    service_tier: str | None = ignored("one service tier")

    # vLLM's extra fields (clients send them through the SDK's `extra_body`).
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    structured_outputs: StructuredOutputs | None = None
    priority: int = 0
    cache_salt: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_output_constraint(self) -> SamplingRequest:
        fmt = self.response_format
        if self.structured_outputs is not None and fmt is not None and fmt.type != "text":
            raise ValueError("use either 'response_format' or 'structured_outputs', not both")
        return self

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

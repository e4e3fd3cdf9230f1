"""OpenAI chat-completions wire format (request, response, stream chunk) for Kimi-VL.

Message content is normalised on the way in: a plain string becomes one text part, so consumers
(the prompt renderer) handle one shape. The Kimi-VL template concatenates parts with nothing in
between, so this is lossless for rendering.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.protocol.common import (
    MAX_TOP_LOGPROBS,
    UNSUPPORTED_PARAMETER,
    ChoiceLogprobs,
    FinishReason,
    SamplingRequest,
    Usage,
    unsupported,
)

Role = Literal["system", "developer", "user", "assistant"]


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"


class VideoURL(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)


def _url_object(value: Any) -> Any:
    # Some clients send `"image_url": "https://…"` instead of `{"url": …}`.
    return {"url": value} if isinstance(value, str) else value


class ContentPart(BaseModel):
    """One item of list content. A flat model (not a tagged union) keeps error paths readable:
    `messages[0].content[1].image_url.url` rather than a path with union tags in it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: Annotated[ImageURL | None, BeforeValidator(_url_object)] = None
    video_url: Annotated[VideoURL | None, BeforeValidator(_url_object)] = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> ContentPart:
        payload = {"text": self.text, "image_url": self.image_url, "video_url": self.video_url}
        if payload[self.type] is None:
            raise ValueError(f"a content part of type '{self.type}' needs the '{self.type}' field")
        others = [k for k, v in payload.items() if k != self.type and v is not None]
        if others:
            raise ValueError(f"a '{self.type}' content part cannot carry '{others[0]}'")
        return self


def _content_parts(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if isinstance(value, list):
        return value
    raise PydanticCustomError(
        "invalid_content", "content must be a string or a list of content parts"
    )


def _role(value: Any) -> Any:
    if value in ("tool", "function"):
        raise PydanticCustomError(
            UNSUPPORTED_PARAMETER,
            "'{role}' messages are not supported (no tool calling)",
            {"role": value},
        )
    return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Annotated[Role, BeforeValidator(_role)]
    content: Annotated[list[ContentPart], BeforeValidator(_content_parts)] = Field(
        default_factory=list
    )
    name: str | None = None
    # Earlier assistant turns of a Thinking model may carry their reasoning back; it is never
    # rendered into the prompt (docs/model.md#chat-template: strip reasoning from history).
    reasoning_content: str | None = None
    reasoning: str | None = None
    # Fields the SDK echoes when a response message is appended to the history as-is.
    refusal: str | None = None
    annotations: list[Any] | None = None
    tool_calls: Annotated[list[Any] | None, unsupported([])] = None
    function_call: Annotated[Any, unsupported()] = None
    tool_call_id: Annotated[str | None, unsupported()] = None
    audio: Annotated[Any, unsupported()] = None

    @model_validator(mode="after")
    def _parts_allowed_for_role(self) -> ChatMessage:
        if self.role != "user" and any(p.type != "text" for p in self.content):
            raise ValueError(f"{self.role} messages may contain only text parts")
        if self.role != "assistant" and not self.content:
            raise PydanticCustomError(
                "missing", "a {role} message needs 'content'", {"role": self.role}
            )
        return self

    @property
    def text(self) -> str:
        """The text parts joined (for system/assistant turns, which hold text only)."""
        return "".join(p.text or "" for p in self.content if p.type == "text")


class VideoOptions(BaseModel):
    """Server extension: how `video_url` parts are sampled into frames.

    Unset fields take the server's defaults; the server's caps are checked in server/serving/.
    """

    model_config = ConfigDict(extra="forbid")

    fps: float | None = Field(default=None, gt=0.0)
    max_frames: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)  # image tokens of one video's frames
    timestamps: bool | None = None  # `MM:SS` text before each frame; on unless false


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    video: VideoOptions | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    include_reasoning: bool = True

    tools: Annotated[list[Any] | None, unsupported([])] = None
    tool_choice: Annotated[Any, unsupported("none")] = None
    functions: Annotated[list[Any] | None, unsupported([])] = None
    function_call: Annotated[Any, unsupported("none")] = None
    parallel_tool_calls: Annotated[bool | None, unsupported()] = None
    audio: Annotated[Any, unsupported()] = None
    modalities: Annotated[list[str] | None, unsupported(["text"])] = None
    prediction: Annotated[Any, unsupported()] = None
    web_search_options: Annotated[Any, unsupported()] = None
    reasoning_effort: Annotated[str | None, unsupported()] = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' requires 'logprobs' to be true")
        return value

    @property
    def effective_max_tokens(self) -> int | None:
        """`max_completion_tokens` (current OpenAI name) wins over the older `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


# -- responses -------------------------------------------------------------------------------


class ChatCompletionMessage(BaseModel):
    """`reasoning_content` and `reasoning` carry the same text (see DeltaMessage)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    """Stream delta; unset fields are left out of the JSON (OpenAI sends only what changed).

    Reasoning goes out under both names clients look for: `reasoning_content` (DeepSeek/vLLM)
    and `reasoning` (newer vLLM, OpenRouter); the serving layer decides which to fill.
    """

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None

"""OpenAI chat-completions wire format (request, response, stream chunk) for Kimi-VL.

Tools: Kimi-VL's chat template defines no tool-call format, so only forced calls are served
(`tool_choice` = a named function or "required", generated under a JSON-schema constraint);
`tool_choice: "auto"` is a 400 that says so. Tool results and earlier calls in the history are
rendered as docs/architecture.md#tool-calls describes.

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
    SamplingRequest,
    Usage,
    unsupported,
)
from server.protocol.policy import ignored

Role = Literal["system", "developer", "user", "assistant", "tool"]
ChatFinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
FUNCTION_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def _detail(value: Any) -> Any:
    # "original" (newer OpenAI models: no downscaling) is this server's "high": the model's full
    # per-image budget at native resolution.
    return "high" if value == "original" else value


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    detail: Annotated[
        Literal["auto", "low", "high"],
        BeforeValidator(_detail, json_schema_input_type=Literal["auto", "low", "high", "original"]),
    ] = "auto"


class VideoURL(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)


class FileInput(BaseModel):
    """A `file` part's payload (OpenAI: `file_data` or `file_id`, plus `filename`). This server
    reads PDFs; `file_url` (the Responses API's field) is accepted here too and fetched like
    an image URL."""

    model_config = ConfigDict(extra="forbid")

    file_data: str | None = Field(default=None, min_length=1)  # data: URL or bare base64
    file_id: str | None = Field(default=None, min_length=1)
    file_url: str | None = Field(default=None, min_length=1)
    filename: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FileInput:
        given = [k for k in ("file_data", "file_id", "file_url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a file part needs exactly one of 'file_data', 'file_id', 'file_url'")
        return self


def _url_object(value: Any) -> Any:
    # Some clients send `"image_url": "https://…"` instead of `{"url": …}`.
    return {"url": value} if isinstance(value, str) else value


class ContentPart(BaseModel):
    """One item of list content. A flat model (not a tagged union) keeps error paths readable:
    `messages[0].content[1].image_url.url` rather than a path with union tags in it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image_url", "video_url", "file"]
    text: str | None = None
    image_url: Annotated[
        ImageURL | None, BeforeValidator(_url_object, json_schema_input_type=ImageURL | str | None)
    ] = None
    video_url: Annotated[
        VideoURL | None, BeforeValidator(_url_object, json_schema_input_type=VideoURL | str | None)
    ] = None
    file: FileInput | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> ContentPart:
        payload = {
            "text": self.text,
            "image_url": self.image_url,
            "video_url": self.video_url,
            "file": self.file,
        }
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
    if value == "function":
        raise PydanticCustomError(
            UNSUPPORTED_PARAMETER,
            "'function' messages (the deprecated functions API) are not supported; use 'tool'",
            {},
        )
    return value


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Annotated[Role, BeforeValidator(_role)]
    content: Annotated[
        list[ContentPart],
        BeforeValidator(_content_parts, json_schema_input_type=str | list[ContentPart] | None),
    ] = Field(default_factory=list)
    name: str | None = ignored("the chat template has no participant names")
    # Earlier assistant turns of a Thinking model may carry their reasoning back; it is never
    # rendered into the prompt (docs/model.md#chat-template: strip reasoning from history).
    reasoning_content: str | None = None
    reasoning: str | None = None
    # Fields the SDK echoes when a response message is appended to the history as-is.
    refusal: str | None = None
    annotations: list[Any] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn's calls, rendered as JSON
    tool_call_id: str | None = None  # a tool turn's answer to that call
    function_call: Annotated[Any, unsupported()] = None
    audio: Annotated[Any, unsupported()] = None

    @model_validator(mode="after")
    def _parts_allowed_for_role(self) -> ChatMessage:
        if self.role != "user" and any(p.type != "text" for p in self.content):
            raise ValueError(f"{self.role} messages may contain only text parts")
        if self.role != "assistant" and not self.content:
            raise PydanticCustomError(
                "missing", "a {role} message needs 'content'", {"role": self.role}
            )
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError("missing", "a tool message needs 'tool_call_id'", {})
        return self

    @property
    def text(self) -> str:
        """The text parts joined (for system/assistant turns, which hold text only)."""
        return "".join(p.text or "" for p in self.content if p.type == "text")


class MMProcessorKwargs(BaseModel):
    """vLLM's `mm_processor_kwargs`: Kimi-VL's processor takes the per-image token budget."""

    model_config = ConfigDict(extra="forbid")

    in_token_limit: int | None = Field(default=None, ge=4)


class VideoOptions(BaseModel):
    """Server extension: how `video_url` parts are sampled into frames.

    Unset fields take the server's defaults; the server's caps are checked in server/serving/.
    """

    model_config = ConfigDict(extra="forbid")

    fps: float | None = Field(default=None, gt=0.0)
    max_frames: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)  # image tokens of one video's frames
    timestamps: bool | None = None  # `MM:SS` text before each frame; on unless false


class DocumentOptions(BaseModel):
    """Server extension: how `file` parts (PDFs) become page images. Unset fields take the
    server's defaults; its caps are checked in server/serving/documents.py."""

    model_config = ConfigDict(extra="forbid")

    dpi: float | None = Field(default=None, ge=10.0, le=600.0)  # before the token budget
    max_pages: int | None = Field(default=None, ge=1)  # the first pages of the selection
    pages: str | None = Field(default=None, min_length=1, max_length=1000)  # e.g. "1-5,8"
    max_tokens: int | None = Field(default=None, ge=1)  # image tokens of all document pages


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments
    strict: bool | None = None  # arguments always follow the schema here (constrained)


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


# Keys of `chat_template_kwargs` the Kimi-VL template reads; it has no others.
TEMPLATE_KWARGS = ("add_generation_prompt",)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    video: VideoOptions | None = None
    document: DocumentOptions | None = None
    include_reasoning: bool = True
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = ignored("a forced call is always one call")

    # vLLM's extra fields for chat.
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False
    mm_processor_kwargs: MMProcessorKwargs | None = None

    reasoning_effort: str | None = ignored("Kimi-VL has no reasoning-effort control")
    verbosity: str | None = ignored("Kimi-VL has no verbosity control")
    prediction: dict[str, Any] | None = ignored("no speculative decoding from a prediction")
    modalities: Annotated[list[str] | None, unsupported(["text"])] = None
    audio: Annotated[Any, unsupported()] = None
    web_search_options: Annotated[Any, unsupported()] = None
    functions: Annotated[list[Any] | None, unsupported([])] = None  # deprecated: use tools
    function_call: Annotated[Any, unsupported("none")] = None  # deprecated: use tool_choice

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' requires 'logprobs' to be true")
        return value

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_reads_it(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in value or {}:
            if key not in TEMPLATE_KWARGS:
                raise PydanticCustomError(
                    UNSUPPORTED_PARAMETER,
                    "the Kimi-VL chat template has no variable '{key}' (it reads only "
                    "add_generation_prompt)",
                    {"key": key},
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.generation_prompt and self.continue_final_message:
            raise ValueError("'continue_final_message' needs 'add_generation_prompt' to be false")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("'continue_final_message' needs an assistant message last")
        return self

    @property
    def generation_prompt(self) -> bool:
        """`add_generation_prompt`, which `chat_template_kwargs` may also carry (it wins)."""
        kwargs = self.chat_template_kwargs or {}
        return bool(kwargs.get("add_generation_prompt", self.add_generation_prompt))

    @property
    def forced_tool(self) -> str | None:
        """The named function a call is forced to; "*" when any tool may be called."""
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            return choice.function.name
        return "*" if choice == "required" else None

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
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _no_empty_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        return data


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


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
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str = ""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call: the first carries id, type and name; later ones only
    more of `function.arguments` (OpenAI's stream shape)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None

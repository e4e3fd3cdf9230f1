"""OpenAI Responses API wire format (`/v1/responses`): request, response object, stream events.

The request is strict like the chat models: unknown fields are 400s, fields that cannot apply
are accepted and ignored (`ignored()`, reported in X-Ignored-Params) or rejected with
`unsupported_parameter` unless they carry their "off" value. Input items are flat models (not
tagged unions) so error paths stay readable: `input[0].content[1].image_url`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from server.protocol.common import MAX_TOP_LOGPROBS, unsupported
from server.protocol.policy import ignored

InputRole = Literal["user", "system", "developer", "assistant"]


class ReasoningText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["reasoning_text"]
    text: str


class SummaryText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["summary_text"]
    text: str


class InputPart(BaseModel):
    """One content part of an input message: `input_text`, `input_image`, or the `output_text`
    of an earlier answer (the SDK sends previous outputs back as they are)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["input_text", "output_text", "input_image", "input_file", "reasoning_text"]
    text: str | None = None
    image_url: str | None = Field(default=None, min_length=1)
    # "original" (full resolution) is the same as "high" here: the image's own token budget.
    detail: Literal["auto", "low", "high", "original"] = "auto"
    # input_file (a PDF): exactly one of these, as a chat `file` part takes them.
    file_data: str | None = Field(default=None, min_length=1)
    file_url: str | None = Field(default=None, min_length=1)
    file_id: str | None = Field(default=None, min_length=1)
    filename: str | None = None
    annotations: list[Any] | None = None  # echoed by the SDK with output_text; no effect
    logprobs: list[Any] | None = None  # likewise

    @model_validator(mode="after")
    def _payload_matches_type(self) -> InputPart:
        files = [self.file_data, self.file_url, self.file_id, self.filename]
        if self.type != "input_file" and any(f is not None for f in files):
            raise ValueError(f"a '{self.type}' part cannot carry file fields")
        if self.type == "input_file":
            if self.text is not None or self.image_url is not None:
                raise ValueError("an 'input_file' part carries only file fields")
        elif self.type == "input_image":
            if self.image_url is None:
                raise ValueError("an 'input_image' part needs 'image_url' (a URL or data URL)")
            if self.text is not None:
                raise ValueError("an 'input_image' part cannot carry 'text'")
        else:
            if self.text is None:
                raise ValueError(f"a '{self.type}' part needs 'text'")
            if self.image_url is not None:
                raise ValueError(f"a '{self.type}' part cannot carry 'image_url'")
        return self


def _text_parts(value: Any) -> Any:
    # A plain string is one text part (lossless: the template joins parts with nothing between).
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


def _message_items(value: Any) -> Any:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


class InputItem(BaseModel):
    """A message item (`type` may be left out), or a reasoning item sent back from an earlier
    output: reasoning never goes back into the prompt (as with chat history), so it is skipped."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message", "reasoning"] = "message"
    role: InputRole | None = None
    content: Annotated[
        list[InputPart] | None,
        BeforeValidator(_text_parts, json_schema_input_type=str | list[InputPart] | None),
    ] = None
    id: str | None = None  # output items carry their ids and status back
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    summary: list[SummaryText] | None = None
    encrypted_content: Annotated[str | None, unsupported()] = None

    @model_validator(mode="after")
    def _shape(self) -> InputItem:
        if self.type == "reasoning":
            if self.role is not None:
                raise ValueError("a 'reasoning' item has no 'role'")
            if any(p.type != "reasoning_text" for p in self.content or []):
                raise ValueError("a 'reasoning' item's content holds 'reasoning_text' parts")
            return self
        if self.role is None:
            raise PydanticCustomError("missing", "a message item needs 'role'")
        if self.content is None:
            raise PydanticCustomError("missing", "a message item needs 'content'")
        if any(p.type == "reasoning_text" for p in self.content):
            raise ValueError(
                "message content holds input_text/input_image/input_file/output_text parts"
            )
        if self.role != "user" and any(
            p.type in ("input_image", "input_file") for p in self.content
        ):
            raise ValueError(f"{self.role} messages may contain only text parts")
        return self


class TextFormat(BaseModel):
    """`text.format`: plain text, any JSON object, or JSON matching `schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_fields(self) -> TextFormat:
        if self.type == "json_schema":
            if self.name is None or self.schema_ is None:
                raise ValueError("a 'json_schema' format needs 'name' and 'schema'")
        elif self.name is not None or self.schema_ is not None:
            raise ValueError("'name' and 'schema' are only allowed with type 'json_schema'")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = ignored(
        "the model has no verbosity control"
    )


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesStreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_obfuscation: bool | None = ignored("events are not padded")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: Annotated[
        list[InputItem],
        BeforeValidator(_message_items, json_schema_input_type=str | list[InputItem]),
    ] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    text: TextConfig | None = None
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool = True
    previous_response_id: str | None = Field(default=None, min_length=1)
    metadata: dict[str, str] | None = None  # stored and echoed
    tools: Annotated[list[Any] | None, unsupported([])] = None
    tool_choice: Annotated[Any, unsupported("none", "auto")] = None
    truncation: Annotated[str | None, unsupported("disabled")] = None
    background: Annotated[bool | None, unsupported(False)] = None
    conversation: Annotated[Any, unsupported()] = None
    prompt: Annotated[Any, unsupported()] = None

    parallel_tool_calls: bool | None = ignored("there are no tools")
    reasoning: ReasoningConfig | None = ignored("the Thinking models always reason")
    include: list[str] | None = ignored("there are no extra outputs to include")
    top_logprobs: Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)] = ignored(
        "logprobs are not returned by this endpoint"
    )
    user: str | None = ignored("no per-user accounting")
    safety_identifier: str | None = ignored("no per-user accounting")
    prompt_cache_key: str | None = ignored("prefix caching needs no key")
    service_tier: str | None = ignored("one service tier")

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ResponsesRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return self


# -- the response object -------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = Field(default_factory=list)


class ReasoningItem(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    status: ItemStatus | None = None


OutputItem = OutputMessage | ReasoningItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseErrorInfo(BaseModel):
    code: str
    message: str


class TextConfigOut(BaseModel):
    format: dict[str, Any] = Field(default_factory=lambda: {"type": "text"})


ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    error: ResponseErrorInfo | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: TextConfigOut = Field(default_factory=TextConfigOut)
    tool_choice: str = "none"
    tools: list[Any] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


# -- stream events (each carries `type` and `sequence_number`) ----------------------------------


class ResponseEvent(BaseModel):
    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(BaseModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(BaseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class TextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = Field(default_factory=list)


class TextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = Field(default_factory=list)


class ReasoningDeltaEvent(BaseModel):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningDoneEvent(BaseModel):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None = None
    message: str
    param: str | None = None


StreamEvent = (
    ResponseEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ReasoningDeltaEvent
    | ReasoningDoneEvent
    | ErrorEvent
)

"""`POST /tokenize` and `POST /detokenize` (vLLM's extra endpoints) for Kimi-VL.

A tokenize request carries either a raw `prompt` (counted as /v1/completions counts it) or chat
`messages` with the chat-rendering fields of /v1/chat/completions (images, videos and documents
included: their tokens are counted as the engine will expand them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.protocol.chat import (
    ChatMessage,
    DocumentOptions,
    MMProcessorKwargs,
    NamedToolChoice,
    Tool,
    VideoOptions,
)

# The fields a chat-messages tokenize request shares with a chat completion request.
CHAT_FIELDS = (
    "messages",
    "add_generation_prompt",
    "continue_final_message",
    "chat_template_kwargs",
    "mm_processor_kwargs",
    "video",
    "document",
    "tools",
    "tool_choice",
)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = False  # raw prompts only, as /v1/completions encodes them
    return_token_strs: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: MMProcessorKwargs | None = None
    video: VideoOptions | None = None
    document: DocumentOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of 'prompt' and 'messages'")
        return self

    def chat_fields(self) -> dict[str, Any]:
        """The chat-completion request fields this request sets."""
        return {k: getattr(self, k) for k in CHAT_FIELDS if k in self.model_fields_set}


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int] = Field(min_length=1)


class DetokenizeResponse(BaseModel):
    prompt: str

"""Responses API requests -> chat requests: the message list (instructions, stored turns,
input), the chat fields (`max_output_tokens`, sampling, `text.format`), the echo skeleton of
the response, and chat error params mapped back to the Responses field they came from.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import ValidationError

from server.errors import InvalidRequest
from server.protocol.chat import ChatCompletionRequest, ChatMessage
from server.protocol.responses import InputItem, ResponseObject, ResponsesRequest, TextConfigOut


def skeleton(request: ResponsesRequest, response_id: str, model: str) -> ResponseObject:
    """The response as `response.created` shows it: the request's settings echoed, no output."""
    fmt = request.text.format if request.text is not None else None
    return ResponseObject(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        model=model,
        previous_response_id=request.previous_response_id,
        store=request.store,
        temperature=request.temperature,
        top_p=request.top_p,
        text=TextConfigOut(format=fmt.model_dump(exclude_none=True)) if fmt else TextConfigOut(),
        tool_choice=request.tool_choice if isinstance(request.tool_choice, str) else "none",
        parallel_tool_calls=bool(request.parallel_tool_calls),
        user=request.user,
        metadata=dict(request.metadata or {}),
    )


def _chat_message(item: InputItem) -> ChatMessage:
    parts: list[dict[str, Any]] = []
    for part in item.content or []:
        if part.type == "input_image":
            detail = "high" if part.detail == "original" else part.detail
            parts.append(
                {"type": "image_url", "image_url": {"url": part.image_url, "detail": detail}}
            )
        elif part.type == "input_file":
            fields = ("file_data", "file_url", "file_id", "filename")
            file = {k: getattr(part, k) for k in fields if getattr(part, k) is not None}
            parts.append({"type": "file", "file": file})
        else:
            parts.append({"type": "text", "text": part.text})
    return ChatMessage.model_validate({"role": item.role, "content": parts})


def chat_messages(
    request: ResponsesRequest, history: tuple[ChatMessage, ...]
) -> tuple[list[ChatMessage], list[str], list[ChatMessage]]:
    """(chat messages, the Responses field each came from, the conversation to store)."""
    messages: list[ChatMessage] = []
    sources: list[str] = []
    if request.instructions is not None:
        messages.append(
            ChatMessage.model_validate({"role": "system", "content": request.instructions})
        )
        sources.append("instructions")
    messages.extend(history)
    sources.extend(["previous_response_id"] * len(history))
    turns = list(history)
    for i, item in enumerate(request.input):
        if item.type == "reasoning":  # reasoning never goes back into the prompt
            continue
        try:
            message = _chat_message(item)
        except ValidationError as exc:
            raise InvalidRequest(
                f"Invalid value for 'input[{i}]': {exc.errors()[0]['msg']}",
                param=f"input[{i}]",
                code="invalid_value",
            ) from None
        messages.append(message)
        sources.append(f"input[{i}]")
        turns.append(message)
    if not messages:
        raise InvalidRequest("'input' holds no message.", param="input", code="invalid_value")
    return messages, sources, turns


def chat_request_for(
    request: ResponsesRequest, messages: list[ChatMessage]
) -> ChatCompletionRequest:
    fmt = request.text.format if request.text is not None else None
    response_format: dict[str, Any] | None = None
    if fmt is not None and fmt.type == "json_object":
        response_format = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
        if fmt.description is not None:
            schema["description"] = fmt.description
        response_format = {"type": "json_schema", "json_schema": schema}
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "response_format": response_format,
        "stream": request.stream,
    }
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(
            f"Invalid request: {first['msg']}",
            param=responses_param(loc, []),
            code="invalid_value",
        ) from None


_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\](.*)$")


def responses_param(param: str | None, sources: list[str]) -> str | None:
    """A chat request's `param` as the Responses field it came from."""
    if param is None:
        return None
    match = _MESSAGE_PARAM.match(param)
    if match:
        index, rest = int(match[1]), match[2]
        source = sources[index] if index < len(sources) else "input"
        if not source.startswith("input["):
            return source
        # input_image's image_url is the URL itself; input_file's fields sit on the part
        return source + rest.removesuffix(".url").removesuffix(".file")
    if param.startswith("messages"):
        return "input"
    if param in ("max_tokens", "max_completion_tokens"):
        return "max_output_tokens"
    if param.startswith("response_format"):
        return "text.format"
    return param

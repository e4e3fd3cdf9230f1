"""Forced tool calls: OpenAI `tools` + `tool_choice` as a JSON-schema constraint on the output.

Kimi-VL's chat template defines no tool-call format, so the model cannot decide on its own to
call a tool (`tool_choice: "auto"` is refused with a 400 that says so). A forced call is served
by constraining generation:

- `tool_choice: {"type": "function", "function": {"name": N}}` -> the output is N's arguments,
  a JSON object that follows N's `parameters` schema;
- `tool_choice: "required"` -> the output is `{"name": <one of the tools>, "arguments": {...}}`
  with that tool's schema (anyOf over the tools).

The tools are described to the model in an extra system turn (`tools_turn_text`); earlier calls
and their results in the history render as `tool_call_text` and plain `tool` turns
(docs/architecture.md#tool-calls).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from server.engine.contract import OutputConstraint
from server.errors import InvalidRequest
from server.protocol.chat import ChatCompletionRequest, FunctionCall, Tool, ToolCall

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def check_tools(request: ChatCompletionRequest) -> None:
    """The tool fields make sense together, or a 400 naming the field."""
    tools, choice = request.tools or [], request.tool_choice
    if tools and choice in (None, "auto"):
        raise InvalidRequest(
            "Kimi-VL has no native tool-call format, so the model cannot choose by itself "
            "whether to call a tool ('tool_choice': 'auto', the default with tools). Force a "
            "call with 'tool_choice': 'required' or {'type': 'function', 'function': "
            "{'name': ...}}, or send 'tool_choice': 'none'.",
            param="tool_choice",
            code="unsupported_value",
        )
    forced = request.forced_tool
    if forced is None:
        return
    if not tools:
        raise InvalidRequest(
            "'tool_choice' forces a tool call but 'tools' is empty.", param="tools"
        )
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    if forced != "*" and forced not in names:
        raise InvalidRequest(
            f"'tool_choice' names the function '{forced}', which is not in 'tools' "
            f"({', '.join(names)}).",
            param="tool_choice.function.name",
        )
    if request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest(
            "A forced tool call already constrains the output; drop 'response_format'.",
            param="response_format",
        )
    if request.structured_outputs is not None:
        raise InvalidRequest(
            "A forced tool call already constrains the output; drop 'structured_outputs'.",
            param="structured_outputs",
        )


def _forced(request: ChatCompletionRequest) -> list[Tool]:
    forced = request.forced_tool
    tools = request.tools or []
    return tools if forced == "*" else [t for t in tools if t.function.name == forced]


def tool_constraint(request: ChatCompletionRequest) -> OutputConstraint | None:
    """The JSON schema the output must follow, or None when no call is forced."""
    if request.forced_tool is None:
        return None
    tools = _forced(request)
    if request.forced_tool != "*":
        return OutputConstraint("json", tools[0].function.parameters or ANY_OBJECT)
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool.function.name]},
                "arguments": tool.function.parameters or ANY_OBJECT,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return OutputConstraint("json", options[0] if len(options) == 1 else {"anyOf": options})


def tools_turn_text(request: ChatCompletionRequest) -> str | None:
    """The system turn that tells the model which function to call and how to answer."""
    if request.forced_tool is None:
        return None
    specs = [
        {
            "name": tool.function.name,
            "description": tool.function.description or "",
            "parameters": tool.function.parameters or ANY_OBJECT,
        }
        for tool in _forced(request)
    ]
    if request.forced_tool == "*":
        return (
            "Call one of these functions. Answer with only a JSON object "
            '{"name": <function name>, "arguments": <its arguments>}.\n'
            + json.dumps(specs, ensure_ascii=False)
        )
    return (
        f"Call the function {specs[0]['name']}. Answer with only its arguments as a JSON "
        "object.\n" + json.dumps(specs[0], ensure_ascii=False)
    )


def tool_call_text(call: ToolCall) -> str:
    """An earlier call in the history, as it is rendered into the assistant turn."""
    try:
        arguments: Any = json.loads(call.function.arguments)
    except json.JSONDecodeError:
        arguments = call.function.arguments
    return json.dumps({"name": call.function.name, "arguments": arguments}, ensure_ascii=False)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def parse_tool_call(request: ChatCompletionRequest, text: str, call_id: str) -> ToolCall | None:
    """The generated call, or None when the text is not a complete call (cut by max_tokens)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    forced = request.forced_tool
    if forced is not None and forced != "*":
        # The output is the arguments themselves: keep the text as generated (and streamed).
        return ToolCall(id=call_id, function=FunctionCall(name=forced, arguments=text.strip()))
    if isinstance(value, dict) and isinstance(value.get("name"), str) and "arguments" in value:
        arguments = json.dumps(value["arguments"], ensure_ascii=False, separators=(",", ":"))
        return ToolCall(id=call_id, function=FunctionCall(name=value["name"], arguments=arguments))
    return None

"""`/v1/responses` logic: a Responses request becomes a chat request, runs like one, and comes
back as a Responses object (or its stream of events), stored for `previous_response_id`.

`prepare` resolves the stored conversation, translates the request (instructions first, then
the earlier turns, then `input`) and hands it to `ChatCompletions.prepare`, so model checks,
admission, media, prompt rendering, context length and sampling are the chat path's; errors
are re-pointed at the Responses field (`messages[2].content[1].image_url` ->
`input[0].content[1].image_url`). `complete` and `stream` then drive the engine.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from server.errors import APIError, ResponseNotFound, to_api_error
from server.metrics import record_rejection
from server.protocol.chat import ChatMessage
from server.protocol.policy import IGNORED_HEADER, ignored_fields
from server.protocol.responses import (
    ContentPartEvent,
    DeletedResponse,
    ErrorEvent,
    IncompleteDetails,
    InputTokensDetails,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    ReasoningItem,
    ReasoningText,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    StreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from server.serving.chat import ChatCompletions, PreparedChat
from server.serving.choices import ChoiceState, FirstTokenTimer
from server.serving.context import ServingContext
from server.serving.response_store import ResponseStore, StoredResponse
from server.serving.responses_input import (
    chat_messages,
    chat_request_for,
    responses_param,
    skeleton,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedResponse:
    """A validated Responses request, ready for the engine. `done()` must be called."""

    request: ResponsesRequest
    chat: PreparedChat
    skeleton: ResponseObject  # id, created_at and the echoed request fields; in progress
    conversation: list[ChatMessage]  # earlier turns + this input, for the store
    message_id: str
    reasoning_id: str
    headers: dict[str, str] = field(default_factory=dict)

    def done(self) -> None:
        self.chat.done()


@dataclass(slots=True)
class Generated:
    """What the engine produced for one response."""

    reasoning: str | None
    content: str
    state: ChoiceState
    prompt_tokens: int
    cached_tokens: int


class Responses:
    def __init__(self, ctx: ServingContext, chat: ChatCompletions, store: ResponseStore) -> None:
        self.ctx = ctx
        self.chat = chat
        self.store = store

    # -- stored responses -------------------------------------------------------------------
    def retrieve(self, response_id: str) -> ResponseObject:
        entry = self.store.get(response_id)
        if entry is None:
            raise ResponseNotFound(response_id)
        return entry.response

    def delete(self, response_id: str) -> DeletedResponse:
        if not self.store.delete(response_id):
            raise ResponseNotFound(response_id)
        return DeletedResponse(id=response_id)

    # -- prepare ----------------------------------------------------------------------------
    async def prepare(self, request: ResponsesRequest, request_id: str) -> PreparedResponse:
        history: tuple[ChatMessage, ...] = ()
        if request.previous_response_id is not None:
            entry = self.store.get(request.previous_response_id)
            if entry is None:
                raise ResponseNotFound(request.previous_response_id, param="previous_response_id")
            history = entry.conversation
        messages, sources, conversation = chat_messages(request, history)
        chat_request = chat_request_for(request, messages)
        try:
            prepared = await self.chat.prepare(chat_request, request_id)
        except APIError as exc:
            exc.param = responses_param(exc.param, sources)
            raise
        headers = dict(prepared.headers)
        names = ignored_fields(request)
        if names:
            logger.debug("Request %s: ignored fields %s", request_id, ", ".join(names))
            earlier = headers.get(IGNORED_HEADER)
            headers[IGNORED_HEADER] = ",".join([earlier, *names] if earlier else names)
        return PreparedResponse(
            request=request,
            chat=prepared,
            skeleton=skeleton(request, f"resp_{secrets.token_hex(24)}", self.ctx.model_name),
            conversation=conversation,
            message_id=f"msg_{secrets.token_hex(24)}",
            reasoning_id=f"rs_{secrets.token_hex(24)}",
            headers=headers,
        )

    # -- non-streaming ----------------------------------------------------------------------
    async def complete(self, prepared: PreparedResponse) -> ResponseObject:
        chat = prepared.chat
        state = ChoiceState(0, reasoning=chat.reasoning)
        prompt_tokens, cached = chat.num_prompt_tokens, 0
        timer = FirstTokenTimer(chat.started)
        try:
            async with aclosing(self.ctx.generate(chat.engine_request)) as outputs:
                async for out in outputs:
                    timer.saw(*state.add(out), out.first_token_time)
                    prompt_tokens, cached = out.num_prompt_tokens, out.num_cached_tokens
        finally:
            prepared.done()
        reasoning, content = state.split()
        return self.finish(prepared, Generated(reasoning, content, state, prompt_tokens, cached))

    def finish(self, prepared: PreparedResponse, generated: Generated) -> ResponseObject:
        """The final response object; stored when the request asked for it."""
        state = generated.state
        incomplete = state.finish_reason == "length"
        output: list[ReasoningItem | OutputMessage] = []
        if generated.reasoning:
            output.append(
                ReasoningItem(
                    id=prepared.reasoning_id,
                    content=[ReasoningText(type="reasoning_text", text=generated.reasoning)],
                    status="completed",
                )
            )
        output.append(
            OutputMessage(
                id=prepared.message_id,
                status="incomplete" if incomplete else "completed",
                content=[OutputText(text=generated.content)],
            )
        )
        usage = ResponseUsage(
            input_tokens=generated.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=generated.cached_tokens),
            output_tokens=state.num_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=state.reasoning_tokens),
            total_tokens=generated.prompt_tokens + state.num_tokens,
        )
        response = prepared.skeleton.model_copy(
            update={
                "status": "incomplete" if incomplete else "completed",
                "incomplete_details": IncompleteDetails(reason="max_output_tokens")
                if incomplete
                else None,
                "output": output,
                "usage": usage,
            }
        )
        if prepared.request.store:
            answer = ChatMessage.model_validate({"role": "assistant", "content": generated.content})
            self.store.put(StoredResponse(response, (*prepared.conversation, answer)))
        return response

    # -- streaming --------------------------------------------------------------------------
    async def stream(self, prepared: PreparedResponse) -> AsyncGenerator[str, None]:
        """OpenAI's event sequence: created, in_progress, per output item added / part added /
        deltas / done, then completed (or incomplete). A failure after the start is one
        `error` event, and the stream ends."""
        chat = prepared.chat
        events = _EventWriter(prepared)
        state = ChoiceState(0, reasoning=chat.reasoning)
        prompt_tokens, cached = chat.num_prompt_tokens, 0
        timer = FirstTokenTimer(chat.started)
        try:
            yield events.lifecycle("response.created", prepared.skeleton)
            yield events.lifecycle("response.in_progress", prepared.skeleton)
            async with aclosing(self.ctx.generate(chat.engine_request)) as outputs:
                async for out in outputs:
                    prompt_tokens, cached = out.num_prompt_tokens, out.num_cached_tokens
                    reasoning, content = state.add(out)
                    timer.saw(reasoning, content)
                    for event in events.reasoning(reasoning) + events.content(content):
                        yield event
            for event in events.close(incomplete=state.finish_reason == "length"):
                yield event
            generated = Generated(
                events.reasoning_text or None, events.content_text, state, prompt_tokens, cached
            )
            final = self.finish(prepared, generated)
            kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
            yield events.lifecycle(kind, final)
        except Exception as exc:  # the stream has started: report in-band, then end it
            if not isinstance(exc, APIError):
                logger.exception("Responses stream %s failed", chat.engine_request.request_id)
            yield events.error(exc)
        finally:
            prepared.done()


class _EventWriter:
    """Numbers and frames the events of one stream and tracks which output item is open."""

    def __init__(self, prepared: PreparedResponse) -> None:
        self.prepared = prepared
        self.sequence = 0
        self.phase: str | None = None  # None, then "reasoning" and/or "message"
        self.reasoning_text = ""
        self.content_text = ""

    def _frame(self, event: StreamEvent) -> str:
        return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def lifecycle(self, kind: str, response: ResponseObject) -> str:
        event = ResponseEvent.model_validate(
            {"type": kind, "sequence_number": self._next(), "response": response}
        )
        return self._frame(event)

    def error(self, exc: BaseException) -> str:
        err = to_api_error(exc)
        record_rejection(err.code)
        event = ErrorEvent(
            sequence_number=self._next(), code=err.code, message=err.message, param=err.param
        )
        return self._frame(event)

    @property
    def _message_index(self) -> int:
        return 1 if self.reasoning_text else 0

    def _reasoning_item(self, status: str) -> ReasoningItem:
        content = [ReasoningText(type="reasoning_text", text=self.reasoning_text)]
        return ReasoningItem.model_validate(
            {"id": self.prepared.reasoning_id, "content": content, "status": status}
        )

    def _message_item(self, status: str, text: str | None) -> OutputMessage:
        content = [] if text is None else [OutputText(text=text)]
        return OutputMessage.model_validate(
            {"id": self.prepared.message_id, "status": status, "content": content}
        )

    def _item(self, kind: str, index: int, item: ReasoningItem | OutputMessage) -> str:
        event = OutputItemEvent.model_validate(
            {"type": kind, "sequence_number": self._next(), "output_index": index, "item": item}
        )
        return self._frame(event)

    def _part(self, kind: str, index: int, item_id: str, part: OutputText | ReasoningText) -> str:
        event = ContentPartEvent.model_validate(
            {
                "type": kind,
                "sequence_number": self._next(),
                "item_id": item_id,
                "output_index": index,
                "content_index": 0,
                "part": part,
            }
        )
        return self._frame(event)

    def reasoning(self, delta: str) -> list[str]:
        if not delta:
            return []
        out = []
        rid = self.prepared.reasoning_id
        if self.phase is None:
            self.phase = "reasoning"
            out.append(
                self._item(
                    "response.output_item.added",
                    0,
                    self._reasoning_item("in_progress").model_copy(update={"content": []}),
                )
            )
            out.append(
                self._part(
                    "response.content_part.added",
                    0,
                    rid,
                    ReasoningText(type="reasoning_text", text=""),
                )
            )
        self.reasoning_text += delta
        event = ReasoningDeltaEvent(
            sequence_number=self._next(), item_id=rid, output_index=0, content_index=0, delta=delta
        )
        return [*out, self._frame(event)]

    def _close_reasoning(self) -> list[str]:
        rid = self.prepared.reasoning_id
        done = ReasoningDoneEvent(
            sequence_number=self._next(),
            item_id=rid,
            output_index=0,
            content_index=0,
            text=self.reasoning_text,
        )
        return [
            self._frame(done),
            self._part(
                "response.content_part.done",
                0,
                rid,
                ReasoningText(type="reasoning_text", text=self.reasoning_text),
            ),
            self._item("response.output_item.done", 0, self._reasoning_item("completed")),
        ]

    def _open_message(self) -> list[str]:
        out = self._close_reasoning() if self.phase == "reasoning" else []
        self.phase = "message"
        index, mid = self._message_index, self.prepared.message_id
        out.append(
            self._item("response.output_item.added", index, self._message_item("in_progress", None))
        )
        out.append(self._part("response.content_part.added", index, mid, OutputText(text="")))
        return out

    def content(self, delta: str) -> list[str]:
        if not delta:
            return []
        out = self._open_message() if self.phase != "message" else []
        self.content_text += delta
        event = TextDeltaEvent(
            sequence_number=self._next(),
            item_id=self.prepared.message_id,
            output_index=self._message_index,
            content_index=0,
            delta=delta,
        )
        return [*out, self._frame(event)]

    def close(self, *, incomplete: bool) -> list[str]:
        """Finish the open items; a message item is always sent, even an empty one."""
        out = self._open_message() if self.phase != "message" else []
        index, mid = self._message_index, self.prepared.message_id
        done = TextDoneEvent(
            sequence_number=self._next(),
            item_id=mid,
            output_index=index,
            content_index=0,
            text=self.content_text,
        )
        status = "incomplete" if incomplete else "completed"
        return [
            *out,
            self._frame(done),
            self._part(
                "response.content_part.done", index, mid, OutputText(text=self.content_text)
            ),
            self._item(
                "response.output_item.done", index, self._message_item(status, self.content_text)
            ),
        ]

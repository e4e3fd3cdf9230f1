"""`/v1/chat/completions` logic: request -> prompt ids + images -> engine -> OpenAI response.

`prepare` does everything that can fail with a 4xx (model name, tools, admission, prompt
rendering, media, context length, the engine's check of output constraints) before any byte is
sent; `complete` and `stream` then drive the engine. A failure after streaming started arrives as
a final SSE error event. Closing the stream (client gone) closes the engine generator, which
aborts the engine request. A forced tool call comes back as `tool_calls` (server/serving/tools.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from server.engine.contract import GenerateRequest, SamplingOptions
from server.errors import APIError
from server.metrics import (
    DOCUMENT_PAGES_PER_REQUEST,
    DOCUMENT_TOKENS_PER_REQUEST,
    IMAGE_TOKENS_PER_REQUEST,
    IMAGES_PER_REQUEST,
    VIDEO_FRAMES_PER_REQUEST,
    VIDEO_TOKENS_PER_REQUEST,
)
from server.protocol.chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatFinishReason,
    DeltaMessage,
    FunctionCallDelta,
    ToolCallDelta,
)
from server.protocol.common import ChoiceLogprobs, Usage
from server.serving.choices import ChoiceState, FirstTokenTimer, chat_logprobs
from server.serving.context import ServingContext, ignored_params
from server.serving.documents import PreparedDocument, document_refs, prepare_documents
from server.serving.images import PreparedImage, check_image_count, prepare_images
from server.serving.prompt import (
    IMAGE_MARKER_TEXT,
    ImageRef,
    page_marker,
    render_prompt,
    truncate_prompt,
)
from server.serving.sampling import check_token_ids, max_output_tokens, sampling_options
from server.serving.streaming import SSE_DONE, sse_error_event, sse_event
from server.serving.tools import (
    check_tools,
    new_call_id,
    parse_tool_call,
    tool_constraint,
    tools_turn_text,
)
from server.serving.videos import PreparedVideo, prepare_videos, video_block_tokens

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedChat:
    """A validated request, ready for the engine. `release()` must be called when done."""

    request: ChatCompletionRequest
    engine_request: GenerateRequest
    num_prompt_tokens: int
    reasoning: bool
    response_id: str
    created: int
    started: float  # time.perf_counter() when handling began (for TTFT)
    done: Callable[[], None]  # releases the admission ticket; idempotent
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    echo: str = ""  # `echo`: the final assistant text, repeated before the new content


@dataclass(slots=True)
class ChatPrompt:
    """A chat request's prompt: token ids with one pad per image and one block per video, the
    loaded media, and the prompt length the engine will see (media expanded)."""

    token_ids: list[int]
    images: list[PreparedImage]  # image parts and document pages, in prompt order
    videos: list[PreparedVideo]
    num_prompt_tokens: int
    documents: list[PreparedDocument] = field(default_factory=list)
    document_tokens: int = 0  # page markers and page images


async def build_chat_prompt(ctx: ServingContext, request: ChatCompletionRequest) -> ChatPrompt:
    """Render the template and load every image, video and document part (400s name the
    part). Documents are rendered first: their page counts shape the prompt."""
    mm_kwargs = request.mm_processor_kwargs
    budget = ctx.image_budget_for(mm_kwargs.in_token_limit if mm_kwargs else None)
    documents = await prepare_documents(
        document_refs(request.messages),
        requested=request.document,
        policy=ctx.document_policy,
        limits=ctx.media_limits,
        budget=budget,
        files=ctx.files,
    )
    rendered = render_prompt(
        request.messages,
        ctx.tokenizer,
        ctx.specials,
        add_generation_prompt=request.generation_prompt,
        continue_final_message=request.continue_final_message,
        tools_text=tools_turn_text(request),
        documents={key: doc.numbers for key, doc in documents.items()},
    )
    image_refs = [ref for ref in rendered.images if isinstance(ref, ImageRef)]
    check_image_count(image_refs, ctx.settings.limit_images_per_request)
    video_options = ctx.video_policy.options(request.video)
    ctx.video_policy.check_count(rendered.videos)
    loaded = iter(await prepare_images(image_refs, limits=ctx.media_limits, budget=budget))
    images = [
        next(loaded)
        if isinstance(ref, ImageRef)
        else documents[(ref.message_index, ref.part_index)].pages[ref.index]
        for ref in rendered.images
    ]
    videos = await prepare_videos(
        rendered.videos,
        options=video_options,
        limits=ctx.media_limits,
        cfg=ctx.image_budget.model,
        max_seconds=ctx.video_policy.max_seconds,
        tokenizer=ctx.tokenizer,
    )
    # Each image's single <|media_pad|> expands to its token count in the engine; each video's
    # whole block is replaced by its frames (server/serving/videos.py).
    num_prompt_tokens = (
        len(rendered.token_ids)
        + sum(image.num_tokens for image in images)
        - len(images)
        + sum(video.num_prompt_tokens for video in videos)
        - len(videos) * video_block_tokens(ctx.tokenizer)
    )
    docs = list(documents.values())
    document_tokens = sum(
        len(ctx.tokenizer.encode_text(page_marker(n))) + _block_tokens(ctx) + page.num_tokens - 1
        for doc in docs
        for n, page in zip(doc.numbers, doc.pages, strict=True)
    )
    return ChatPrompt(rendered.token_ids, images, videos, num_prompt_tokens, docs, document_tokens)


def _splits_reasoning(ctx: ServingContext, options: SamplingOptions) -> bool:
    """Whether the output is split into reasoning and content (constrained output is not)."""
    return ctx.model_info.reasoning and options.constraint is None


def _block_tokens(ctx: ServingContext) -> int:
    """Tokens of an image block with its one pad: start, marker text, content, pad, end."""
    return len(ctx.tokenizer.encode_text(IMAGE_MARKER_TEXT)) + 4


class ChatCompletions:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def prepare(self, request: ChatCompletionRequest, request_id: str) -> PreparedChat:
        started = time.perf_counter()
        ctx = self.ctx
        ctx.check_model(request.model)
        ctx.check_engine()
        check_tools(request)
        ticket = ctx.gate.admit(request_id, request.n)
        try:
            check_token_ids(request, ctx.vocab_size)
            inputs = await build_chat_prompt(ctx, request)
            images, videos = inputs.images, inputs.videos
            token_ids, num_prompt_tokens = truncate_prompt(
                inputs.token_ids,
                inputs.num_prompt_tokens,
                request.truncate_prompt_tokens,
                max_model_len=ctx.model_info.max_model_len,
                media_start=ctx.specials.media_start,
            )
            max_tokens = max_output_tokens(
                request.effective_max_tokens,
                num_prompt_tokens,
                ctx.model_info.max_model_len,
                ctx.defaults.get("max_tokens"),
                param="messages",
            )
            options = sampling_options(
                request,
                ctx.defaults,
                max_tokens=max_tokens,
                logprobs=request.logprobs,
                top_logprobs=request.top_logprobs or 0,
                constraint=tool_constraint(request),
            )
            media: dict[str, list[Any]] = {}
            if images:
                media["image"] = [image.image for image in images]
            if videos:
                media["video"] = [video.engine_item() for video in videos]
            engine_request = GenerateRequest(
                request_id=ticket.request_id,
                prompt_token_ids=token_ids,
                sampling=options,
                multi_modal_data=media or None,
                priority=request.priority,
                cache_salt=request.cache_salt,
                # Non-streamed without a reasoning split: nothing reads the tokens as they come.
                final_only=not request.stream and not _splits_reasoning(ctx, options),
            )
            ctx.check(engine_request, _constraint_param(request))
        except BaseException:
            ticket.release()
            raise
        IMAGES_PER_REQUEST.observe(len(images))
        if images:
            IMAGE_TOKENS_PER_REQUEST.observe(sum(image.num_tokens for image in images))
        return PreparedChat(
            request=request,
            engine_request=engine_request,
            num_prompt_tokens=num_prompt_tokens,
            # Constrained output (JSON, a tool call, a regex…) has no room for ◁think▷ markers.
            reasoning=_splits_reasoning(ctx, options),
            response_id=f"chatcmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            started=started,
            done=ticket.release,
            headers={
                **_video_report(videos),
                **_document_report(inputs),
                **ignored_params(request, "chat"),
            },
            echo=_echo_text(request),
        )

    # -- non-streaming ----------------------------------------------------------------------
    async def complete(self, prepared: PreparedChat) -> ChatCompletion:
        request = prepared.request
        states = [ChoiceState(i, reasoning=prepared.reasoning) for i in range(request.n)]
        prompt_tokens, cached = prepared.num_prompt_tokens, 0
        timer = FirstTokenTimer(prepared.started)
        try:
            async with aclosing(self.ctx.generate(prepared.engine_request)) as outputs:
                async for out in outputs:
                    timer.saw(*states[out.index].add(out), out.first_token_time)
                    prompt_tokens, cached = out.num_prompt_tokens, out.num_cached_tokens
        finally:
            prepared.done()
        choices = []
        for state in states:
            reasoning, content = state.split()
            if not request.include_reasoning:
                reasoning = None
            message = ChatCompletionMessage(
                content=prepared.echo + content, reasoning_content=reasoning, reasoning=reasoning
            )
            finish: ChatFinishReason = state.finish_reason or "stop"
            if request.forced_tool is not None:
                call = parse_tool_call(request, content, new_call_id())
                if call is not None:
                    message.content, message.tool_calls, finish = None, [call], "tool_calls"
            choices.append(
                ChatCompletionChoice(
                    index=state.index,
                    message=message,
                    logprobs=ChoiceLogprobs(content=chat_logprobs(state.logprobs))
                    if request.logprobs
                    else None,
                    finish_reason=finish,
                )
            )
        return ChatCompletion(
            id=prepared.response_id,
            created=prepared.created,
            model=self.ctx.model_name,
            choices=choices,
            usage=_usage(states, prompt_tokens, cached),
        )

    # -- streaming --------------------------------------------------------------------------
    async def stream(self, prepared: PreparedChat) -> AsyncGenerator[str, None]:
        """SSE events: role chunk per choice, deltas, finish chunks, optional usage, [DONE]."""
        request = prepared.request
        states = [ChoiceState(i, reasoning=prepared.reasoning) for i in range(request.n)]
        calls = [_StreamedCall(request, prepared.echo) for _ in states]
        prompt_tokens, cached = prepared.num_prompt_tokens, 0
        timer = FirstTokenTimer(prepared.started)
        try:
            for state, call in zip(states, calls, strict=True):
                yield self._chunk(prepared, state.index, DeltaMessage(role="assistant", content=""))
                opening = call.opening()
                if opening is not None:
                    yield self._chunk(prepared, state.index, opening)
            async with aclosing(self.ctx.generate(prepared.engine_request)) as outputs:
                async for out in outputs:
                    prompt_tokens, cached = out.num_prompt_tokens, out.num_cached_tokens
                    state = states[out.index]
                    reasoning, content = state.add(out)
                    timer.saw(reasoning, content)
                    if not request.include_reasoning:
                        reasoning = ""
                    delta = calls[out.index].delta(reasoning, content, state)
                    logprobs = None
                    if request.logprobs and out.logprobs:
                        logprobs = ChoiceLogprobs(content=chat_logprobs(out.logprobs))
                    finish = calls[out.index].finish(state) if out.finished else None
                    if delta is not None or finish is not None or logprobs is not None:
                        yield self._chunk(
                            prepared,
                            state.index,
                            delta or DeltaMessage(),
                            logprobs=logprobs,
                            finish=finish,
                        )
            if request.include_usage_in_stream:
                usage = _usage(states, prompt_tokens, cached)
                chunk = ChatCompletionChunk(
                    id=prepared.response_id,
                    created=prepared.created,
                    model=self.ctx.model_name,
                    choices=[],
                    usage=usage,
                )
                yield sse_event(chunk.model_dump_json())
        except Exception as exc:  # the stream has started: report in-band, then end it
            if not isinstance(exc, APIError):
                logger.exception("Chat stream %s failed", prepared.engine_request.request_id)
            yield sse_error_event(exc)
        finally:
            prepared.done()
        yield SSE_DONE

    def _chunk(
        self,
        prepared: PreparedChat,
        index: int,
        delta: DeltaMessage,
        *,
        logprobs: ChoiceLogprobs | None = None,
        finish: ChatFinishReason | None = None,
    ) -> str:
        chunk = ChatCompletionChunk(
            id=prepared.response_id,
            created=prepared.created,
            model=self.ctx.model_name,
            choices=[
                ChatCompletionChunkChoice(
                    index=index,
                    delta=delta,
                    logprobs=logprobs,
                    finish_reason=finish,
                )
            ],
        )
        return sse_event(chunk.model_dump_json())


class _StreamedCall:
    """How one choice's text turns into stream deltas: plain content (after the `echo` text), the
    arguments of a named forced call as they are generated, or a `required` call whose function
    name is only known once the whole JSON is there (sent in one delta at the end)."""

    def __init__(self, request: ChatCompletionRequest, echo: str) -> None:
        self.request = request
        self.forced = request.forced_tool
        self.call_id = new_call_id()
        self.echo = echo

    def opening(self) -> DeltaMessage | None:
        if self.echo:
            return DeltaMessage(content=self.echo)
        if self.forced is not None and self.forced != "*":
            head = ToolCallDelta(
                index=0,
                id=self.call_id,
                type="function",
                function=FunctionCallDelta(name=self.forced, arguments=""),
            )
            return DeltaMessage(tool_calls=[head])
        return None

    def delta(self, reasoning: str, content: str, state: ChoiceState) -> DeltaMessage | None:
        if self.forced == "*":
            if not state.finish_reason:
                return None  # the name is not known before the whole call is
            call = parse_tool_call(self.request, state.text, self.call_id)
            if call is None:
                return DeltaMessage(content=state.text) if state.text else None
            head = ToolCallDelta(
                index=0,
                id=call.id,
                type="function",
                function=FunctionCallDelta(
                    name=call.function.name, arguments=call.function.arguments
                ),
            )
            return DeltaMessage(tool_calls=[head])
        if self.forced is not None:
            if not content:
                return None
            return DeltaMessage(
                tool_calls=[ToolCallDelta(index=0, function=FunctionCallDelta(arguments=content))]
            )
        if not (reasoning or content):
            return None
        return DeltaMessage(
            content=content or None,
            reasoning_content=reasoning or None,
            reasoning=reasoning or None,
        )

    def finish(self, state: ChoiceState) -> ChatFinishReason:
        if self.forced is not None and parse_tool_call(self.request, state.text, self.call_id):
            return "tool_calls"
        return state.finish_reason or "stop"


def _video_report(videos: list[PreparedVideo]) -> dict[str, str]:
    """Frames and prompt tokens the videos used: metrics, and headers for the client."""
    if not videos:
        return {}
    frames = sum(video.num_frames for video in videos)
    tokens = sum(video.num_prompt_tokens for video in videos)
    VIDEO_FRAMES_PER_REQUEST.observe(frames)
    VIDEO_TOKENS_PER_REQUEST.observe(tokens)
    return {"X-Video-Frames": str(frames), "X-Video-Tokens": str(tokens)}


def _document_report(prompt: ChatPrompt) -> dict[str, str]:
    """Pages and prompt tokens the documents used: metrics, and headers for the client."""
    if not prompt.documents:
        return {}
    pages = sum(len(doc.numbers) for doc in prompt.documents)
    DOCUMENT_PAGES_PER_REQUEST.observe(pages)
    DOCUMENT_TOKENS_PER_REQUEST.observe(prompt.document_tokens)
    return {"X-Document-Pages": str(pages), "X-Document-Tokens": str(prompt.document_tokens)}


def _usage(states: list[ChoiceState], prompt_tokens: int, cached: int) -> Usage:
    return Usage.build(
        prompt_tokens,
        sum(state.num_tokens for state in states),
        cached=cached,
        reasoning=sum(state.reasoning_tokens for state in states),
    )


def _echo_text(request: ChatCompletionRequest) -> str:
    """vLLM's chat `echo`: the last message's text when it is the assistant's own (continued)."""
    last = request.messages[-1]
    return last.text if request.echo and last.role == "assistant" else ""


def _constraint_param(request: ChatCompletionRequest) -> str | None:
    """The field an output-constraint error belongs to."""
    if request.forced_tool is not None:
        return "tools"
    if request.structured_outputs is not None:
        return "structured_outputs"
    if request.response_format is not None:
        return "response_format"
    return None

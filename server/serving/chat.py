"""`/v1/chat/completions` logic: request -> prompt ids + images -> engine -> OpenAI response.

`prepare` does everything that can fail with a 4xx (model name, admission, prompt rendering,
media, context length) before any byte is sent; `complete` and `stream` then drive the engine.
A failure after streaming started arrives as a final SSE error event. Closing the stream
(client gone) closes the engine generator, which aborts the engine request.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from server.engine.contract import GenerateOutput, GenerateRequest
from server.errors import APIError
from server.metrics import (
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
    DeltaMessage,
)
from server.protocol.common import ChoiceLogprobs, FinishReason, Usage
from server.serving.choices import ChoiceState, FirstTokenTimer, chat_logprobs
from server.serving.context import ServingContext
from server.serving.images import check_image_count, prepare_images
from server.serving.prompt import render_prompt
from server.serving.sampling import check_token_ids, max_output_tokens, sampling_options
from server.serving.streaming import SSE_DONE, sse_error_event, sse_event
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


class ChatCompletions:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def prepare(self, request: ChatCompletionRequest, request_id: str) -> PreparedChat:
        started = time.perf_counter()
        ctx = self.ctx
        ctx.check_model(request.model)
        ctx.check_engine()
        ticket = ctx.gate.admit(request_id, request.n)
        try:
            check_token_ids(request, ctx.vocab_size)
            rendered = render_prompt(request.messages, ctx.tokenizer, ctx.specials)
            check_image_count(rendered.images, ctx.settings.limit_images_per_request)
            video_options = ctx.video_policy.options(request.video)
            ctx.video_policy.check_count(rendered.videos)
            images = await prepare_images(
                rendered.images, limits=ctx.media_limits, budget=ctx.image_budget
            )
            videos = await prepare_videos(
                rendered.videos,
                options=video_options,
                limits=ctx.media_limits,
                cfg=ctx.image_budget.model,
                max_seconds=ctx.video_policy.max_seconds,
                tokenizer=ctx.tokenizer,
            )
            image_tokens = sum(image.num_tokens for image in images)
            video_tokens = sum(video.num_prompt_tokens for video in videos)
            # Each image's single <|media_pad|> expands to its token count in the engine; each
            # video's whole block is replaced by its frames (server/serving/videos.py).
            num_prompt_tokens = (
                len(rendered.token_ids)
                + image_tokens
                - len(images)
                + video_tokens
                - len(videos) * video_block_tokens(ctx.tokenizer)
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
            )
        except BaseException:
            ticket.release()
            raise
        IMAGES_PER_REQUEST.observe(len(images))
        if images:
            IMAGE_TOKENS_PER_REQUEST.observe(image_tokens)
        media: dict[str, list[Any]] = {}
        if images:
            media["image"] = [image.image for image in images]
        if videos:
            media["video"] = [video.engine_item() for video in videos]
        engine_request = GenerateRequest(
            request_id=ticket.request_id,
            prompt_token_ids=rendered.token_ids,
            sampling=options,
            multi_modal_data=media or None,
        )
        return PreparedChat(
            request=request,
            engine_request=engine_request,
            num_prompt_tokens=num_prompt_tokens,
            reasoning=ctx.model_info.reasoning,
            response_id=f"chatcmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            started=started,
            done=ticket.release,
            headers=_video_report(videos),
        )

    # -- non-streaming ----------------------------------------------------------------------
    async def complete(self, prepared: PreparedChat) -> ChatCompletion:
        request = prepared.request
        states = [ChoiceState(i, reasoning=prepared.reasoning) for i in range(request.n)]
        prompt_tokens, cached = prepared.num_prompt_tokens, 0
        timer = FirstTokenTimer(prepared.started)
        try:
            async with aclosing(self.ctx.engine.generate(prepared.engine_request)) as outputs:
                async for out in outputs:
                    timer.saw(*states[out.index].add(out))
                    prompt_tokens, cached = out.num_prompt_tokens, out.num_cached_tokens
        finally:
            prepared.done()
        choices = []
        for state in states:
            reasoning, content = state.split()
            if not request.include_reasoning:
                reasoning = None
            choices.append(
                ChatCompletionChoice(
                    index=state.index,
                    message=ChatCompletionMessage(
                        content=content, reasoning_content=reasoning, reasoning=reasoning
                    ),
                    logprobs=ChoiceLogprobs(content=chat_logprobs(state.logprobs))
                    if request.logprobs
                    else None,
                    finish_reason=state.finish_reason or "stop",
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
        prompt_tokens, cached = prepared.num_prompt_tokens, 0
        timer = FirstTokenTimer(prepared.started)
        try:
            for state in states:
                delta = DeltaMessage(role="assistant", content="")
                yield self._chunk(prepared, state.index, delta)
            async with aclosing(self.ctx.engine.generate(prepared.engine_request)) as outputs:
                async for out in outputs:
                    prompt_tokens, cached = out.num_prompt_tokens, out.num_cached_tokens
                    state = states[out.index]
                    reasoning, content = state.add(out)
                    timer.saw(reasoning, content)
                    if not request.include_reasoning:
                        reasoning = ""
                    if reasoning or content or out.finished or (request.logprobs and out.logprobs):
                        yield self._delta_chunk(prepared, out, state, reasoning, content)
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

    def _delta_chunk(
        self,
        prepared: PreparedChat,
        out: GenerateOutput,
        state: ChoiceState,
        reasoning: str,
        content: str,
    ) -> str:
        delta = DeltaMessage(
            content=content or None,
            reasoning_content=reasoning or None,
            reasoning=reasoning or None,
        )
        logprobs = None
        if prepared.request.logprobs and out.logprobs:
            logprobs = ChoiceLogprobs(content=chat_logprobs(out.logprobs))
        finish = state.finish_reason if out.finished else None
        return self._chunk(prepared, state.index, delta, logprobs=logprobs, finish=finish)

    def _chunk(
        self,
        prepared: PreparedChat,
        index: int,
        delta: DeltaMessage,
        *,
        logprobs: ChoiceLogprobs | None = None,
        finish: FinishReason | None = None,
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


def _video_report(videos: list[PreparedVideo]) -> dict[str, str]:
    """Frames and prompt tokens the videos used: metrics, and headers for the client."""
    if not videos:
        return {}
    frames = sum(video.num_frames for video in videos)
    tokens = sum(video.num_prompt_tokens for video in videos)
    VIDEO_FRAMES_PER_REQUEST.observe(frames)
    VIDEO_TOKENS_PER_REQUEST.observe(tokens)
    return {"X-Video-Frames": str(frames), "X-Video-Tokens": str(tokens)}


def _usage(states: list[ChoiceState], prompt_tokens: int, cached: int) -> Usage:
    return Usage.build(
        prompt_tokens,
        sum(state.num_tokens for state in states),
        cached=cached,
        reasoning=sum(state.reasoning_tokens for state in states),
    )

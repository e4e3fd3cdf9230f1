"""`/v1/completions` logic: raw prompt(s) -> engine -> OpenAI text completions.

The prompt is used as given (no chat template). Special-token strings in it are honoured, as
with vLLM's own endpoint — this endpoint exists for callers who build prompts themselves.
Images are a chat feature: a prompt that contains the image placeholder is refused. Each
prompt is one engine request; choice `index` is prompt_index * n + choice. With `echo` each
choice's text starts with its prompt (as given, or decoded when given as ids or truncated).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from server.engine.contract import GenerateOutput, GenerateRequest, TokenLogprob
from server.errors import APIError, InvalidRequest
from server.protocol.common import Usage
from server.protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from server.serving.choices import ChoiceState, FirstTokenTimer
from server.serving.context import ServingContext, ignored_params
from server.serving.prompt import truncate_prompt
from server.serving.sampling import check_token_ids, max_output_tokens, sampling_options
from server.serving.streaming import SSE_DONE, merge_streams, sse_error_event, sse_event

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PreparedCompletion:
    request: CompletionRequest
    engine_requests: list[GenerateRequest]
    num_prompt_tokens: list[int]
    response_id: str
    created: int
    started: float
    done: Callable[[], None]
    echoes: list[str]  # per prompt: the text `echo` puts before each choice ("" without echo)
    headers: dict[str, str]


def completion_logprobs(
    steps: Sequence[TokenLogprob], offsets: Sequence[int]
) -> CompletionLogprobs:
    """Legacy logprobs; `offsets[i]` is where token i's text starts in the choice text."""
    result = CompletionLogprobs()
    for step, offset in zip(steps, offsets, strict=True):
        result.tokens.append(step.token)
        result.token_logprobs.append(step.logprob)
        result.top_logprobs.append({top.token: top.logprob for top in step.top})
        result.text_offset.append(offset)
    return result


class TextCompletions:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _encode(self, request: CompletionRequest) -> list[list[int]]:
        tokenizer = self.ctx.tokenizer
        prompts = [
            prompt
            if isinstance(prompt, list)
            else tokenizer.encode(prompt, add_special_tokens=False)
            for prompt in request.prompt
        ]
        pad = self.ctx.specials.media_pad
        vocab = self.ctx.vocab_size
        for i, ids in enumerate(prompts):
            param = f"prompt[{i}]" if len(prompts) > 1 else "prompt"
            if pad in ids:
                raise InvalidRequest(
                    "Images are supported in /v1/chat/completions only; the prompt contains "
                    "the image placeholder token.",
                    param=param,
                )
            if not ids:
                raise InvalidRequest("The prompt is empty.", param=param)
            # Checked here, so that a streamed request gets a 400 rather than an error event.
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    f"Token id {bad} in the prompt is outside the vocabulary (size {vocab}).",
                    param=param,
                    code="invalid_value",
                )
        return prompts

    async def prepare(self, request: CompletionRequest, request_id: str) -> PreparedCompletion:
        started = time.perf_counter()
        ctx = self.ctx
        ctx.check_model(request.model)
        ctx.check_engine()
        if request.echo and request.logprobs is not None:
            raise InvalidRequest(
                "'echo' with 'logprobs' is not supported (no prompt logprobs); drop one of them.",
                param="echo",
            )
        ticket = ctx.gate.admit(request_id, request.n * len(request.prompt))
        try:
            check_token_ids(request, ctx.vocab_size)
            prompts = self._encode(request)
            engine_requests, echoes = [], []
            for i, encoded in enumerate(prompts):
                ids, _ = truncate_prompt(
                    encoded,
                    len(encoded),
                    request.truncate_prompt_tokens,
                    max_model_len=ctx.model_info.max_model_len,
                    media_start=ctx.specials.media_start,
                )
                prompts[i] = ids
                echoes.append(self._echo(request, i, ids, truncated=ids is not encoded))
                max_tokens = max_output_tokens(
                    request.max_tokens,
                    len(ids),
                    ctx.model_info.max_model_len,
                    ctx.defaults.get("max_tokens"),
                    param="prompt",
                )
                options = sampling_options(
                    request,
                    ctx.defaults,
                    max_tokens=max_tokens,
                    logprobs=request.logprobs is not None,
                    top_logprobs=request.logprobs or 0,
                )
                rid = ticket.request_id if len(prompts) == 1 else f"{ticket.request_id}:{i}"
                engine_request = GenerateRequest(
                    rid,
                    ids,
                    options,
                    priority=request.priority,
                    cache_salt=request.cache_salt,
                    final_only=not request.stream,
                )
                ctx.check(
                    engine_request, "structured_outputs" if request.structured_outputs else None
                )
                engine_requests.append(engine_request)
        except BaseException:
            ticket.release()
            raise
        return PreparedCompletion(
            request=request,
            engine_requests=engine_requests,
            num_prompt_tokens=[len(ids) for ids in prompts],
            response_id=f"cmpl-{secrets.token_hex(12)}",
            created=int(time.time()),
            started=started,
            done=ticket.release,
            echoes=echoes,
            headers=ignored_params(request, "completions"),
        )

    def _echo(self, request: CompletionRequest, index: int, ids: list[int], truncated: bool) -> str:
        if not request.echo:
            return ""
        given = request.prompt[index]
        if isinstance(given, str) and not truncated:
            return given
        text = self.ctx.tokenizer.decode(ids, skip_special_tokens=False)
        return text if isinstance(text, str) else "".join(text)

    def _streams(
        self, prepared: PreparedCompletion
    ) -> AsyncGenerator[tuple[int, GenerateOutput], None]:
        return merge_streams([self.ctx.generate(r) for r in prepared.engine_requests])

    def _usage(self, prepared: PreparedCompletion, states: list[ChoiceState]) -> Usage:
        prompt_tokens = sum(prepared.num_prompt_tokens)
        return Usage.build(prompt_tokens, sum(s.num_tokens for s in states))

    async def complete(self, prepared: PreparedCompletion) -> Completion:
        request = prepared.request
        n = request.n
        states = [ChoiceState(i, reasoning=False) for i in range(n * len(request.prompt))]
        timer = FirstTokenTimer(prepared.started)
        try:
            async with aclosing(self._streams(prepared)) as outputs:
                async for prompt_index, out in outputs:
                    timer.saw(*states[prompt_index * n + out.index].add(out), out.first_token_time)
        finally:
            prepared.done()
        choices = [
            CompletionChoice(
                index=state.index,
                text=prepared.echoes[state.index // n] + state.text,
                logprobs=completion_logprobs(state.logprobs, state.logprob_offsets)
                if request.logprobs is not None
                else None,
                finish_reason=state.finish_reason or "stop",
            )
            for state in states
        ]
        return Completion(
            id=prepared.response_id,
            created=prepared.created,
            model=self.ctx.model_name,
            choices=choices,
            usage=self._usage(prepared, states),
        )

    async def stream(self, prepared: PreparedCompletion) -> AsyncGenerator[str, None]:
        request = prepared.request
        n = request.n
        states = [ChoiceState(i, reasoning=False) for i in range(n * len(request.prompt))]
        timer = FirstTokenTimer(prepared.started)
        try:
            echoed = [
                CompletionChoice(index=state.index, text=prepared.echoes[state.index // n])
                for state in states
                if prepared.echoes[state.index // n]
            ]
            if echoed:
                yield sse_event(self._chunk(prepared, echoed).model_dump_json())
            async with aclosing(self._streams(prepared)) as outputs:
                async for prompt_index, out in outputs:
                    state = states[prompt_index * n + out.index]
                    known = len(state.logprobs)
                    _, text = state.add(out)
                    timer.saw("", text)
                    logprobs = None
                    if request.logprobs is not None and out.logprobs:
                        logprobs = completion_logprobs(
                            state.logprobs[known:], state.logprob_offsets[known:]
                        )
                    choice = CompletionChoice(
                        index=state.index,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=state.finish_reason if out.finished else None,
                    )
                    yield sse_event(self._chunk(prepared, [choice]).model_dump_json())
            if request.include_usage_in_stream:
                chunk = self._chunk(prepared, [], usage=self._usage(prepared, states))
                yield sse_event(chunk.model_dump_json())
        except Exception as exc:
            if not isinstance(exc, APIError):
                logger.exception("Completion stream %s failed", prepared.response_id)
            yield sse_error_event(exc)
        finally:
            prepared.done()
        yield SSE_DONE

    def _chunk(
        self,
        prepared: PreparedCompletion,
        choices: list[CompletionChoice],
        usage: Usage | None = None,
    ) -> Completion:
        return Completion(
            id=prepared.response_id,
            created=prepared.created,
            model=self.ctx.model_name,
            choices=choices,
            usage=usage,
        )

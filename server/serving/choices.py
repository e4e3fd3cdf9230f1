"""Per-choice accumulation of engine steps: text, reasoning split, token counts, logprobs.

Reasoning tokens are counted at engine-step granularity (one token per step in practice): a
step whose text starts before the end of the reasoning section — the ◁/think▷ marker included —
counts as reasoning. That is exact whenever each step carries one token, which is how the
adapter streams (DELTA outputs); a step that carries several tokens is attributed as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from server.engine.contract import GenerateOutput, TokenLogprob
from server.errors import InternalError, RequestAborted
from server.metrics import TIME_TO_FIRST_CONTENT_TOKEN, TIME_TO_FIRST_TOKEN
from server.protocol.common import ChatCompletionTokenLogprob, FinishReason, TopLogprob
from server.serving.reasoning import ReasoningSplitter, reasoning_end, split_reasoning


def openai_finish_reason(out: GenerateOutput) -> FinishReason:
    """Engine finish reason -> OpenAI's; failures become errors."""
    if out.finish_reason == "length":
        return "length"
    if out.finish_reason == "error":
        raise InternalError("The engine failed while generating this response.")
    if out.finish_reason == "abort":
        raise RequestAborted("The request was aborted by the server (it may be shutting down).")
    return "stop"


class ChoiceState:
    """Everything the response needs about one of the n choices."""

    def __init__(self, index: int, *, reasoning: bool) -> None:
        self.index = index
        self._splitter = ReasoningSplitter() if reasoning else None
        self._text: list[str] = []
        self._steps: list[tuple[int, int]] = []  # (text offset where the step starts, tokens)
        self._offset = 0
        self.num_tokens = 0
        self.logprobs: list[TokenLogprob] = []
        self.logprob_offsets: list[int] = []  # text offset of each logprob's step
        self.finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        return "".join(self._text)

    def add(self, out: GenerateOutput) -> tuple[str, str]:
        """Record a step; return the (reasoning, content) text that can be sent now."""
        self._text.append(out.text_delta)
        self._steps.append((self._offset, len(out.token_ids)))
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
            self.logprob_offsets.extend([self._offset] * len(out.logprobs))
        self._offset += len(out.text_delta)
        self.num_tokens = out.num_completion_tokens
        if self._splitter is None:
            reasoning, content = "", out.text_delta
        else:
            reasoning, content = self._splitter.feed(out.text_delta)
        if out.finished:
            self.finish_reason = openai_finish_reason(out)
            if self._splitter is not None:
                more_reasoning, more_content = self._splitter.finish()
                reasoning, content = reasoning + more_reasoning, content + more_content
        return reasoning, content

    def split(self) -> tuple[str | None, str]:
        """(reasoning or None, content) of the whole output."""
        if self._splitter is None:
            return None, self.text
        return split_reasoning(self.text)

    @property
    def reasoning_tokens(self) -> int:
        if self._splitter is None:
            return 0
        end = reasoning_end(self.text)
        return sum(tokens for start, tokens in self._steps if start < end)


def chat_logprobs(steps: Sequence[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=step.token,
            logprob=step.logprob,
            bytes=list(step.token.encode()),
            top_logprobs=[
                TopLogprob(token=top.token, logprob=top.logprob, bytes=list(top.token.encode()))
                for top in step.top
            ],
        )
        for step in steps
    ]


@dataclass(slots=True)
class FirstTokenTimer:
    """Observes time to first token and to first content token (after reasoning), once each,
    for streamed and non-streamed requests alike. A `final_only` engine output reports when
    its first token came (`first_token_time`, wall clock); such requests have no reasoning
    split, so that is also their first content token."""

    started: float  # time.perf_counter() when handling began
    token_seen: bool = False
    content_seen: bool = False

    def saw(self, reasoning: str, content: str, first_token_time: float | None = None) -> None:
        if not (reasoning or content) or self.content_seen:
            return
        elapsed = time.perf_counter() - self.started
        if first_token_time is not None:  # now - (now - first token), on the wall clock
            elapsed = max(0.0, elapsed - (time.time() - first_token_time))
        if not self.token_seen:
            self.token_seen = True
            TIME_TO_FIRST_TOKEN.observe(elapsed)
        if content:
            self.content_seen = True
            TIME_TO_FIRST_CONTENT_TOKEN.observe(elapsed)

"""The stand-in engine for tests of front-end logic (API, serving, contract).

It implements the `Engine` Protocol of server/engine/contract.py (checked by mypy below and by
`tests/engine/test_contract.py`), uses the tiny checkpoint's real tokenizer and the model's real
image-token arithmetic, so prompt-length and usage numbers are the ones the real engine would
report. Real-engine behaviour is tested in tests/e2e and tests/model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from server.engine.contract import (
    Engine,
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    RequestRejectedError,
    TokenLogprob,
    TopLogprob,
)
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.tiny import PREPROCESSOR_CONFIG
from server.model.tokenizer import TikTokenTokenizer


class FakeEngine:
    """Streams `script` (one step per item) for every choice; records what it was asked."""

    def __init__(
        self,
        tokenizer: TikTokenTokenizer,
        *,
        script: Sequence[str] = ("Hello", " world", "!"),
        max_model_len: int = 4096,
        reasoning: bool = False,
        max_num_seqs: int = 4,
        generation_defaults: dict[str, Any] | None = None,
        step_delay: float = 0.0,
    ) -> None:
        self._tokenizer = tokenizer
        self.script = list(script)
        self.info = ModelInfo(
            root="fake/model",
            max_model_len=max_model_len,
            reasoning=reasoning,
            max_num_seqs=max_num_seqs,
            preprocessor_config=PREPROCESSOR_CONFIG,
            generation_defaults=generation_defaults or {},
        )
        self.step_delay = step_delay  # seconds between script steps (a model's pace)
        self.steps_done = 0  # script steps generated, all requests together
        self.requests: list[GenerateRequest] = []
        self.closed: list[str] = []
        self.hold: asyncio.Event | None = None  # set: generation waits until it is set
        self.fail_at_step: int | None = None
        self.alive = True
        self.ready = False
        self.reject: str | None = None  # check() refuses with this message when set

    @property
    def tokenizer(self) -> TikTokenTokenizer:
        return self._tokenizer

    @property
    def model_info(self) -> ModelInfo:
        return self.info

    async def start(self) -> None:
        self.alive = self.ready = True  # also a restart after a death

    async def stop(self) -> None:
        self.ready = False

    def is_alive(self) -> bool:
        return self.alive

    def is_ready(self) -> bool:
        return self.ready and self.alive

    def expanded_prompt_len(self, request: GenerateRequest) -> int:
        cfg = ImageProcessorConfig.from_dict(dict(PREPROCESSOR_CONFIG))
        images = (request.multi_modal_data or {}).get("image", [])
        extra = sum(num_image_tokens(im.width, im.height, cfg) - 1 for im in images)
        return len(request.prompt_token_ids) + extra

    def check(self, request: GenerateRequest) -> None:
        """Refuses with `self.reject` (a message) when a test sets it."""
        if self.reject is not None:
            raise RequestRejectedError(self.reject)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateOutput, None]:
        self.requests.append(request)
        try:
            if self.hold is not None:
                await self.hold.wait()
            prompt_len = self.expanded_prompt_len(request)
            produced = [0] * request.sampling.n
            for step, text in enumerate(self.script):
                if step == self.fail_at_step:
                    raise RuntimeError("engine exploded")
                ids = tuple(self._tokenizer.encode_text(text))
                last = step == len(self.script) - 1
                for index in range(request.sampling.n):
                    produced[index] += len(ids)
                    yield GenerateOutput(
                        index=index,
                        text_delta=text,
                        token_ids=ids,
                        num_prompt_tokens=prompt_len,
                        num_completion_tokens=produced[index],
                        logprobs=_logprobs(ids, text, request.sampling.top_logprobs)
                        if request.sampling.logprobs
                        else None,
                        finish_reason="length" if last else None,
                    )
                self.steps_done += 1
                await asyncio.sleep(self.step_delay)
        finally:
            self.closed.append(request.request_id)


def _logprobs(ids: tuple[int, ...], text: str, top: int) -> tuple[TokenLogprob, ...]:
    alternatives = tuple(
        TopLogprob(token_id=i, token=f"alt{i}", logprob=-1.0 - i) for i in range(top)
    )
    return tuple(
        TokenLogprob(token_id=t, token=text if k == 0 else "", logprob=-0.5, top=alternatives)
        for k, t in enumerate(ids)
    )


def _conforms(tokenizer: TikTokenTokenizer) -> Engine:
    return FakeEngine(tokenizer)  # mypy checks FakeEngine against the Engine Protocol here

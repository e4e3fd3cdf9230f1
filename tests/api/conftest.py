"""API tests of pure front-end logic: the real app over a scripted stand-in engine.

Only these tests use a fake engine (DESIGN.md §4); tests/e2e runs the real server. The fake
uses the tiny checkpoint's real tokenizer and the model's real image-token arithmetic, so
prompt-length and usage numbers are the ones the real engine would report.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
import pytest_asyncio
from PIL import Image

from server.app import create_app
from server.engine.contract import (
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    TokenLogprob,
    TopLogprob,
)
from server.model.image_processing import ImageProcessorConfig, num_image_tokens
from server.model.tiny import PREPROCESSOR_CONFIG
from server.model.tokenizer import TikTokenTokenizer
from server.settings import Settings, load_settings
from tests.tiny_tokenizer import load_tiny_tokenizer

MODEL = "test-model"


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
    ) -> None:
        self._tokenizer = tokenizer
        self.script = list(script)
        self.info = ModelInfo(
            name=MODEL,
            root="fake/model",
            max_model_len=max_model_len,
            reasoning=reasoning,
            max_num_seqs=max_num_seqs,
            preprocessor_config=PREPROCESSOR_CONFIG,
            generation_defaults=generation_defaults or {},
        )
        self.requests: list[GenerateRequest] = []
        self.closed: list[str] = []
        self.hold: asyncio.Event | None = None  # set: generation waits until it is set
        self.fail_at_step: int | None = None
        self.alive = True
        self.ready = False

    @property
    def tokenizer(self) -> TikTokenTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def model_info(self) -> ModelInfo:
        return self.info

    async def start(self) -> None:
        self.ready = True

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
                await asyncio.sleep(0)
        finally:
            self.closed.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.closed.append(request_id)


def _logprobs(ids: tuple[int, ...], text: str, top: int) -> tuple[TokenLogprob, ...]:
    alternatives = tuple(
        TopLogprob(token_id=i, token=f"alt{i}", logprob=-1.0 - i) for i in range(top)
    )
    return tuple(
        TokenLogprob(token_id=t, token=text if k == 0 else "", logprob=-0.5, top=alternatives)
        for k, t in enumerate(ids)
    )


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TikTokenTokenizer:
    return load_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def api_settings(**overrides: Any) -> Settings:
    return load_settings({"model": "fake/model", "served_model_name": MODEL, **overrides})


@pytest_asyncio.fixture
async def make_client(
    tokenizer: TikTokenTokenizer,
) -> AsyncIterator[Callable[..., Any]]:
    """`await make_client(engine_kwargs..., settings=dict(...), start=True)` -> (client, engine)."""
    clients: list[httpx.AsyncClient] = []

    async def build(
        *, settings: dict[str, Any] | None = None, start: bool = True, **engine_kwargs: Any
    ) -> tuple[httpx.AsyncClient, FakeEngine]:
        engine = FakeEngine(tokenizer, **engine_kwargs)
        app = create_app(api_settings(**(settings or {})), engine)
        if start:
            await engine.start()  # httpx's ASGITransport does not run the lifespan
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=10
        )
        clients.append(client)
        return client, engine

    yield build
    for client in clients:
        await client.aclose()


def png_data_url(width: int, height: int, color: tuple[int, int, int] = (200, 30, 40)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sse_events(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in body.split("\n") if line.startswith("data: ")]

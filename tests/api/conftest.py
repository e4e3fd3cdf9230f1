"""API tests of pure front-end logic: the real app over the scripted stand-in engine of
tests/fake_engine.py; tests/e2e runs the real server."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest_asyncio
from PIL import Image

from server.app import create_app
from server.model.tokenizer import TikTokenTokenizer
from server.settings import Settings, load_settings
from tests.fake_engine import FakeEngine

MODEL = "test-model"


def api_settings(**overrides: Any) -> Settings:
    return load_settings({"model": "fake/model", "served_model_name": MODEL, **overrides})


@pytest_asyncio.fixture
async def make_client(
    kimi_tokenizer: TikTokenTokenizer,
) -> AsyncIterator[Callable[..., Any]]:
    """`await make_client(engine_kwargs..., settings=dict(...), start=True)` -> (client, engine)."""
    clients: list[httpx.AsyncClient] = []

    async def build(
        *, settings: dict[str, Any] | None = None, start: bool = True, **engine_kwargs: Any
    ) -> tuple[httpx.AsyncClient, FakeEngine]:
        engine = FakeEngine(kimi_tokenizer, **engine_kwargs)
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

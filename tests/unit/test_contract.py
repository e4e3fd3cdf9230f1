"""The engine contract: a stand-in engine satisfies the Protocol and streams per-choice steps."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from server.engine import (
    Engine,
    GenerateOutput,
    GenerateRequest,
    ModelInfo,
    PromptTooLongError,
    SamplingOptions,
)


class ByteTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(token_ids).decode(errors="replace")


class EchoEngine:
    """Echoes the prompt back, one token per step, for each of the n choices."""

    def __init__(self) -> None:
        self._ready = False
        self.aborted: list[str] = []

    @property
    def tokenizer(self) -> ByteTokenizer:
        return ByteTokenizer()

    @property
    def max_model_len(self) -> int:
        return 64

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(name="echo", root="/dev/null", max_model_len=64, reasoning=False)

    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    def is_alive(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return self._ready

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        prompt = list(request.prompt_token_ids)
        if len(prompt) > self.max_model_len:
            raise PromptTooLongError(len(prompt), self.max_model_len)
        limit = request.sampling.max_tokens or len(prompt)
        for step, token in enumerate(prompt[:limit], start=1):
            for index in range(request.sampling.n):
                last = step == min(limit, len(prompt))
                yield GenerateOutput(
                    index=index,
                    text_delta=chr(token),
                    token_ids=(token,),
                    num_prompt_tokens=len(prompt),
                    num_completion_tokens=step,
                    finish_reason=("length" if limit < len(prompt) else "stop") if last else None,
                )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.mark.asyncio
async def test_stand_in_engine_satisfies_contract() -> None:
    engine = EchoEngine()
    assert isinstance(engine, Engine)
    await engine.start()
    assert engine.is_ready()
    request = GenerateRequest(
        request_id="r1",
        prompt_token_ids=engine.tokenizer.encode("hey"),
        sampling=SamplingOptions(n=2, max_tokens=2, stop=("x",)),
    )
    outputs = [out async for out in engine.generate(request)]
    texts = {i: "".join(o.text_delta for o in outputs if o.index == i) for i in (0, 1)}
    assert texts == {0: "he", 1: "he"}
    finals = [o for o in outputs if o.finished]
    assert [(o.finish_reason, o.num_completion_tokens) for o in finals] == [("length", 2)] * 2
    assert request.arrival_time > 0


def test_sampling_options_are_immutable() -> None:
    options = SamplingOptions()
    with pytest.raises(AttributeError):
        options.n = 3  # type: ignore[misc]


def test_contract_does_not_import_vllm() -> None:
    source = Path(__file__).resolve().parents[2] / "server" / "engine" / "contract.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "typing" in imported  # the walk sees imports at all
    assert "vllm" not in imported and "torch" not in imported

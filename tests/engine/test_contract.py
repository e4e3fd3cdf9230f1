"""The engine contract: the shared stand-in engine satisfies the Protocol and streams per-choice
steps the way the services consume them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from server.engine import Engine, GenerateRequest, SamplingOptions
from server.model.tokenizer import TikTokenTokenizer
from tests.fake_engine import FakeEngine


@pytest.mark.asyncio
async def test_stand_in_engine_satisfies_contract(kimi_tokenizer: TikTokenTokenizer) -> None:
    engine = FakeEngine(kimi_tokenizer, script=("he", "y"))
    assert isinstance(engine, Engine)
    assert not engine.is_ready()
    await engine.start()
    assert engine.is_ready()
    request = GenerateRequest(
        request_id="r1",
        prompt_token_ids=kimi_tokenizer.encode_text("hey"),
        sampling=SamplingOptions(n=2, max_tokens=2),
    )
    outputs = [out async for out in engine.generate(request)]
    texts = {i: "".join(o.text_delta for o in outputs if o.index == i) for i in (0, 1)}
    assert texts == {0: "hey", 1: "hey"}
    finals = [o for o in outputs if o.finished]
    assert [o.index for o in finals] == [0, 1]
    assert all(o.num_completion_tokens == len(kimi_tokenizer.encode_text("hey")) for o in finals)
    assert engine.closed == ["r1"]


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

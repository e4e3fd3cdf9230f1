"""Our class compiled by vLLM (dynamo + inductor on CPU: the decoder is `@support_torch_compile`
and the fused MoE an opaque custom op) gives what it gives eager, and what vLLM's built-in class
gives compiled: greedy tokens identical and logprobs within 1e-4 (fp32), for text, one image,
three images, a video, and with tensor parallelism 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.model.conftest import RunGenerate
from tests.model.test_parity import logprob_diffs

pytestmark = pytest.mark.slow

CASES = ("text", "one_image", "three_images")


def same(a: dict, b: dict) -> None:
    assert a["num_prompt_tokens"] == b["num_prompt_tokens"]
    assert len(a["token_ids"]) == 32 and a["token_ids"] == b["token_ids"]
    assert max(logprob_diffs(a, b, 32)) < 1e-4


@pytest.fixture(scope="module")
def cases(parity_cases: Path, video_cases: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parity cases and a video, in one engine run (a compiled start costs ~25 s)."""
    video = [c for c in json.loads(video_cases.read_text()) if c["name"] == "video"]
    path = tmp_path_factory.mktemp("compiled") / "cases.json"
    path.write_text(json.dumps([*json.loads(parity_cases.read_text()), *video]))
    return path


def eager(run_generate: RunGenerate, video_cases: Path, case: str) -> dict:
    """The eager result of `case`, from the runs the parity and video tests make (a request's
    result does not depend on what it is batched with: test_parity)."""
    if case == "video":
        return run_generate("ours", cases=video_cases)["cases"][case]
    return run_generate("ours")["cases"][case]


@pytest.mark.parametrize("case", (*CASES, "video"))
def test_compiled_equals_eager(
    run_generate: RunGenerate, cases: Path, video_cases: Path, case: str
) -> None:
    compiled = run_generate("ours", cases=cases, compiled=True)
    assert compiled["architecture"] == "KimiVLForConditionalGeneration"
    same(compiled["cases"][case], eager(run_generate, video_cases, case))


@pytest.mark.parametrize("case", CASES)
def test_compiled_equals_builtin_compiled(run_generate, cases: Path, case: str) -> None:
    builtin = run_generate("builtin", compiled=True)
    assert builtin["architecture"] == "KimiVLBuiltinReference"
    ours = run_generate("ours", cases=cases, compiled=True)
    same(ours["cases"][case], builtin["cases"][case])


@pytest.mark.parametrize("case", CASES)
def test_compiled_tensor_parallel_2_equals_eager(run_generate, case: str) -> None:
    tp2 = run_generate("ours", tp=2, compiled=True)["cases"][case]
    assert tp2["token_ids"] == run_generate("ours", tp=2)["cases"][case]["token_ids"]

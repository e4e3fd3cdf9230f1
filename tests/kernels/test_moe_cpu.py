"""CPU MoE implementations vs the reference, through the public API, outputs NaN-poisoned."""

from __future__ import annotations

import pytest
import torch

from kernels.fused_moe import cpu_vllm, fused_experts, select_experts
from tests.kernels.moe_testing import KIMI_SCALE, assert_close, make_problem

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["cpu:torch", "cpu:vllm-sgl", "cpu:vllm-vec"]
HIDDEN, WIDTH, SHARED = 64, 48, 80  # width and shared width not multiples of 32


def require(impl: str, dtype: torch.dtype, hidden: int = HIDDEN) -> None:
    """Skip (with the reason) when this machine cannot run `impl` for `dtype`."""
    kind = impl.removeprefix("cpu:")
    if kind != "torch" and kind not in cpu_vllm.available_kinds(dtype, hidden):
        pytest.skip(f"{impl} unavailable here for {dtype} (vLLM CPU build / ISA)")


# Every token count with both expert counts, every top-k with both (pairwise, not the
# full product: the suite has to stay fast on two cores).
CASES = [
    (1, 64, 6), (1, 8, 1), (3, 8, 2), (3, 64, 1), (7, 64, 2),
    (7, 8, 6), (33, 8, 1), (33, 64, 6), (257, 64, 2), (257, 8, 6),
]  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,num_experts,top_k", CASES)
def test_cpu_matches_reference(impl, dtype, m, num_experts, top_k):
    require(impl, dtype)
    p = make_problem(
        m, num_experts, HIDDEN, WIDTH, top_k, dtype, shared_width=SHARED, seed=m + top_k
    )
    weights = p.weights(impl)
    assert weights.backend == impl
    assert_close(p.run(weights), p.reference(), dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("routing", ["skip0", "one"])
@pytest.mark.parametrize("top_k", [1, 6])
def test_cpu_empty_expert_and_all_tokens_to_one_expert(impl, dtype, routing, top_k):
    require(impl, dtype)
    p = make_problem(33, 8, HIDDEN, WIDTH, top_k, dtype, shared_width=SHARED, routing=routing)
    assert_close(p.run(p.weights(impl)), p.reference(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared_width", [None, 56])
def test_torch_impl_with_hidden_and_width_off_every_block(dtype, shared_width):
    p = make_problem(7, 8, 72, 20, 2, dtype, shared_width=shared_width)
    # vLLM's kernels need the hidden size to be a multiple of 32, so "cpu" must fall back.
    weights = p.weights("cpu")
    assert weights.backend == "cpu:torch"
    assert_close(p.run(weights), p.reference(), dtype)


@pytest.mark.parametrize("impl", ["cpu:vllm-sgl", "cpu:vllm-vec"])
def test_vllm_impls_pad_an_odd_width(impl):
    require(impl, torch.bfloat16)
    p = make_problem(9, 8, HIDDEN, 20, 2, torch.bfloat16, shared_width=56)
    assert_close(p.run(p.weights(impl)), p.reference(), torch.bfloat16)


def test_cpu_picks_the_fastest_available_impl(monkeypatch):
    p = make_problem(3, 8, HIDDEN, WIDTH, 2, torch.bfloat16, shared_width=SHARED)
    kinds = cpu_vllm.available_kinds(torch.bfloat16, HIDDEN)
    expected = f"cpu:{kinds[0]}" if kinds else "cpu:torch"
    assert p.weights("auto").backend == p.weights("cpu").backend == expected
    # Without vLLM the package falls back to its own implementation.
    monkeypatch.setattr(cpu_vllm, "_vllm_ops", lambda: None)
    assert cpu_vllm.available_kinds(torch.bfloat16, HIDDEN) == []
    weights = p.weights("cpu")
    assert weights.backend == "cpu:torch"
    assert_close(p.run(weights), p.reference(), torch.bfloat16)


def test_forcing_an_unavailable_vllm_kernel_fails_loudly(monkeypatch):
    monkeypatch.setattr(cpu_vllm, "_vllm_ops", lambda: None)
    p = make_problem(3, 8, HIDDEN, WIDTH, 2, torch.bfloat16)
    with pytest.raises(ValueError, match="unavailable"):
        p.weights("cpu:vllm-vec")


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_experts_for_routing_chosen_outside_match_the_whole_block(impl, dtype):
    """fused_experts (what the compiled decoder calls, routing traced into its graph) ==
    fused_moe routing inside, for every backend that routes outside its kernel."""
    if impl != "reference":
        require(impl, dtype)
    p = make_problem(33, 64, HIDDEN, WIDTH, 6, dtype, shared_width=SHARED, seed=5)
    weights = p.weights(impl)
    assert not weights.routes_in_kernel
    topk_weights, topk_ids = select_experts(p.logits, p.bias, 6, KIMI_SCALE)
    out = torch.full_like(p.hidden, float("nan"))
    assert fused_experts(p.hidden, topk_weights, topk_ids, weights, out=out) is out
    assert_close(out, p.reference(), dtype)
    assert_close(fused_experts(p.hidden, topk_weights, topk_ids, weights), p.run(weights), dtype)


def test_fused_experts_rejects_routing_it_cannot_use():
    p = make_problem(3, 8, HIDDEN, WIDTH, 2, torch.float32)
    weights = p.weights("cpu:torch")
    topk_weights, topk_ids = select_experts(p.logits, p.bias, 2, KIMI_SCALE)
    with pytest.raises(ValueError, match=r"\[3, k\]"):
        fused_experts(p.hidden, topk_weights[:2], topk_ids, weights)
    with pytest.raises(ValueError, match="int32"):
        fused_experts(p.hidden, topk_weights, topk_ids.long(), weights)
    with pytest.raises(ValueError, match="hidden_states"):
        fused_experts(p.hidden[:, :8], topk_weights, topk_ids, weights)
    triton = p.weights("triton")  # routes in its first launch: it takes the logits
    assert triton.routes_in_kernel
    with pytest.raises(ValueError, match="fused_moe"):
        fused_experts(p.hidden, topk_weights, topk_ids, triton)

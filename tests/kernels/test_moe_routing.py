"""Routing (docs/model.md, MoE routing) and pair alignment: vectorised vs per-token loop, edge cases."""

from __future__ import annotations

import pytest
import torch

from kernels.fused_moe import select_experts
from kernels.fused_moe.reference import select_experts_loop
from kernels.fused_moe.routing import (
    append_shared_slots,
    max_padded_pairs,
    moe_align_block_size,
)

SCALE = 2.446


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("num_experts", [8, 64])
@pytest.mark.parametrize("top_k", [1, 2, 6])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16])
def test_select_experts_matches_per_token_loop(m, num_experts, top_k, renormalize, logits_dtype):
    g = torch.Generator().manual_seed(m * 100 + num_experts + top_k)
    logits = torch.randn(m, num_experts, generator=g).to(logits_dtype)
    bias = torch.randn(num_experts, generator=g) * 0.1
    weights, ids = select_experts(logits, bias, top_k, SCALE, renormalize)
    ref_weights, ref_ids = select_experts_loop(logits, bias, top_k, SCALE, renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (m, top_k)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=1e-7)
    if renormalize:
        torch.testing.assert_close(weights.sum(1), torch.full((m,), SCALE), rtol=1e-5, atol=0)


def test_ties_go_to_the_lower_expert_index():
    logits = torch.full((2, 8), -5.0)
    logits[0, [6, 2, 5]] = 0.0  # three-way tie for the best score
    logits[1] = 1.0  # every expert ties
    weights, ids = select_experts(logits, None, 2, SCALE)
    assert ids.tolist() == [[2, 5], [0, 1]]
    torch.testing.assert_close(weights, torch.full((2, 2), SCALE / 2))
    assert torch.equal(ids, select_experts_loop(logits, None, 2, SCALE)[1])


def test_bias_changes_the_choice_but_not_the_weights():
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0]])
    bias = torch.tensor([-10.0, 0.0, 0.0, 10.0])  # demote expert 0, promote expert 3
    weights, ids = select_experts(logits, bias, 2, SCALE)
    assert ids.tolist() == [[3, 1]]
    scores = torch.sigmoid(torch.tensor([-1.0, 2.0]))  # unbiased scores of experts 3 and 1
    torch.testing.assert_close(weights[0], scores / scores.sum() * SCALE)
    unbiased_weights, unbiased_ids = select_experts(logits, None, 2, SCALE)
    assert unbiased_ids.tolist() == [[0, 1]]
    assert not torch.allclose(unbiased_weights, weights)


def test_without_renormalize_weights_are_scaled_scores():
    logits = torch.tensor([[0.5, -0.25, 2.0]])
    weights, ids = select_experts(logits, None, 2, SCALE, renormalize=False)
    assert ids.tolist() == [[2, 0]]
    torch.testing.assert_close(weights[0], torch.sigmoid(torch.tensor([2.0, 0.5])) * SCALE)


def test_routing_rejects_bad_arguments():
    logits = torch.zeros(3, 8)
    with pytest.raises(ValueError, match="top_k"):
        select_experts(logits, None, 9, SCALE)
    with pytest.raises(ValueError, match="correction_bias"):
        select_experts(logits, torch.zeros(7), 2, SCALE)
    with pytest.raises(ValueError, match="router_logits"):
        select_experts(torch.zeros(8), None, 2, SCALE)


def test_zero_tokens_route_to_empty_tensors():
    weights, ids = select_experts(torch.zeros(0, 8), torch.zeros(8), 2, SCALE)
    assert weights.shape == ids.shape == (0, 2)


def test_append_shared_slots_routes_every_token_with_weight_one():
    weights, ids = select_experts(torch.randn(3, 8), None, 2, SCALE)
    all_weights, all_ids = append_shared_slots(weights, ids, 8, 2)
    assert all_ids[:, 2:].tolist() == [[8, 9]] * 3
    assert torch.equal(all_weights[:, 2:], torch.ones(3, 2))
    assert torch.equal(all_ids[:, :2], ids) and torch.equal(all_weights[:, :2], weights)


def check_alignment(topk_ids: torch.Tensor, num_experts: int, block: int) -> None:
    """Brute-force check of every documented property of moe_align_block_size."""
    sorted_ids, block_experts, post = moe_align_block_size(topk_ids, num_experts, block)
    flat = topk_ids.flatten().tolist()
    num_pairs = len(flat)
    p_max = max_padded_pairs(num_pairs, num_experts, block)
    assert sorted_ids.shape == (p_max,) and block_experts.shape == (-(-p_max // block),)
    counts = [flat.count(e) for e in range(num_experts)]
    used = sum(-(-c // block) * block for c in counts)
    assert post.tolist() == [used]
    seen = []
    for b, expert in enumerate(block_experts.tolist()):
        entries = sorted_ids[b * block : (b + 1) * block].tolist()
        if b * block >= used:
            assert expert == -1 and all(p == num_pairs for p in entries)
            continue
        real = [p for p in entries if p != num_pairs]
        assert all(flat[p] == expert for p in real)
        # Padding only at the end of an expert's run.
        assert entries[: len(real)] == real
        seen += real
    assert sorted(seen) == list(range(num_pairs))
    for e in range(num_experts):
        run = [p for p in seen if flat[p] == e]
        assert run == sorted(run)  # token order within an expert
        assert (e in block_experts.tolist()) == (counts[e] > 0)


@pytest.mark.parametrize("m", [0, 1, 7, 33])
@pytest.mark.parametrize("num_experts", [8, 64])
@pytest.mark.parametrize("block", [1, 4, 16])
def test_moe_align_block_size(m, num_experts, block):
    _, ids = select_experts(torch.randn(m, num_experts), None, min(6, num_experts), SCALE)
    check_alignment(ids, num_experts, block)


def test_moe_align_every_token_to_one_expert_and_empty_experts():
    ids = torch.full((9, 1), 3, dtype=torch.int32)
    check_alignment(ids, 8, 4)
    sorted_ids, block_experts, post = moe_align_block_size(ids, 8, 4)
    assert post.item() == 12 and block_experts.tolist()[:3] == [3, 3, 3]

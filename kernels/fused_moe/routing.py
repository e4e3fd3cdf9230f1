"""Routing (token -> top-k experts) and block alignment of token/expert pairs.

`select_experts` is the public router: docs/model.md#moe-routing in fp32 (see reference.py for
the rule). `moe_align_block_size` sorts the (token, expert) pairs by expert and pads
each expert's run to a multiple of the GEMM block, which is the layout the grouped GEMMs
consume; it is written in torch ops without host synchronisation, so it is both the
readable spec of the Triton route+align kernel and usable inside a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import select_experts_reference


def check_routing_args(router_logits: Tensor, correction_bias: Tensor | None, top_k: int) -> None:
    """Raise ValueError for router inputs that no backend can route."""
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [M, E], got shape {tuple(router_logits.shape)}")
    num_experts = router_logits.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    if correction_bias is not None and tuple(correction_bias.shape) != (num_experts,):
        raise ValueError(
            f"correction_bias must be [{num_experts}], got {tuple(correction_bias.shape)}"
        )


def select_experts(
    router_logits: Tensor,
    correction_bias: Tensor | None,
    top_k: int,
    routed_scaling_factor: float,
    renormalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """(topk_weights fp32 [M, k], topk_ids int32 [M, k]), ranked best first.

    Sigmoid scores in fp32, choice by score + correction_bias (ties: lower expert index),
    weights = unbiased scores / (sum + 1e-20) * routed_scaling_factor.
    """
    check_routing_args(router_logits, correction_bias, top_k)
    weights, ids = select_experts_reference(
        router_logits, correction_bias, top_k, routed_scaling_factor, renormalize
    )
    return weights.contiguous(), ids.contiguous()


def append_shared_slots(
    topk_weights: Tensor, topk_ids: Tensor, num_experts: int, num_shared: int
) -> tuple[Tensor, Tensor]:
    """Route every token also to the `num_shared` shared-expert slots E..E+S-1 (weight 1).

    This is how the shared MLP rides along in the routed experts' grouped GEMM.
    """
    if num_shared == 0:
        return topk_weights, topk_ids
    m = topk_ids.shape[0]
    shared_ids = torch.arange(
        num_experts, num_experts + num_shared, dtype=torch.int32, device=topk_ids.device
    ).expand(m, num_shared)
    shared_weights = torch.ones(m, num_shared, dtype=torch.float32, device=topk_ids.device)
    return (
        torch.cat([topk_weights, shared_weights], dim=1).contiguous(),
        torch.cat([topk_ids, shared_ids], dim=1).contiguous(),
    )


def max_padded_pairs(num_pairs: int, num_experts: int, block_size: int) -> int:
    """Upper bound of the aligned pair count: each non-empty expert adds < block_size pads."""
    return num_pairs + min(num_experts, num_pairs) * (block_size - 1)


def moe_align_block_size(
    topk_ids: Tensor, num_experts: int, block_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Sort (token, slot) pairs by expert and pad each expert's run to `block_size`.

    Pair p = token * k + slot. Returns
      sorted_pair_ids [P_max] int32: pair ids grouped by expert (token order within an
        expert), padding entries hold M*k (one past the last pair);
      block_expert_ids [cdiv(P_max, block_size)] int32: expert of each block, -1 past the end;
      num_pairs_post_padded [1] int32: aligned length actually used.
    P_max = `max_padded_pairs(M*k, E, block_size)` depends only on shapes, so the
    outputs have static sizes and no value is read back to the host.
    """
    device = topk_ids.device
    flat = topk_ids.flatten().long()
    num_pairs = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_size - 1) // block_size * block_size
    padded_ends = torch.cumsum(padded, 0)
    padded_starts = padded_ends - padded
    unpadded_starts = torch.cumsum(counts, 0) - counts

    order = torch.argsort(flat, stable=True)  # stable: token order within an expert
    sorted_experts = flat[order]
    rank = torch.arange(num_pairs, device=device) - unpadded_starts[sorted_experts]
    positions = padded_starts[sorted_experts] + rank

    p_max = max_padded_pairs(num_pairs, num_experts, block_size)
    sorted_pair_ids = torch.full((p_max,), num_pairs, dtype=torch.int32, device=device)
    sorted_pair_ids[positions] = order.to(torch.int32)

    num_blocks = (p_max + block_size - 1) // block_size
    block_starts = torch.arange(num_blocks, device=device) * block_size
    owner = torch.searchsorted(padded_ends, block_starts, right=True)
    block_expert_ids = torch.where(owner < num_experts, owner, -1).to(torch.int32)
    num_pairs_post_padded = padded_ends[-1:].to(torch.int32)
    return sorted_pair_ids, block_expert_ids, num_pairs_post_padded

"""Fused MoE for Kimi-VL's decoder (64 routed experts, top-6 sigmoid routing, shared MLP).

Public interface used by the model's MoE block:
  select_experts(router_logits, correction_bias, top_k, routed_scaling_factor, renormalize)
  MoEWeights.from_stacked(w13, w2, shared_w13, shared_w2, backend="auto")
  fused_moe(hidden_states, router_logits, weights, *, top_k, routed_scaling_factor,
            correction_bias, renormalize=True)
Importing this package imports neither vLLM nor Triton; backends load them on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .routing import check_routing_args, select_experts
from .weights import MoEWeights

__all__ = ["MoEWeights", "fused_moe", "select_experts"]


def fused_moe(
    hidden_states: Tensor,
    router_logits: Tensor,
    weights: MoEWeights,
    *,
    top_k: int,
    routed_scaling_factor: float,
    correction_bias: Tensor | None,
    renormalize: bool = True,
    out: Tensor | None = None,
) -> Tensor:
    """MoE block output [M, H] in hidden_states.dtype: sum_k w_k * expert_k(x) + shared(x).

    hidden_states [M, H] in the weights' dtype; router_logits [M, E] (any float dtype,
    routing runs in fp32). With tensor parallelism the caller passes weights sharded along
    the expert width and all-reduces the result. `out` (optional, [M, H], contiguous,
    hidden_states.dtype) receives the result and is returned.
    """
    check_routing_args(router_logits, correction_bias, top_k)
    m = hidden_states.shape[0]
    if hidden_states.dim() != 2 or hidden_states.shape[1] != weights.hidden_size:
        raise ValueError(
            f"hidden_states must be [M, {weights.hidden_size}], got {tuple(hidden_states.shape)}"
        )
    if tuple(router_logits.shape) != (m, weights.num_experts):
        raise ValueError(
            f"router_logits must be [{m}, {weights.num_experts}], got {tuple(router_logits.shape)}"
        )
    if hidden_states.dtype != weights.dtype:
        raise ValueError(f"hidden_states is {hidden_states.dtype}, weights are {weights.dtype}")
    if out is not None and (
        out.shape != hidden_states.shape
        or out.dtype != hidden_states.dtype
        or not out.is_contiguous()
    ):
        raise ValueError(f"out must be a contiguous {hidden_states.dtype} [M, H] tensor")
    if m == 0:
        return torch.empty_like(hidden_states) if out is None else out
    return weights.experts(
        hidden_states,
        router_logits,
        top_k=top_k,
        routed_scaling_factor=routed_scaling_factor,
        correction_bias=correction_bias,
        renormalize=renormalize,
        out=out,
    )

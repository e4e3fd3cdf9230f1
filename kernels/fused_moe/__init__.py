"""Fused MoE for Kimi-VL's decoder (64 routed experts, top-6 sigmoid routing, shared MLP).

Public interface used by the model's MoE block:
  select_experts(router_logits, correction_bias, top_k, routed_scaling_factor, renormalize)
  MoEWeights.from_stacked(w13, w2, shared_w13, shared_w2, backend="auto")
  fused_moe(hidden_states, router_logits, weights, *, top_k, routed_scaling_factor,
            correction_bias, renormalize=True)
  fused_experts(hidden_states, topk_weights, topk_ids, weights)  (where not
            weights.routes_in_kernel: routing from select_experts, e.g. in a compiled graph)
Importing this package imports neither vLLM nor Triton; backends load them on first use.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from .routing import check_routing_args, select_experts
from .weights import MoEWeights, RoutedOutside

__all__ = ["MoEWeights", "fused_experts", "fused_moe", "select_experts"]


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
    m = _check_inputs(hidden_states, weights, out)
    if tuple(router_logits.shape) != (m, weights.num_experts):
        raise ValueError(
            f"router_logits must be [{m}, {weights.num_experts}], got {tuple(router_logits.shape)}"
        )
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


def fused_experts(
    hidden_states: Tensor,
    topk_weights: Tensor,
    topk_ids: Tensor,
    weights: MoEWeights,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """The MoE block for routing chosen by the caller: sum_k topk_weights[:, k] *
    expert_{topk_ids[:, k]}(x) + shared(x), [M, H] in hidden_states.dtype.

    topk_weights fp32 [M, k] and topk_ids int32 [M, k] as `select_experts` returns them (each
    token's ids distinct, in [0, E)). For backends that route outside their kernels
    (`weights.routes_in_kernel` False: the CPU ones and the reference); Triton routes inside
    its first launch, so it takes `fused_moe`.
    """
    if weights.routes_in_kernel:
        raise ValueError(f"the {weights.backend} backend routes in its kernel: call fused_moe")
    m = _check_inputs(hidden_states, weights, out)
    if topk_ids.dim() != 2 or topk_ids.shape[0] != m or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights and topk_ids must both be [{m}, k], got "
            f"{tuple(topk_weights.shape)} and {tuple(topk_ids.shape)}"
        )
    if topk_weights.dtype != torch.float32 or topk_ids.dtype != torch.int32:
        raise ValueError(
            f"topk_weights must be float32 and topk_ids int32, got {topk_weights.dtype} and "
            f"{topk_ids.dtype}"
        )
    if m == 0:
        return torch.empty_like(hidden_states) if out is None else out
    experts = cast(RoutedOutside, weights.experts)
    return experts.experts(hidden_states, topk_weights.contiguous(), topk_ids.contiguous(), out)


def _check_inputs(hidden_states: Tensor, weights: MoEWeights, out: Tensor | None) -> int:
    """M, after checking hidden_states [M, H] and `out` against the weights."""
    if hidden_states.dim() != 2 or hidden_states.shape[1] != weights.hidden_size:
        raise ValueError(
            f"hidden_states must be [M, {weights.hidden_size}], got {tuple(hidden_states.shape)}"
        )
    if hidden_states.dtype != weights.dtype:
        raise ValueError(f"hidden_states is {hidden_states.dtype}, weights are {weights.dtype}")
    if out is not None and (
        out.shape != hidden_states.shape
        or out.dtype != hidden_states.dtype
        or not out.is_contiguous()
    ):
        raise ValueError(f"out must be a contiguous {hidden_states.dtype} [M, H] tensor")
    return int(hidden_states.shape[0])

"""Executable spec of Kimi-VL's MoE block (docs/model.md#moe-routing) in plain torch.

Every fast path in this package is tested against these functions. Two levels:

* `select_experts_reference` / `fused_moe_reference`: vectorised torch, readable as
  the math (einsum-sized steps, shapes in comments); also the "reference" backend.
* `select_experts_loop` / `fused_moe_loop`: a dumb per-token Python loop that shares
  no code with the above, so a bug in one is not silently repeated in the other.

Routing rule (the spec): scores = sigmoid(logits) in fp32; experts are ranked by
scores + correction_bias, highest first, ties broken by the lower expert index; the
weights are the *unbiased* scores of the chosen experts, divided by (their sum + 1e-20)
when renormalising, then multiplied by the routed scaling factor. The shared MLP is
added unscaled. Expert MLP: down(silu(gate(x)) * up(x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RENORM_EPS = 1e-20


def select_experts_reference(
    router_logits: Tensor,
    correction_bias: Tensor | None,
    top_k: int,
    routed_scaling_factor: float,
    renormalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Route each token: (topk_weights fp32 [M, k], topk_ids int32 [M, k]).

    A stable descending sort implements "ties go to the lower expert index";
    torch.topk leaves the order of equal values unspecified.
    """
    scores = router_logits.float().sigmoid()  # [M, E]
    choice = scores if correction_bias is None else scores + correction_bias.float()
    ids = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :top_k]
    weights = scores.gather(1, ids)  # unbiased scores of the chosen experts
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + RENORM_EPS)
    return weights * routed_scaling_factor, ids.to(torch.int32)


def expert_mlp(x: Tensor, w13: Tensor, w2: Tensor) -> Tensor:
    """SiLU-gated MLP in fp32: x [T, H], w13 [2N, H] (gate rows then up rows), w2 [H, N]."""
    n = w2.shape[1]
    gate_up = x.float() @ w13.float().t()  # [T, 2N]
    return (F.silu(gate_up[:, :n]) * gate_up[:, n:]) @ w2.float().t()  # [T, H]


def fused_moe_reference(
    hidden_states: Tensor,
    router_logits: Tensor,
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor | None,
    shared_w2: Tensor | None,
    *,
    top_k: int,
    routed_scaling_factor: float,
    correction_bias: Tensor | None,
    renormalize: bool = True,
) -> Tensor:
    """MoE block output [M, H] in hidden_states.dtype; all math in fp32.

    w13 [E, 2N, H], w2 [E, H, N]; shared_w13 [2Ns, H], shared_w2 [H, Ns].
    """
    weights, ids = select_experts_reference(
        router_logits, correction_bias, top_k, routed_scaling_factor, renormalize
    )
    return experts_reference(hidden_states, weights, ids, w13, w2, shared_w13, shared_w2)


def experts_reference(
    hidden_states: Tensor,
    topk_weights: Tensor,
    topk_ids: Tensor,
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor | None,
    shared_w2: Tensor | None,
) -> Tensor:
    """The experts for given routing (topk_weights / topk_ids [M, k]): sum_k w_k *
    expert_k(x) + shared(x), in hidden_states.dtype; all math in fp32."""
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
    for e in topk_ids.unique().tolist():
        token, slot = (topk_ids == e).nonzero(as_tuple=True)  # an expert once per token
        y = expert_mlp(hidden_states[token], w13[e], w2[e])  # [T_e, H]
        out.index_add_(0, token, y * topk_weights[token, slot].float().unsqueeze(1))
    if shared_w13 is not None and shared_w2 is not None:
        out += expert_mlp(hidden_states, shared_w13, shared_w2)
    return out.to(hidden_states.dtype)


def select_experts_loop(
    router_logits: Tensor,
    correction_bias: Tensor | None,
    top_k: int,
    routed_scaling_factor: float,
    renormalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-token Python routing, same contract as `select_experts_reference`."""
    num_tokens, num_experts = router_logits.shape
    weights = torch.zeros(num_tokens, top_k, dtype=torch.float32)
    ids = torch.zeros(num_tokens, top_k, dtype=torch.int32)
    bias = [0.0] * num_experts if correction_bias is None else correction_bias.float().tolist()
    for m in range(num_tokens):
        scores = [float(torch.sigmoid(router_logits[m, e].float())) for e in range(num_experts)]
        # The choice is rounded to fp32 like the spec's, so ties compare the same way.
        choice = [
            float(torch.tensor(scores[e]) + torch.tensor(bias[e])) for e in range(num_experts)
        ]
        chosen = sorted(range(num_experts), key=lambda e: (-choice[e], e))[:top_k]
        picked = [scores[e] for e in chosen]
        total = sum(picked) + RENORM_EPS if renormalize else 1.0
        for j, e in enumerate(chosen):
            ids[m, j] = e
            weights[m, j] = picked[j] / total * routed_scaling_factor
    return weights, ids


def fused_moe_loop(
    hidden_states: Tensor,
    router_logits: Tensor,
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor | None,
    shared_w2: Tensor | None,
    *,
    top_k: int,
    routed_scaling_factor: float,
    correction_bias: Tensor | None,
    renormalize: bool = True,
) -> Tensor:
    """Token by token, expert by expert: the slowest, most obvious MoE block."""
    weights, ids = select_experts_loop(
        router_logits, correction_bias, top_k, routed_scaling_factor, renormalize
    )
    n = w2.shape[2]
    out = torch.zeros(hidden_states.shape, dtype=torch.float32)
    for m in range(hidden_states.shape[0]):
        x = hidden_states[m].float()
        for j in range(top_k):
            e = int(ids[m, j])
            gate = w13[e, :n].float() @ x
            up = w13[e, n:].float() @ x
            out[m] += float(weights[m, j]) * (w2[e].float() @ (F.silu(gate) * up))
        if shared_w13 is not None and shared_w2 is not None:
            ns = shared_w2.shape[1]
            gate = shared_w13[:ns].float() @ x
            up = shared_w13[ns:].float() @ x
            out[m] += shared_w2.float() @ (F.silu(gate) * up)
    return out.to(hidden_states.dtype)

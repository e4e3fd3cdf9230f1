"""The peer we race: how stock vLLM runs Kimi-VL's MoE block on the same device.

CPU: routing with vLLM's CPU router math (`_grouped_topk`, n_group = 1), routed experts
with `cpu_fused_moe` on weights prepacked the way CPUUnquantizedExperts does (width padded
to 32, same ISA choice), the shared MLP the way vLLM's CPU linear layers run it (oneDNN
matmul handles, `silu_and_mul`), then the sum.
GPU: vLLM's `grouped_topk`, Triton `fused_experts`, shared MLP through F.linear.
Without vLLM (`grouped_mm`, any device): torch's own grouped GEMM, `torch._grouped_mm`
(CUTLASS on Hopper), on tokens sorted by expert with our routing, the same block computed
the way a careful pure-PyTorch MoE layer does it: the peer that needs nothing but torch.
Everything vLLM is imported here, lazily: the kernels package itself never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

PeerFn = Callable[[Tensor, Tensor], Tensor]  # (hidden_states, router_logits) -> output


def _silu_and_mul(gate_up: Tensor) -> Tensor:
    ns = gate_up.shape[1] // 2
    if hasattr(torch.ops._C, "silu_and_mul"):
        out = torch.empty(gate_up.shape[0], ns, dtype=gate_up.dtype, device=gate_up.device)
        torch.ops._C.silu_and_mul(out, gate_up)
        return out
    return F.silu(gate_up[:, :ns]) * gate_up[:, ns:]


def _cpu_linear(ops: Any, weight: Tensor) -> Callable[[Tensor], Tensor]:
    """vLLM's CPU dense GEMM choice for an unquantized linear (oneDNN when built with it)."""
    if getattr(ops, "_supports_onednn", False):
        try:
            handler = ops.create_onednn_mm(weight.t(), 32)
            return lambda x: ops.onednn_mm(handler, x, None)
        except RuntimeError:  # e.g. fp16 without native support: vLLM falls back likewise
            pass
    return lambda x: F.linear(x, weight)


def cpu_peer(
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor,
    shared_w2: Tensor,
    bias: Tensor,
    top_k: int,
    scale: float,
) -> PeerFn:
    """vLLM's CPU MoE block for one layer (weights converted here, once)."""
    import vllm._custom_ops as ops
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    from vllm.model_executor.layers.fused_moe.router.cpu_router import _grouped_topk

    from kernels.fused_moe.cpu_vllm import vec_isa
    from kernels.fused_moe.layout import pad_intermediate

    isa = vec_isa(w13.dtype)
    padded13, padded2 = pad_intermediate(w13, w2, CPUUnquantizedExperts.output_alignment)
    p13 = ops.cpu_prepack_moe_weight(padded13, isa)
    p2 = ops.cpu_prepack_moe_weight(padded2, isa)
    shared_gate_up = _cpu_linear(ops, shared_w13)
    shared_down = _cpu_linear(ops, shared_w2)

    def run(x: Tensor, logits: Tensor) -> Tensor:
        weights, ids = _grouped_topk(logits, top_k, True, 1, 1, "sigmoid", scale, bias)
        routed = torch.empty_like(x)
        ops.cpu_fused_moe(
            routed, x, p13, p2, None, None, weights.contiguous(), ids.contiguous(), "silu", isa
        )
        return routed + shared_down(_silu_and_mul(shared_gate_up(x)))

    return run


def gpu_peer(
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor,
    shared_w2: Tensor,
    bias: Tensor,
    top_k: int,
    scale: float,
) -> PeerFn:
    """vLLM's CUDA MoE block for one layer: Triton fused_experts + dense shared MLP."""
    from vllm.model_executor.layers.fused_moe import fused_experts
    from vllm.model_executor.layers.fused_moe.router.grouped_topk_router import grouped_topk

    def run(x: Tensor, logits: Tensor) -> Tensor:
        weights, ids = grouped_topk(x, logits, top_k, True, 1, 1, "sigmoid", scale, bias)
        routed = fused_experts(x, w13, w2, weights, ids)
        return routed + F.linear(_silu_and_mul(F.linear(x, shared_w13)), shared_w2)

    return run


def grouped_mm_peer(
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor,
    shared_w2: Tensor,
    bias: Tensor,
    top_k: int,
    scale: float,
) -> PeerFn:
    """The block in torch alone: routing, (token, expert) pairs sorted by expert, two
    `torch._grouped_mm` grouped GEMMs, weighted scatter-add, dense shared MLP."""
    from kernels.fused_moe import select_experts

    if not hasattr(torch, "_grouped_mm"):
        raise AttributeError(f"torch {torch.__version__} has no _grouped_mm")
    num_experts = w13.shape[0]
    # [E, K, N] views with K contiguous: the layout _grouped_mm takes for its 3-D operand.
    b13, b2 = w13.transpose(1, 2), w2.transpose(1, 2)

    def run(x: Tensor, logits: Tensor) -> Tensor:
        weights, ids = select_experts(logits, bias, top_k, scale)
        flat = ids.flatten().long()
        order = torch.argsort(flat, stable=True)
        tokens = order // top_k
        counts = torch.zeros(num_experts, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        gate_up = torch._grouped_mm(x.index_select(0, tokens), b13, offs=offs)
        y = torch._grouped_mm(_silu_and_mul(gate_up), b2, offs=offs)
        y = y.float() * weights.flatten()[order].unsqueeze(1)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, tokens, y)
        shared = F.linear(_silu_and_mul(F.linear(x, shared_w13)), shared_w2)
        return (out + shared.float()).to(x.dtype)

    return run


PEERS = ("auto", "vllm", "grouped_mm")


def make_peer(
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor,
    shared_w2: Tensor,
    bias: Tensor,
    top_k: int,
    scale: float,
    peer: str = "auto",
) -> tuple[PeerFn | None, str]:
    """(peer function or None, description or the reason it is unavailable). peer: "vllm"
    (vLLM's kernels for this device), "grouped_mm" (torch only), "auto" (vLLM's where it is
    installed, else torch's)."""
    if peer == "auto":
        try:
            import vllm  # noqa: F401
        except ImportError:
            peer = "grouped_mm"
    if peer == "grouped_mm":
        build, name = grouped_mm_peer, "torch._grouped_mm (no vLLM)"
    elif w13.is_cuda:
        build, name = gpu_peer, "vLLM fused_experts (Triton)"
    else:
        build, name = cpu_peer, "vLLM cpu_fused_moe"
    try:
        return build(w13, w2, shared_w13, shared_w2, bias, top_k, scale), name
    except (ImportError, AttributeError, RuntimeError) as exc:
        return None, f"{name} unavailable: {exc}"

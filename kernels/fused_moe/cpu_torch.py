"""Our own CPU MoE: pairs sorted by expert, one oneDNN GEMM pair per active expert.

Pipeline per call: select_experts -> argsort pairs by expert (one host read of the
per-expert counts, free on CPU) -> shared MLP as a dense GEMM over all tokens -> for each
expert with tokens: gather its rows, gate_up GEMM, silu*mul, down GEMM, weighted
index_add into an fp32 accumulator -> cast. Weights are reordered once at load time into
oneDNN's blocked layout (torch.ops.mkldnn._reorder_linear_weight, the op torch.compile's
CPU freezing pass uses): unpacked bf16 weights are re-blocked on every call, which costs
a weight-sized copy per GEMM. Pure torch: no vLLM needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .routing import select_experts

Linear = Callable[[Tensor], Tensor]


def _packing_supported(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pre-block weights of this dtype on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    probe = torch.zeros(32, 32, dtype=dtype)
    try:
        torch.ops.mkldnn._reorder_linear_weight(probe, 1)
    except RuntimeError:  # e.g. fp16 without avx512_fp16 / avx_ne_convert
        return False
    return True


def make_linear(weight: Tensor, pack: bool) -> Linear:
    """x [T, in] -> x @ weight.T, through a load-time oneDNN reorder when `pack`."""
    if not pack:
        w = weight.contiguous()
        return lambda x: F.linear(x, w)
    # The batch-size hint only picks the blocking; 8 suits the few-rows-per-expert case.
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 8)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def silu_and_mul(gate_up: Tensor) -> Tensor:
    """[T, 2N] -> silu(gate) * up, [T, N], in the input dtype."""
    n = gate_up.shape[1] // 2
    return F.silu(gate_up[:, :n]) * gate_up[:, n:]


@dataclass
class TorchExperts:
    """Per-expert prepacked GEMMs plus the shared MLP as two dense GEMMs."""

    gate_up: list[Linear]
    down: list[Linear]
    shared_gate_up: Linear | None
    shared_down: Linear | None
    name: str = "cpu:torch"
    routes_in_kernel: bool = False

    @classmethod
    def build(
        cls, w13: Tensor, w2: Tensor, shared_w13: Tensor | None, shared_w2: Tensor | None
    ) -> TorchExperts:
        pack = _packing_supported(w13.dtype)
        shared_gate_up = shared_down = None
        if shared_w13 is not None and shared_w2 is not None:
            shared_gate_up, shared_down = (
                make_linear(shared_w13, pack),
                make_linear(shared_w2, pack),
            )
        return cls(
            gate_up=[make_linear(w, pack) for w in w13],
            down=[make_linear(w, pack) for w in w2],
            shared_gate_up=shared_gate_up,
            shared_down=shared_down,
        )

    def __call__(
        self,
        hidden_states: Tensor,
        router_logits: Tensor,
        *,
        top_k: int,
        routed_scaling_factor: float,
        correction_bias: Tensor | None,
        renormalize: bool,
        out: Tensor | None = None,
    ) -> Tensor:
        weights, ids = select_experts(
            router_logits, correction_bias, top_k, routed_scaling_factor, renormalize
        )
        return self.experts(hidden_states, weights, ids, out)

    def experts(
        self, x: Tensor, topk_weights: Tensor, topk_ids: Tensor, out: Tensor | None = None
    ) -> Tensor:
        """Routed experts weighted and summed, plus the shared MLP; [M, H] in x.dtype."""
        m, k = topk_ids.shape
        if self.shared_gate_up is not None and self.shared_down is not None:
            acc = self.shared_down(silu_and_mul(self.shared_gate_up(x))).float()
        else:
            acc = torch.zeros(x.shape, dtype=torch.float32)
        flat = topk_ids.flatten()
        order = torch.argsort(flat, stable=True)  # stable: rows stay in token order
        counts = torch.bincount(flat, minlength=len(self.gate_up)).tolist()
        tokens = order // k
        pair_weights = topk_weights.flatten()[order].unsqueeze(1)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            stop = start + count
            rows = tokens[start:stop]
            # A token picks an expert at most once, so count == m means "all rows, in order".
            xe = x if count == m else x.index_select(0, rows)
            y = self.down[e](silu_and_mul(self.gate_up[e](xe))).float() * pair_weights[start:stop]
            if count == m:
                acc += y
            else:
                acc.index_add_(0, rows, y)
            start = stop
        return acc.to(x.dtype) if out is None else out.copy_(acc)

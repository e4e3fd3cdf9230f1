"""Shared helpers for the MoE kernel tests: random problems, edge-case routing, tolerances."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.fused_moe import MoEWeights, fused_moe
from kernels.fused_moe.reference import fused_moe_reference

KIMI_SCALE = 2.446
# Max |out - ref| relative to max |ref|. The fast paths round the SiLU*up intermediate to
# the activation dtype (as vLLM does) and accumulate in a different order.
REL_TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@dataclass
class Problem:
    """One MoE layer's inputs: weights in checkpoint layout plus a batch of tokens."""

    hidden: Tensor  # [M, H]
    logits: Tensor  # [M, E] fp32
    bias: Tensor | None  # [E] fp32
    w13: Tensor  # [E, 2N, H]
    w2: Tensor  # [E, H, N]
    shared_w13: Tensor | None  # [2Ns, H]
    shared_w2: Tensor | None  # [H, Ns]
    top_k: int

    def reference(self) -> Tensor:
        return fused_moe_reference(
            self.hidden, self.logits, self.w13, self.w2, self.shared_w13, self.shared_w2,
            top_k=self.top_k, routed_scaling_factor=KIMI_SCALE, correction_bias=self.bias,
        )  # fmt: skip

    def weights(self, backend: str, **kwargs: bool) -> MoEWeights:
        return MoEWeights.from_stacked(
            self.w13, self.w2, self.shared_w13, self.shared_w2, backend=backend, **kwargs
        )

    def run(self, weights: MoEWeights) -> Tensor:
        """fused_moe into a NaN-poisoned output, so rows a kernel skips cannot pass."""
        out = torch.full_like(self.hidden, float("nan"))
        result = fused_moe(
            self.hidden, self.logits, weights, top_k=self.top_k,
            routed_scaling_factor=KIMI_SCALE, correction_bias=self.bias, out=out,
        )  # fmt: skip
        assert result is out
        return result


def make_problem(
    m: int,
    num_experts: int,
    hidden: int,
    width: int,
    top_k: int,
    dtype: torch.dtype,
    *,
    shared_width: int | None = None,
    routing: str = "random",
    seed: int = 0,
    device: str = "cpu",
) -> Problem:
    """Random problem scaled so outputs are O(1). routing: "random", "skip0" (expert 0
    never chosen), "one" (every token's best expert is expert 1)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    logits = torch.randn(m, num_experts, generator=g)
    bias = torch.randn(num_experts, generator=g) * 0.1
    if routing == "skip0":
        logits[:, 0] = -30.0
    elif routing == "one":
        logits[:, 1] = 30.0
    elif routing != "random":
        raise ValueError(routing)
    return Problem(
        hidden=randn(m, hidden),
        logits=logits.to(device),
        bias=bias.to(device),
        w13=randn(num_experts, 2 * width, hidden, scale=hidden**-0.5),
        w2=randn(num_experts, hidden, width, scale=width**-0.5),
        shared_w13=(
            randn(2 * shared_width, hidden, scale=hidden**-0.5)
            if shared_width is not None
            else None
        ),
        shared_w2=(
            randn(hidden, shared_width, scale=shared_width**-0.5)
            if shared_width is not None
            else None
        ),
        top_k=top_k,
    )


def assert_close(out: Tensor, ref: Tensor, dtype: torch.dtype) -> None:
    """Every element finite and within REL_TOL[dtype] * max|ref| of the reference."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all(), "output has non-finite values (unwritten rows?)"
    if ref.numel() == 0:
        return
    scale = ref.float().abs().max().clamp_min(1e-6)
    err = ((out.float() - ref.float()).abs().max() / scale).item()
    assert err <= REL_TOL[dtype], f"relative error {err:.3g} > {REL_TOL[dtype]}"

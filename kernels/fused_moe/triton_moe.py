"""Host side of the Triton MoE path: weight layout, workspaces, the three launches.

With fold_shared (default) the shared MLP is S extra experts selected by every token, so
routing, routed and shared experts together take exactly three launches and write the
output once. Without it the shared MLP runs as two dense GEMMs and an add afterwards.
Workspace sizes depend only on M (never on routing results), so nothing is read back to
the host and the whole call can be captured in a CUDA graph. Works on CPU tensors under
TRITON_INTERPRET=1 (how the tests run it without a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from . import triton_kernels
from .block_configs import Config, get_config
from .layout import fold_shared_experts
from .routing import max_padded_pairs

ZERO_BLOCK = 1024
FILL = 256


@dataclass
class MoEWorkspace:
    """Every intermediate buffer of one call; tests pre-fill them with NaN/garbage."""

    topk_weights: Tensor  # [M, k+S] fp32
    topk_ids: Tensor  # [M, k+S] int32
    sorted_ids: Tensor  # [max_padded] int32
    block_experts: Tensor  # [max_blocks] int32
    num_post: Tensor  # [1] int32
    cursors: Tensor  # [bins] int32: per-expert counts, then next free slot
    act: Tensor  # [M*(k+S), N] activation dtype
    acc: Tensor  # [M, H] fp32
    counters: Tensor  # [M, cdiv(H, BLOCK_SIZE_N)] int32

    @classmethod
    def empty(
        cls, m: int, slots: int, experts: int, width: int, hidden: int, cfg: Config, x: Tensor
    ) -> MoEWorkspace:
        block_m = cfg["BLOCK_SIZE_M"]
        max_padded = max_padded_pairs(m * slots, experts, block_m)
        dev, i32, f32 = x.device, torch.int32, torch.float32
        return cls(
            topk_weights=torch.empty(m, slots, dtype=f32, device=dev),
            topk_ids=torch.empty(m, slots, dtype=i32, device=dev),
            sorted_ids=torch.empty(max_padded, dtype=i32, device=dev),
            block_experts=torch.empty(triton.cdiv(max_padded, block_m), dtype=i32, device=dev),
            num_post=torch.empty(1, dtype=i32, device=dev),
            cursors=torch.empty(triton.next_power_of_2(experts), dtype=i32, device=dev),
            act=torch.empty(m * slots, width, dtype=x.dtype, device=dev),
            acc=torch.empty(m, hidden, dtype=f32, device=dev),
            counters=torch.empty(
                m, triton.cdiv(hidden, cfg["BLOCK_SIZE_N"]), dtype=i32, device=dev
            ),
        )


@dataclass
class TritonExperts:
    """[E+S, 2N, H] / [E+S, H, N] contiguous stacks (S = 0 unless the shared MLP is folded)."""

    w13: Tensor
    w2: Tensor
    num_experts: int
    num_shared: int
    shared_w13: Tensor | None  # kept only when not folded
    shared_w2: Tensor | None
    name: str = "triton"
    routes_in_kernel: bool = True  # route + align is the first of its three launches

    @classmethod
    def build(
        cls,
        w13: Tensor,
        w2: Tensor,
        shared_w13: Tensor | None,
        shared_w2: Tensor | None,
        *,
        fold_shared: bool = True,
    ) -> TritonExperts:
        if fold_shared:
            all13, all2, slots = fold_shared_experts(w13, w2, shared_w13, shared_w2)
            return cls(all13.contiguous(), all2.contiguous(), w13.shape[0], slots, None, None)
        return cls(w13.contiguous(), w2.contiguous(), w13.shape[0], 0, shared_w13, shared_w2)

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
        config: Config | None = None,
        workspace: MoEWorkspace | None = None,
    ) -> Tensor:
        """The MoE block in three launches. `config` / `workspace` override the tuned
        block sizes and the scratch buffers (for the tuner and tests)."""
        x = hidden_states.contiguous()
        m, hidden = x.shape
        width, slots = self.w2.shape[2], top_k + self.num_shared
        experts = self.num_experts + self.num_shared
        cfg = config or get_config(m, self.num_experts, width, top_k, x.device)
        ws = workspace or MoEWorkspace.empty(m, slots, experts, width, hidden, cfg, x)
        out = torch.empty_like(x) if out is None else out
        bm, bn, bk = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
        max_padded, max_blocks = ws.sorted_ids.numel(), ws.block_experts.numel()
        logits = router_logits if router_logits.stride(1) == 1 else router_logits.contiguous()
        # Any float dtype: the kernel upcasts, so no cast launch here.
        bias = correction_bias.contiguous() if correction_bias is not None else logits
        # fp32 means exact fp32 (not TF32); half types take the default.
        precision = "ieee" if x.dtype == torch.float32 else None
        launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}

        triton_kernels.route_align_kernel[(1,)](
            logits, bias, ws.topk_weights, ws.topk_ids, ws.sorted_ids, ws.block_experts,
            ws.num_post, ws.cursors, m, self.num_experts, logits.stride(0), max_padded, max_blocks,
            routed_scaling_factor,
            TOP_K=top_k, NUM_SHARED=self.num_shared, HAS_BIAS=correction_bias is not None,
            RENORMALIZE=renormalize, BLOCK_M=bm,
            BLOCK_E=triton.next_power_of_2(self.num_experts),
            BLOCK_KS=triton.next_power_of_2(slots),
            NUM_BINS=ws.cursors.numel(), ROWS=16 if m <= 256 else 64, FILL=FILL,
            num_warps=4,
        )  # fmt: skip
        triton_kernels.gate_up_silu_kernel[(max_blocks * triton.cdiv(width, bn),)](
            x, self.w13, ws.act, ws.sorted_ids, ws.block_experts, ws.num_post,
            ws.acc, ws.counters, ws.acc.numel(), ws.counters.numel(),
            width, hidden, m * slots, slots, max_blocks,
            x.stride(0), self.w13.stride(0), self.w13.stride(1), ws.act.stride(0),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_SIZE_M"],
            ZERO_BLOCK=ZERO_BLOCK, DOT_PRECISION=precision, **launch,
        )  # fmt: skip
        triton_kernels.down_reduce_kernel[(max_blocks * triton.cdiv(hidden, bn),)](
            ws.act, self.w2, ws.topk_weights, out, ws.acc, ws.counters,
            ws.sorted_ids, ws.block_experts, ws.num_post,
            width, hidden, m * slots, slots, max_blocks,
            ws.act.stride(0), self.w2.stride(0), self.w2.stride(1), out.stride(0),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_SIZE_M"],
            DOT_PRECISION=precision, **launch,
        )  # fmt: skip
        if self.shared_w13 is not None and self.shared_w2 is not None:
            ns = self.shared_w2.shape[1]
            gate_up = F.linear(x, self.shared_w13)
            out += F.linear(F.silu(gate_up[:, :ns]) * gate_up[:, ns:], self.shared_w2)
        return out

"""vLLM's native CPU MoE ops behind our interface, shared experts folded in.

Two ops ship in vLLM's CPU build (torch.ops._C), both on prepacked weights:
* `cpu_fused_moe` ("vec"/"amx" ISA; bf16/fp16/fp32): what vLLM's own CPU MoE layer
  (CPUUnquantizedExperts) runs, i.e. the peer we benchmark against.
* `fused_experts_cpu` (SGLang's kernel; bf16 only, AVX512-BF16 dot products): vLLM only
  uses it for quantized MoE, but its unquantized mode is exact and measurably faster on
  AVX512-BF16 CPUs, so it is our first choice for bf16 there.
On top of either we route every token also to the shared-expert slots (weight 1), so the
shared MLP streams through the same grouped kernel instead of a separate pass.
vLLM is imported lazily; `available_kinds()` is empty when it is absent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from .layout import fold_shared_experts, pad_intermediate
from .routing import append_shared_slots, select_experts

# Both kernels tile the hidden and intermediate dims by 32 (checked in the C++ op).
ALIGNMENT = 32
SGL, VEC = "vllm-sgl", "vllm-vec"


@functools.cache
def _vllm_ops() -> ModuleType | None:
    """vllm._custom_ops if vLLM's CPU build is importable, else None."""
    try:
        import vllm._custom_ops as ops  # heavy (seconds): on first use only
    except ImportError:
        return None
    return ops


def cpu_has(probe: str) -> bool:
    """torch.cpu's private ISA probes, False where this torch lacks one."""
    return bool(getattr(torch.cpu, probe, lambda: False)())


def available_kinds(dtype: torch.dtype, hidden_size: int) -> list[str]:
    """vLLM CPU kernels usable for this dtype/hidden size, fastest first (measured)."""
    ops = _vllm_ops()
    if ops is None or hidden_size % ALIGNMENT != 0:
        return []
    c_ops = torch.ops._C
    kinds = []
    # The SGL kernel aborts the process (not a Python error) on fp16 and needs
    # AVX512-BF16 instructions, so gate it strictly.
    if (
        dtype == torch.bfloat16
        and hasattr(c_ops, "fused_experts_cpu")
        and hasattr(c_ops, "convert_weight_packed")
        and cpu_has("_is_avx512_bf16_supported")
    ):
        kinds.append(SGL)
    if hasattr(c_ops, "cpu_fused_moe") and hasattr(c_ops, "prepack_moe_weight"):
        kinds.append(VEC)
    return kinds


def vec_isa(dtype: torch.dtype) -> str:
    """The ISA vLLM's own CPU MoE layer picks (AMX tiles for bf16 when present)."""
    if dtype == torch.bfloat16 and cpu_has("_is_amx_tile_supported"):
        return "amx"
    return "vec"


@dataclass
class VllmExperts:
    """Prepacked [E+S, 2N', H] / [E+S, H, N'] stacks (N' = N padded to 32) for one vLLM op."""

    kind: str
    w13: Tensor
    w2: Tensor
    num_experts: int
    num_shared: int
    isa: str
    routes_in_kernel: bool = False

    @property
    def name(self) -> str:
        return f"cpu:{self.kind}"

    @classmethod
    def build(
        cls,
        kind: str,
        w13: Tensor,
        w2: Tensor,
        shared_w13: Tensor | None,
        shared_w2: Tensor | None,
    ) -> VllmExperts:
        ops = _vllm_ops()
        if ops is None or kind not in available_kinds(w13.dtype, w13.shape[2]):
            raise ValueError(f"vLLM CPU op {kind!r} unavailable for {w13.dtype}, H={w13.shape[2]}")
        num_experts = w13.shape[0]
        all13, all2, num_shared = fold_shared_experts(w13, w2, shared_w13, shared_w2)
        all13, all2 = pad_intermediate(all13, all2, ALIGNMENT)
        isa = vec_isa(w13.dtype)
        if kind == SGL:
            packed13 = torch.ops._C.convert_weight_packed(all13)
            packed2 = torch.ops._C.convert_weight_packed(all2)
        else:
            packed13 = ops.cpu_prepack_moe_weight(all13, isa)
            packed2 = ops.cpu_prepack_moe_weight(all2, isa)
        return cls(kind, packed13, packed2, num_experts, num_shared, isa)

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
        """Routed + shared experts through one op call; [M, H] in x.dtype (M > 0)."""
        ops = _vllm_ops()
        assert ops is not None  # build() checked
        weights, ids = append_shared_slots(
            topk_weights, topk_ids, self.num_experts, self.num_shared
        )
        x = x.contiguous()
        if out is None:
            out = torch.empty_like(x)
        if self.kind == SGL:
            ops.fused_experts_cpu(
                out, x, self.w13, self.w2, weights, ids,
                ops.CPUQuantMethod.UNQUANT, None, None, None, None, None,
            )  # fmt: skip
        else:
            ops.cpu_fused_moe(out, x, self.w13, self.w2, None, None, weights, ids, "silu", self.isa)
        return out

"""MoEWeights: one layer's expert weights, converted once at load time for one backend.

`from_stacked` validates the checkpoint-layout stacks, resolves the backend
("auto" -> "triton" on CUDA, the fastest CPU implementation on CPU) and builds that
backend's experts object, which holds exactly one copy of the weights in the layout its
kernels want (prepacked / shared-folded). Callers should drop their own references to the
stacked tensors afterwards, or the layer's weights live twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .reference import experts_reference, fused_moe_reference

BACKENDS = ("auto", "reference", "cpu", "triton")
CPU_IMPLS = ("torch", "vllm-sgl", "vllm-vec")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Experts(Protocol):
    """What a backend provides: the whole MoE block from router logits (M > 0), and — where
    routing is not fused into the kernel (`routes_in_kernel` False) — the experts alone for
    routing the caller chose (`select_experts`), so a compiler can fuse that routing.

    `name` is the resolved implementation, e.g. "triton" or "cpu:vllm-sgl".

    `out`, when given, is an [M, H] buffer of the weights' dtype that receives the result.
    """

    routes_in_kernel: bool

    @property
    def name(self) -> str: ...

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
    ) -> Tensor: ...


class RoutedOutside(Protocol):
    """A backend with `routes_in_kernel` False also runs the experts for given routing."""

    def experts(
        self, x: Tensor, topk_weights: Tensor, topk_ids: Tensor, out: Tensor | None = None
    ) -> Tensor: ...


@dataclass
class ReferenceExperts:
    """The executable spec as a backend (slow; for tests and debugging)."""

    w13: Tensor
    w2: Tensor
    shared_w13: Tensor | None
    shared_w2: Tensor | None
    name: str = "reference"
    routes_in_kernel: bool = False

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
        result = fused_moe_reference(
            hidden_states, router_logits, self.w13, self.w2, self.shared_w13, self.shared_w2,
            top_k=top_k, routed_scaling_factor=routed_scaling_factor,
            correction_bias=correction_bias, renormalize=renormalize,
        )  # fmt: skip
        return result if out is None else out.copy_(result)

    def experts(
        self, x: Tensor, topk_weights: Tensor, topk_ids: Tensor, out: Tensor | None = None
    ) -> Tensor:
        result = experts_reference(
            x, topk_weights, topk_ids, self.w13, self.w2, self.shared_w13, self.shared_w2
        )
        return result if out is None else out.copy_(result)


def check_stacks(
    w13: Tensor, w2: Tensor, shared_w13: Tensor | None, shared_w2: Tensor | None
) -> None:
    """Raise ValueError unless the stacks have the documented shapes, one dtype, one device."""
    if w13.dim() != 3 or w2.dim() != 3 or w13.shape[1] % 2 != 0:
        shapes = f"{tuple(w13.shape)}, {tuple(w2.shape)}"
        raise ValueError(f"need w13 [E, 2N, H] and w2 [E, H, N]; got {shapes}")
    e, two_n, h = w13.shape
    if tuple(w2.shape) != (e, h, two_n // 2):
        raise ValueError(f"w2 must be [{e}, {h}, {two_n // 2}] to match w13, got {tuple(w2.shape)}")
    if (shared_w13 is None) != (shared_w2 is None):
        raise ValueError("pass both shared_w13 and shared_w2, or neither")
    tensors = [w13, w2]
    if shared_w13 is not None and shared_w2 is not None:
        ns = shared_w2.shape[-1]
        if tuple(shared_w13.shape) != (2 * ns, h) or tuple(shared_w2.shape) != (h, ns):
            raise ValueError(
                f"need shared_w13 [2Ns, {h}] and shared_w2 [{h}, Ns]; got "
                f"{tuple(shared_w13.shape)}, {tuple(shared_w2.shape)}"
            )
        tensors += [shared_w13, shared_w2]
    if w13.dtype not in DTYPES or any(t.dtype != w13.dtype for t in tensors):
        raise ValueError(f"weights must share one dtype among {DTYPES}")
    if any(t.device != w13.device for t in tensors):
        raise ValueError("weights must be on one device")


def resolve_backend(
    backend: str, device: torch.device, dtype: torch.dtype, hidden_size: int
) -> str:
    """Concrete implementation name: "reference", "triton" or "cpu:<impl>"."""
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend == "cpu":
        from .cpu_vllm import available_kinds

        kinds = available_kinds(dtype, hidden_size)
        return f"cpu:{kinds[0]}" if kinds else "cpu:torch"
    if backend in ("reference", "triton") or backend in [f"cpu:{i}" for i in CPU_IMPLS]:
        return backend
    choices = f"{BACKENDS} or cpu:<{'|'.join(CPU_IMPLS)}>"
    raise ValueError(f"backend must be one of {choices}, got {backend!r}")


def build_experts(
    impl: str,
    w13: Tensor,
    w2: Tensor,
    shared_w13: Tensor | None,
    shared_w2: Tensor | None,
    fold_shared: bool,
) -> Experts:
    """Construct the experts object of a resolved implementation (imports it lazily)."""
    if impl == "reference":
        return ReferenceExperts(w13, w2, shared_w13, shared_w2)
    if impl == "triton":
        from .triton_moe import TritonExperts

        return TritonExperts.build(w13, w2, shared_w13, shared_w2, fold_shared=fold_shared)
    if impl == "cpu:torch":
        from .cpu_torch import TorchExperts

        return TorchExperts.build(w13, w2, shared_w13, shared_w2)
    from .cpu_vllm import VllmExperts

    return VllmExperts.build(impl.removeprefix("cpu:"), w13, w2, shared_w13, shared_w2)


@dataclass
class MoEWeights:
    """A layer's experts in the layout of one backend, plus the shapes callers check against."""

    experts: Experts
    num_experts: int
    hidden_size: int
    intermediate_size: int
    shared_intermediate_size: int
    dtype: torch.dtype
    device: torch.device

    @property
    def backend(self) -> str:
        """The resolved implementation, e.g. "triton", "cpu:torch", "cpu:vllm-sgl"."""
        return self.experts.name

    @property
    def routes_in_kernel(self) -> bool:
        """True where routing is fused into the kernels (Triton): call `fused_moe` with the
        router logits. False: `fused_experts` takes routing chosen outside (a compiled graph
        fuses `select_experts` with what precedes it)."""
        return self.experts.routes_in_kernel

    @classmethod
    def from_stacked(
        cls,
        w13: Tensor,
        w2: Tensor,
        shared_w13: Tensor | None = None,
        shared_w2: Tensor | None = None,
        backend: str = "auto",
        *,
        fold_shared: bool = True,
    ) -> MoEWeights:
        """Convert checkpoint stacks for `backend`.

        w13 [E, 2N, H] (rows 0..N-1 gate_proj, N..2N-1 up_proj), w2 [E, H, N],
        shared_w13 [2Ns, H], shared_w2 [H, Ns]. backend: "auto", "reference", "cpu"
        (fastest CPU implementation here), "cpu:torch" / "cpu:vllm-sgl" / "cpu:vllm-vec"
        (force one), "triton". fold_shared (Triton): run the shared MLP as always-selected
        experts of the grouped GEMM instead of as separate dense GEMMs.
        """
        check_stacks(w13, w2, shared_w13, shared_w2)
        impl = resolve_backend(backend, w13.device, w13.dtype, w13.shape[2])
        return cls(
            experts=build_experts(impl, w13, w2, shared_w13, shared_w2, fold_shared),
            num_experts=w13.shape[0],
            hidden_size=w13.shape[2],
            intermediate_size=w2.shape[2],
            shared_intermediate_size=0 if shared_w2 is None else shared_w2.shape[1],
            dtype=w13.dtype,
            device=w13.device,
        )

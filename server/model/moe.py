"""Kimi-VL MoE block: sigmoid + correction-bias routing, 64 routed experts, shared experts.

Routed and shared expert weights are stacked at load time ([E, 2N, H] gate|up, [E, H, N] down)
in the layout `kernels.fused_moe` wants; tensor parallelism shards the expert width N (and the
shared width) and all-reduces the output, as vLLM's own MoE layers do.

Under vLLM's compilation (the decoder is `@support_torch_compile`) the experts are one opaque
custom op with a fake implementation for tracing: dynamo and inductor see its output shape and
leave the kernel alone. Where the kernels route themselves (Triton: route + align is their
first launch) the op takes the router logits, `torch.ops.vllm.kimi_vl_moe(hidden_states,
router_logits, correction_bias, layer)`; elsewhere (vLLM's CPU kernels) routing is plain torch
in the graph, which inductor fuses with the router, and the op takes its result,
`torch.ops.vllm.kimi_vl_moe_experts(hidden_states, topk_weights, topk_ids, layer)`. `layer`
names the module in a registry of this process (a string: a graph constant), which holds its
packed weights.
"""

from __future__ import annotations

import itertools
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from vllm.utils.torch_utils import direct_register_custom_op

from kernels.fused_moe import MoEWeights, fused_experts, fused_moe, select_experts

_LAYERS: weakref.WeakValueDictionary[str, KimiMoE] = weakref.WeakValueDictionary()
_NUMBERS = itertools.count()


def _moe(
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    correction_bias: torch.Tensor | None,
    layer: str,
) -> torch.Tensor:
    return _LAYERS[layer].experts(hidden_states, router_logits, correction_bias)


def _moe_experts(
    hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer: str
) -> torch.Tensor:
    return fused_experts(hidden_states, topk_weights, topk_ids, _LAYERS[layer].packed())


def _moe_fake(
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    correction_bias: torch.Tensor | None,
    layer: str,
) -> torch.Tensor:
    return torch.empty_like(hidden_states)


def _moe_experts_fake(
    hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer: str
) -> torch.Tensor:
    return torch.empty_like(hidden_states)


direct_register_custom_op(op_name="kimi_vl_moe", op_func=_moe, fake_impl=_moe_fake)
direct_register_custom_op(
    op_name="kimi_vl_moe_experts", op_func=_moe_experts, fake_impl=_moe_experts_fake
)


class Router(nn.Module):
    """`mlp.gate.weight` [E, H] and `mlp.gate.e_score_correction_bias` [E] (noaux_tc routing)."""

    def __init__(self, experts: int, hidden: int, *, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, hidden))
        # Routing runs in fp32; keep the bias there whatever the model dtype.
        self.e_score_correction_bias = (
            nn.Parameter(torch.zeros(experts, dtype=torch.float32), requires_grad=False)
            if with_bias
            else None
        )


class KimiMoE(nn.Module):
    def __init__(self, config, prefix: str = "") -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(
                f"{prefix}: only silu experts are supported, got {config.hidden_act!r}"
            )
        if getattr(config, "scoring_func", "sigmoid") != "sigmoid":
            raise ValueError(f"{prefix}: only sigmoid routing is supported")
        if getattr(config, "n_group", 1) not in (None, 1) or getattr(
            config, "topk_group", 1
        ) not in (None, 1):
            raise ValueError(f"{prefix}: grouped routing (n_group > 1) is not supported")
        self.tp_size = get_tensor_model_parallel_world_size()
        self.tp_rank = get_tensor_model_parallel_rank()
        e, n, h = config.n_routed_experts, config.moe_intermediate_size, config.hidden_size
        ns = n * (config.n_shared_experts or 0)
        for what, width in (("moe_intermediate_size", n), ("shared expert width", ns)):
            if width % self.tp_size:
                raise ValueError(
                    f"{what} {width} is not divisible by tensor parallel size {self.tp_size}"
                )
        self.n_local, self.ns_local = n // self.tp_size, ns // self.tp_size
        self.top_k = config.num_experts_per_tok
        self.scaling = float(getattr(config, "routed_scaling_factor", 1.0))
        self.renormalize = bool(getattr(config, "norm_topk_prob", True))

        self.gate = Router(e, h, with_bias=getattr(config, "topk_method", "noaux_tc") == "noaux_tc")
        self.w13 = nn.Parameter(torch.empty(e, 2 * self.n_local, h), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(e, h, self.n_local), requires_grad=False)
        self.shared_w13 = (
            nn.Parameter(torch.empty(2 * self.ns_local, h), requires_grad=False) if ns else None
        )
        self.shared_w2 = (
            nn.Parameter(torch.empty(h, self.ns_local), requires_grad=False) if ns else None
        )
        self._packed: MoEWeights | None = None
        self._routes_in_kernel = False  # set when packed (after loading, before any trace)
        self.op_name = f"{prefix}#{next(_NUMBERS)}"  # unique in this process
        _LAYERS[self.op_name] = self
        self._shapes = {
            id(p): tuple(p.shape)
            for p in (self.w13, self.w2, self.shared_w13, self.shared_w2)
            if p is not None
        }

    # -- loading -----------------------------------------------------------------------------

    def _shard(self, w: torch.Tensor, dim: int, width: int) -> torch.Tensor:
        return w.narrow(dim, self.tp_rank * width, width)

    def _unpack(self) -> None:
        """Loading again after finalize() (a weight reload): fresh stacks, fully overwritten by the load."""
        for p in (self.w13, self.w2, self.shared_w13, self.shared_w2):
            if p is not None and p.numel() == 0:
                p.data = p.data.new_empty(self._shapes[id(p)])
        self._packed = None

    def load_expert(self, expert: int, proj: str, w: torch.Tensor) -> None:
        """proj in gate_proj/up_proj ([N, H]) or down_proj ([H, N])."""
        self._unpack()
        n = self.n_local
        if proj == "down_proj":
            self.w2.data[expert].copy_(self._shard(w, 1, n))
        else:
            off = 0 if proj == "gate_proj" else n
            self.w13.data[expert, off : off + n].copy_(self._shard(w, 0, n))

    def load_shared(self, proj: str, w: torch.Tensor) -> None:
        assert self.shared_w13 is not None and self.shared_w2 is not None
        self._unpack()
        n = self.ns_local
        if proj == "down_proj":
            self.shared_w2.data.copy_(self._shard(w, 1, n))
        else:
            off = 0 if proj == "gate_proj" else n
            self.shared_w13.data[off : off + n].copy_(self._shard(w, 0, n))

    def packed(self) -> MoEWeights:
        if self._packed is None:
            self._packed = MoEWeights.from_stacked(
                self.w13.data,
                self.w2.data,
                None if self.shared_w13 is None else self.shared_w13.data,
                None if self.shared_w2 is None else self.shared_w2.data,
            )
            self._routes_in_kernel = self._packed.routes_in_kernel
        return self._packed

    def finalize(self) -> None:
        """After loading: hand the weights to the kernels and keep only their copy.

        A backend that repacks (the CPU paths) would otherwise leave the layer's experts in
        memory twice; one that uses the stacks as they are (Triton) keeps them alive itself.
        """
        self.packed()
        for p in (self.w13, self.w2, self.shared_w13, self.shared_w2):
            if p is not None:
                p.data = p.data.new_empty(0)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:  # not finalized (a module used outside vLLM's loader)
            self.packed()
        logits = F.linear(x.float(), self.gate.weight.float())
        param = self.gate.e_score_correction_bias
        bias = None if param is None else param.float()
        if self._routes_in_kernel:
            out = torch.ops.vllm.kimi_vl_moe(x, logits, bias, self.op_name)
        else:
            weights, ids = select_experts(logits, bias, self.top_k, self.scaling, self.renormalize)
            out = torch.ops.vllm.kimi_vl_moe_experts(x, weights, ids, self.op_name)
        if self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out

    def experts(
        self, x: torch.Tensor, logits: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The fused MoE itself (routed + shared experts), behind the custom op."""
        return fused_moe(
            x,
            logits,
            self.packed(),
            top_k=self.top_k,
            routed_scaling_factor=self.scaling,
            correction_bias=bias,
            renormalize=self.renormalize,
        )

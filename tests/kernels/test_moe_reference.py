"""The spec checked against itself: vectorised reference vs per-token loop; weight layouts."""

from __future__ import annotations

import pytest
import torch

from kernels.fused_moe import MoEWeights, fused_moe
from kernels.fused_moe.layout import fold_shared_experts, pad_intermediate
from kernels.fused_moe.reference import expert_mlp, fused_moe_loop
from tests.kernels.moe_testing import KIMI_SCALE, assert_close, make_problem


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("top_k", [1, 6])
@pytest.mark.parametrize("routing", ["random", "skip0", "one"])
@pytest.mark.parametrize("shared_width", [None, 40])
def test_reference_matches_per_token_loop(m, top_k, routing, shared_width):
    p = make_problem(
        m, 8, 24, 16, top_k, torch.float32, shared_width=shared_width, routing=routing, seed=m
    )
    loop = fused_moe_loop(
        p.hidden, p.logits, p.w13, p.w2, p.shared_w13, p.shared_w2,
        top_k=top_k, routed_scaling_factor=KIMI_SCALE, correction_bias=p.bias,
    )  # fmt: skip
    assert_close(p.reference(), loop, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_backend_through_public_api(dtype):
    p = make_problem(5, 8, 24, 16, 2, dtype, shared_width=32)
    w = p.weights("reference")
    assert w.backend == "reference"
    assert_close(p.run(w), p.reference(), dtype)


@pytest.mark.parametrize("width,shared_width", [(16, 32), (16, 40), (24, 20)])
def test_shared_mlp_folds_into_expert_slots(width, shared_width):
    p = make_problem(4, 8, 24, width, 2, torch.float32, shared_width=shared_width)
    all13, all2, slots = fold_shared_experts(p.w13, p.w2, p.shared_w13, p.shared_w2)
    assert slots == -(-shared_width // width) and all13.shape[0] == all2.shape[0] == 8 + slots
    assert torch.equal(all13[:8], p.w13) and torch.equal(all2[:8], p.w2)
    folded = sum(expert_mlp(p.hidden, all13[8 + s], all2[8 + s]) for s in range(slots))
    torch.testing.assert_close(folded, expert_mlp(p.hidden, p.shared_w13, p.shared_w2))


def test_padding_the_width_keeps_every_expert_exact():
    p = make_problem(4, 3, 24, 20, 2, torch.float32)
    w13, w2 = pad_intermediate(p.w13, p.w2, 32)
    assert w13.shape == (3, 64, 24) and w2.shape == (3, 24, 32)
    for e in range(3):
        torch.testing.assert_close(
            expert_mlp(p.hidden, w13[e], w2[e]), expert_mlp(p.hidden, p.w13[e], p.w2[e])
        )


def test_from_stacked_rejects_inconsistent_weights():
    w13, w2 = torch.zeros(4, 32, 24), torch.zeros(4, 24, 16)
    with pytest.raises(ValueError, match="w2 must be"):
        MoEWeights.from_stacked(w13, torch.zeros(4, 24, 15))
    with pytest.raises(ValueError, match="both shared"):
        MoEWeights.from_stacked(w13, w2, shared_w13=torch.zeros(40, 24))
    with pytest.raises(ValueError, match="shared_w13"):
        MoEWeights.from_stacked(w13, w2, torch.zeros(40, 24), torch.zeros(24, 21))
    with pytest.raises(ValueError, match="dtype"):
        MoEWeights.from_stacked(w13, w2.half())
    with pytest.raises(ValueError, match="backend"):
        MoEWeights.from_stacked(w13, w2, backend="torch")


def test_fused_moe_rejects_mismatched_inputs():
    p = make_problem(3, 8, 24, 16, 2, torch.float32)
    w = p.weights("reference")
    kwargs = dict(top_k=2, routed_scaling_factor=1.0, correction_bias=None)
    with pytest.raises(ValueError, match="hidden_states"):
        fused_moe(p.hidden[:, :20], p.logits, w, **kwargs)
    with pytest.raises(ValueError, match="router_logits"):
        fused_moe(p.hidden, p.logits[:2], w, **kwargs)
    with pytest.raises(ValueError, match="weights are"):
        fused_moe(p.hidden.double(), p.logits, w, **kwargs)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_zero_tokens(backend):
    p = make_problem(0, 8, 64, 32, 2, torch.bfloat16, shared_width=64)
    out = p.run(p.weights(backend))
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16

"""Triton MoE cases that also run on CPU under Triton's interpreter (fp32/fp16, small shapes).

Not collected by name: test_moe_triton.py runs them natively on a GPU, or in a subprocess
started with TRITON_INTERPRET=1 on CPU (the variable must be set before triton is imported,
which a shared pytest process cannot guarantee). Outputs and every workspace buffer start
poisoned, so a row or buffer a kernel forgets to write cannot pass.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from kernels.fused_moe import block_configs as configs
from kernels.fused_moe.routing import append_shared_slots, moe_align_block_size, select_experts
from tests.kernels.moe_testing import KIMI_SCALE, Problem, assert_close, make_problem

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs CUDA or TRITON_INTERPRET=1 (see test_moe_triton.py)", allow_module_level=True
    )
pytest.importorskip("triton")
from kernels.fused_moe.triton_moe import MoEWorkspace, TritonExperts  # noqa: E402

HIDDEN, WIDTH, SHARED = 40, 24, 40  # none a multiple of the 16/32 tiles used below
SMALL = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 16, "BLOCK_SIZE_K": 16, "GROUP_SIZE_M": 1,
         "num_warps": 4, "num_stages": 2}  # fmt: skip


def run_poisoned(
    p: Problem, experts: TritonExperts, cfg: dict[str, int]
) -> tuple[torch.Tensor, MoEWorkspace]:
    """One call with NaN in every float buffer and garbage in every int buffer."""
    m, hidden = p.hidden.shape
    slots = p.top_k + experts.num_shared
    total = experts.num_experts + experts.num_shared
    ws = MoEWorkspace.empty(m, slots, total, experts.w2.shape[2], hidden, cfg, p.hidden)
    for t in vars(ws).values():
        t.fill_(float("nan") if t.is_floating_point() else -12345)
    out = torch.full_like(p.hidden, float("nan"))
    result = experts(
        p.hidden, p.logits, top_k=p.top_k, routed_scaling_factor=KIMI_SCALE,
        correction_bias=p.bias, renormalize=True, out=out, config=cfg, workspace=ws,
    )  # fmt: skip
    assert result is out
    return out, ws


def triton_experts(p: Problem, fold_shared: bool = True) -> TritonExperts:
    experts = p.weights("triton", fold_shared=fold_shared).experts
    assert isinstance(experts, TritonExperts)
    return experts


@pytest.mark.parametrize("m,num_experts,top_k", [(1, 8, 2), (7, 64, 6), (33, 8, 1), (33, 64, 2)])
@pytest.mark.parametrize("block_m", [16, 32])
@pytest.mark.parametrize("shared", [None, SHARED])
def test_route_align_kernel_matches_torch_spec(m, num_experts, top_k, block_m, shared):
    p = make_problem(m, num_experts, 32, 16, top_k, torch.float32, shared_width=shared,
                     seed=m + block_m, device=DEVICE)  # fmt: skip
    experts = triton_experts(p)
    _, ws = run_poisoned(p, experts, {**SMALL, "BLOCK_SIZE_M": block_m})
    weights, ids = select_experts(p.logits, p.bias, top_k, KIMI_SCALE)
    weights, ids = append_shared_slots(weights, ids, num_experts, experts.num_shared)
    sorted_ids, block_experts, num_post = moe_align_block_size(
        ids, num_experts + experts.num_shared, block_m
    )
    assert torch.equal(ws.topk_ids, ids)
    torch.testing.assert_close(ws.topk_weights, weights, rtol=1e-6, atol=1e-7)
    assert torch.equal(ws.num_post, num_post)
    assert torch.equal(ws.block_experts, block_experts)
    assert torch.equal(runs_sorted(ws.sorted_ids, block_experts, block_m), sorted_ids)


def runs_sorted(
    sorted_ids: torch.Tensor, block_experts: torch.Tensor, block_m: int
) -> torch.Tensor:
    """Sort within each expert's run: the kernel hands out slots in arbitrary order."""
    out = sorted_ids.clone()
    owners = block_experts.tolist()
    start = 0
    for b in range(1, len(owners) + 1):
        if b == len(owners) or owners[b] != owners[start]:
            lo, hi = start * block_m, b * block_m
            out[lo:hi] = sorted_ids[lo:hi].sort().values  # padding (M*k) sorts last
            start = b
    return out


def test_route_align_kernel_breaks_ties_like_the_spec():
    p = make_problem(5, 8, 32, 16, 3, torch.float32, device=DEVICE)
    p.logits[:] = 0.0
    p.logits[1, [6, 2]] = 1.0
    p.bias = None
    _, ws = run_poisoned(p, triton_experts(p), SMALL)
    assert torch.equal(ws.topk_ids, select_experts(p.logits, None, 3, KIMI_SCALE)[1])
    assert ws.topk_ids[1].tolist() == [2, 6, 0]


# Token counts 1..257, both expert counts, top-k 1/2/6 (pairwise, to keep the interpreter fast).
CASES = [(1, 64, 6), (3, 8, 2), (7, 64, 1), (33, 8, 6), (257, 8, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,num_experts,top_k", CASES)
def test_triton_matches_reference(dtype, m, num_experts, top_k):
    p = make_problem(m, num_experts, HIDDEN, WIDTH, top_k, dtype, shared_width=SHARED,
                     seed=m, device=DEVICE)  # fmt: skip
    out, _ = run_poisoned(p, triton_experts(p), SMALL)
    assert_close(out, p.reference(), dtype)


@pytest.mark.parametrize("routing", ["skip0", "one"])
@pytest.mark.parametrize("top_k", [1, 6])
def test_triton_empty_expert_and_all_tokens_to_one_expert(routing, top_k):
    p = make_problem(33, 8, HIDDEN, WIDTH, top_k, torch.float16, shared_width=SHARED,
                     routing=routing, device=DEVICE)  # fmt: skip
    out, _ = run_poisoned(p, triton_experts(p), {**SMALL, "BLOCK_SIZE_M": 32})
    assert_close(out, p.reference(), torch.float16)


@pytest.mark.parametrize("shared", [None, SHARED])
def test_triton_shared_mlp_unfolded_and_default_config(shared):
    p = make_problem(9, 8, HIDDEN, WIDTH, 2, torch.float32, shared_width=shared, device=DEVICE)
    experts = triton_experts(p, fold_shared=False)
    assert experts.num_shared == 0
    # Through the public API: default (untuned) block sizes.
    out = p.run(p.weights("triton", fold_shared=False))
    assert_close(out, p.reference(), torch.float32)


def test_triton_tuned_config_file_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    configs.load_configs.cache_clear()
    name = configs.device_name(torch.device(DEVICE))
    path = configs.config_path(8, WIDTH, name)
    path.write_text(json.dumps({"1": SMALL, "64": {**SMALL, "BLOCK_SIZE_M": 32}}))
    try:
        assert configs.get_config(40, 8, WIDTH, 2, torch.device(DEVICE))["BLOCK_SIZE_M"] == 32
        assert configs.get_config(2, 8, WIDTH, 2, torch.device(DEVICE))["BLOCK_SIZE_M"] == 16
        assert configs.get_config(2, 64, WIDTH, 2, torch.device(DEVICE)) == configs.default_config(
            2, 64, 2
        )
        p = make_problem(40, 8, HIDDEN, WIDTH, 2, torch.float32, device=DEVICE)
        assert_close(p.run(p.weights("triton")), p.reference(), torch.float32)
    finally:
        configs.load_configs.cache_clear()


def test_route_align_kernel_reads_low_precision_logits_and_bias():
    p = make_problem(9, 64, 32, 16, 6, torch.float32, seed=3, device=DEVICE)
    p.logits, p.bias = p.logits.to(torch.bfloat16), p.bias.to(torch.bfloat16)
    _, ws = run_poisoned(p, triton_experts(p), SMALL)
    weights, ids = select_experts(p.logits, p.bias, 6, KIMI_SCALE)
    assert torch.equal(ws.topk_ids, ids)
    torch.testing.assert_close(ws.topk_weights, weights, rtol=1e-6, atol=1e-7)

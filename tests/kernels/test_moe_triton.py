"""Triton MoE path: the interpreter-capable cases (triton_cases.py) and GPU-only checks.

On a GPU the cases run here natively. On CPU they run in one subprocess with
TRITON_INTERPRET=1 set before triton is imported (Triton fixes interpreted-or-compiled when
its own library functions are decorated, so this pytest process, where vLLM may already
have imported triton, cannot switch). bf16 (tl.dot is wrong in the interpreter) and CUDA
graphs are checked only on a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.fused_moe import fused_moe
from tests.kernels.moe_testing import KIMI_SCALE, assert_close, make_problem

CUDA = torch.cuda.is_available()
HERE = Path(__file__).parent
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (bf16 tl.dot, CUDA graphs)")

if CUDA:
    from tests.kernels.triton_cases import *  # noqa: F403  (collected here, compiled for GPU)
else:

    def test_triton_cases_under_the_interpreter():
        pytest.importorskip("triton")
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(HERE / "triton_cases.py")]  # fmt: skip
        proc = subprocess.run(
            cmd, env=env, cwd=HERE.parent.parent, capture_output=True, text=True, timeout=600
        )
        report = proc.stdout[-6000:] + proc.stderr[-2000:]
        assert proc.returncode == 0, report
        passed = re.search(r"(\d+) passed", proc.stdout)
        assert passed and int(passed.group(1)) >= 30, report  # the cases really ran


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "m,num_experts,top_k", [(1, 64, 6), (7, 8, 2), (257, 64, 6), (1024, 64, 6)]
)
def test_triton_bf16_on_gpu(m, num_experts, top_k):
    p = make_problem(m, num_experts, 2048, 1408, top_k, torch.bfloat16, shared_width=2816,
                     seed=m, device="cuda")  # fmt: skip
    out = p.run(p.weights("auto"))
    assert_close(out, p.reference(), torch.bfloat16)


@pytest.mark.gpu
@gpu
def test_triton_is_cuda_graph_safe():
    p = make_problem(8, 64, 256, 96, 6, torch.bfloat16, shared_width=192, device="cuda")
    weights = p.weights("triton")
    x, logits = p.hidden.clone(), p.logits.clone()
    call = lambda: fused_moe(x, logits, weights, top_k=6, routed_scaling_factor=KIMI_SCALE,  # noqa: E731
                             correction_bias=p.bias)  # fmt: skip
    call()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    for seed in range(3):
        q = make_problem(8, 64, 256, 96, 6, torch.bfloat16, shared_width=192, seed=seed + 1,
                         device="cuda")  # fmt: skip
        x.copy_(q.hidden)
        logits.copy_(q.logits)
        graph.replay()
        q = dataclasses.replace(p, hidden=q.hidden, logits=q.logits)  # same layer, new tokens
        assert_close(out, q.reference(), torch.bfloat16)

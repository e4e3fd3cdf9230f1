"""Tune the Triton MoE block sizes on this GPU and write configs/E=..,N=..,device_name=...json.

python -m kernels.fused_moe.tune [--experts 64] [--width 1408] [--hidden 2048] [--top-k 6]
    [--shared 2816] [--dtype bf16] [--m 1,2,4,...,4096] [--out DIR] [--full]
    [--time-limit SECONDS]

For each token count M, every candidate config runs the whole MoE block (three launches,
shared MLP folded in) on random Kimi-VL-shaped weights; configs whose output disagrees with
the default config's are discarded, the fastest of the rest is written. Width = the
per-partition expert width (1408 / tensor-parallel size). With --time-limit the search stops
when the time is up: the M being tuned keeps the best config found so far, later Ms are left
out of the file (the lookup takes the nearest tuned M; the file's keys are the Ms tuned).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

from .block_configs import Config, config_path, default_config, device_name
from .triton_moe import TritonExperts
from .weights import MoEWeights

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_M = "1,2,4,8,16,24,32,48,64,96,128,256,512,1024,1536,2048,3072,4096"


def candidates(full: bool) -> list[Config]:
    """The search space; --full widens every axis (much slower: each config compiles)."""
    space = {
        "BLOCK_SIZE_M": [16, 32, 64, 128],
        "BLOCK_SIZE_N": [32, 64, 128, 256] if full else [64, 128],
        "BLOCK_SIZE_K": [32, 64, 128, 256] if full else [64, 128],
        "GROUP_SIZE_M": [1, 16, 32] if full else [1, 16],
        "num_warps": [4, 8],
        "num_stages": [2, 3, 4, 5] if full else [3, 4],
    }
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]


def tune_m(
    moe: TritonExperts,
    m: int,
    args: argparse.Namespace,
    space: list[Config],
    deadline: float = float("inf"),
) -> Config:
    """Fastest config for M tokens whose output matches the default config's (among those
    tried before `deadline`, a time.monotonic() value)."""
    import triton
    import triton.testing

    x = torch.randn(m, args.hidden, device="cuda").to(DTYPES[args.dtype])
    logits = torch.randn(m, args.experts, device="cuda")
    bias = torch.randn(args.experts, device="cuda") * 0.01

    def call(cfg: Config) -> torch.Tensor:
        return moe(
            x, logits, top_k=args.top_k, routed_scaling_factor=2.446,
            correction_bias=bias, renormalize=True, config=cfg,
        )  # fmt: skip

    expected = call(default_config(m, args.experts, args.top_k)).float()
    scale = expected.abs().max().clamp_min(1e-6)
    best, best_ms = default_config(m, args.experts, args.top_k), float("inf")
    for cfg in space:
        if time.monotonic() > deadline:
            break
        try:
            got = call(cfg).float()
            if ((got - expected).abs().max() / scale).item() > 3e-2:
                continue  # a config must never change the answer
            ms = triton.testing.do_bench(lambda c=cfg: call(c), warmup=5, rep=25)
        except triton.runtime.errors.OutOfResources:
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    sys.stdout.write(f"M={m:5d}: {best_ms * 1e3:9.1f} us  {best}\n")
    sys.stdout.flush()
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--width", type=int, default=1408, help="per-partition expert width N")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--shared", type=int, default=2816, help="per-partition shared width (0: none)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--m", default=DEFAULT_M, help="comma-separated token counts")
    p.add_argument("--out", help="output file (default: the package's configs/ folder)")
    p.add_argument("--full", action="store_true", help="search the wide space")
    p.add_argument(
        "--time-limit", type=float, default=None, help="stop searching after this many seconds"
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune needs a CUDA GPU (configs are per device)")

    dtype, dev = DTYPES[args.dtype], torch.device("cuda")
    e, n, h, ns = args.experts, args.width, args.hidden, args.shared
    w13 = torch.randn(e, 2 * n, h, device=dev).mul_(h**-0.5).to(dtype)
    w2 = torch.randn(e, h, n, device=dev).mul_(n**-0.5).to(dtype)
    s13 = torch.randn(2 * ns, h, device=dev).mul_(h**-0.5).to(dtype) if ns else None
    s2 = torch.randn(h, ns, device=dev).mul_(ns**-0.5).to(dtype) if ns else None
    moe = MoEWeights.from_stacked(w13, w2, s13, s2, backend="triton").experts
    assert isinstance(moe, TritonExperts)
    space = candidates(args.full)
    sys.stdout.write(f"{torch.cuda.get_device_name(dev)}: {len(space)} configs per M\n")
    deadline = time.monotonic() + (args.time_limit or float("inf"))
    tuned: dict[str, Config] = {}
    for m in args.m.split(","):
        if time.monotonic() > deadline:
            sys.stdout.write(f"time limit reached: M={m} and above not tuned\n")
            break
        tuned[m] = tune_m(moe, int(m), args, space, deadline)
    path = args.out or config_path(e, n, device_name(dev))
    with open(path, "w") as f:
        json.dump(tuned, f, indent=1)
    sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()

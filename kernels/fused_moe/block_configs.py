"""Block-size configs of the Triton MoE kernels, keyed by (E, N, device) and token count.

Files live in kernels/fused_moe/configs/ as `E={E},N={N},device_name={device}.json`
(written by `python -m kernels.fused_moe.tune`): {"<M>": {"BLOCK_SIZE_M": .., "BLOCK_SIZE_N":
.., "BLOCK_SIZE_K": .., "GROUP_SIZE_M": .., "num_warps": .., "num_stages": ..}, ...}. A
call with M tokens uses the entry whose M is nearest; with no file, `default_config`.
E counts routed experts and N is the per-partition expert width, as the model sees them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"
KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
Config = dict[str, int]


def device_name(device: torch.device) -> str:
    """File-name form of the device: the CUDA name with '_' for spaces; CPU = interpreter."""
    if device.type != "cuda":
        return "cpu_interpreter"
    return torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")


def config_path(num_experts: int, width: int, device: str) -> Path:
    return CONFIG_DIR / f"E={num_experts},N={width},device_name={device}.json"


@functools.cache
def load_configs(num_experts: int, width: int, device: str) -> dict[int, Config] | None:
    """Tuned configs by token count, or None when this (E, N, device) has no file."""
    path = config_path(num_experts, width, device)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    configs = {int(m): {k: int(v[k]) for k in KEYS} for m, v in raw.items()}
    return configs or None


def default_config(num_tokens: int, num_experts: int, top_k: int) -> Config:
    """Untuned but sane: small tiles with deep K for decode (weight-bandwidth bound),
    large tiles and more warps for prefill (compute bound)."""
    tokens_per_expert = num_tokens * top_k // max(num_experts, 1)
    if tokens_per_expert <= 16:
        block_m = 16
    elif tokens_per_expert <= 48:
        block_m = 32
    elif tokens_per_expert <= 192:
        block_m = 64
    else:
        block_m = 128
    large = num_tokens > 128
    return {
        "BLOCK_SIZE_M": block_m,
        "BLOCK_SIZE_N": 128 if large else 64,
        "BLOCK_SIZE_K": 64 if large else 128,
        "GROUP_SIZE_M": 8 if tokens_per_expert > 256 else 1,
        "num_warps": 8 if large else 4,
        "num_stages": 3 if large else 4,
    }


def get_config(
    num_tokens: int, num_experts: int, width: int, top_k: int, device: torch.device
) -> Config:
    """The tuned entry nearest to `num_tokens`, else the default."""
    configs = load_configs(num_experts, width, device_name(device))
    if configs is None:
        return default_config(num_tokens, num_experts, top_k)
    return configs[min(configs, key=lambda m: abs(m - num_tokens))]

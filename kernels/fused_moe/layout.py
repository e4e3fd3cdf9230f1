"""Weight layout transforms done once at load time: shared experts as extra experts, padding.

The shared MLP (width Ns) equals the sum of S = ceil(Ns / N) SiLU-gated MLPs of width N
over consecutive chunks of its intermediate channels, because silu(gate) * up is
channel-wise and the down projection sums over channels. Zero-padded channels contribute
exactly zero (silu(0) * 0 = 0 and their down columns are 0). So the shared MLP can be
stacked after the E routed experts and selected for every token with weight 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def num_shared_slots(intermediate_size: int, shared_intermediate_size: int) -> int:
    """Expert slots of width N needed to hold a shared MLP of width Ns."""
    return -(-shared_intermediate_size // intermediate_size)


def shared_as_experts(
    shared_w13: Tensor, shared_w2: Tensor, intermediate_size: int
) -> tuple[Tensor, Tensor]:
    """[2Ns, H], [H, Ns] -> [S, 2N, H], [S, H, N] (chunks of N channels, zero-padded)."""
    n = intermediate_size
    ns = shared_w2.shape[1]
    slots = num_shared_slots(n, ns)
    pad = slots * n - ns
    gate = F.pad(shared_w13[:ns], (0, 0, 0, pad)).view(slots, n, -1)
    up = F.pad(shared_w13[ns:], (0, 0, 0, pad)).view(slots, n, -1)
    down = F.pad(shared_w2, (0, pad)).view(shared_w2.shape[0], slots, n).transpose(0, 1)
    return torch.cat([gate, up], dim=1), down.contiguous()


def fold_shared_experts(
    w13: Tensor, w2: Tensor, shared_w13: Tensor | None, shared_w2: Tensor | None
) -> tuple[Tensor, Tensor, int]:
    """Stack the shared MLP after the routed experts: ([E+S, 2N, H], [E+S, H, N], S)."""
    if shared_w13 is None or shared_w2 is None:
        return w13, w2, 0
    s13, s2 = shared_as_experts(shared_w13, shared_w2, w2.shape[2])
    return torch.cat([w13, s13]), torch.cat([w2, s2]), s13.shape[0]


def pad_intermediate(w13: Tensor, w2: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Zero-pad the expert width N of [E, 2N, H] / [E, H, N] up to a multiple of `multiple`."""
    n = w2.shape[2]
    pad = -n % multiple
    if pad == 0:
        return w13, w2
    gate = F.pad(w13[:, :n], (0, 0, 0, pad))
    up = F.pad(w13[:, n:], (0, 0, 0, pad))
    return torch.cat([gate, up], dim=1), F.pad(w2, (0, pad))

"""MoonViT math without vLLM: the 2-D RoPE table and rotation, the bicubic resize of the
learned position table, and the 2x2 merge order. The served encoder (moonvit.py) and the
demo's training model (server/model/demo) both use these, so they cannot drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Grid = tuple[int, int]


def rope_cos_sin(grid: Grid, head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """[gh*gw, head_dim/2, 2] (cos, sin); complex slot 2i rotates by column*f_i, 2i+1 by row*f_i."""
    gh, gw = grid
    freqs = 1.0 / theta ** (
        torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim
    )
    rows = torch.arange(gh, device=device, dtype=torch.float32).repeat_interleave(gw)
    cols = torch.arange(gw, device=device, dtype=torch.float32).repeat(gh)
    angles = torch.stack([torch.outer(cols, freqs), torch.outer(rows, freqs)], dim=-1).flatten(1)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """x [L, heads, head_dim] read as head_dim/2 complex pairs (even=real, odd=imag)."""
    cis = torch.view_as_complex(cos_sin)  # [L, head_dim/2] = cos + i*sin
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * cis[:, None]).flatten(-2).to(x.dtype)


def resize_position_table(table: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The [H, W, C] learned table resized (bicubic) to the grid, flattened row-major."""
    if tuple(grid) == tuple(table.shape[:2]):
        return table.flatten(0, 1)
    img = table.permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(img, size=grid, mode="bicubic").squeeze(0).permute(1, 2, 0).flatten(0, 1)


def merge_index(grids: list[Grid], merge: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Row indices that turn packed [sum gh*gw, C] into [sum gh*gw/4, 4, C] (TL, TR, BL, BR)."""
    kh, kw = merge
    parts, base = [], 0
    for gh, gw in grids:
        r = torch.arange(gh // kh, device=device).view(-1, 1, 1, 1) * kh + torch.arange(
            kh, device=device
        ).view(1, 1, -1, 1)
        c = torch.arange(gw // kw, device=device).view(1, -1, 1, 1) * kw + torch.arange(
            kw, device=device
        ).view(1, 1, 1, -1)
        parts.append((base + r * gw + c).reshape(-1))
        base += gh * gw
    return torch.cat(parts)

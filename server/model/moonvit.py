"""MoonViT for Kimi-VL: all images of a step encoded as ONE packed sequence.

patches [N, 3, 14, 14] -> linear patch embed + bicubic-interpolated 2D position table ->
27 pre-norm blocks with 2D RoPE (column-first) and block-diagonal (varlen) attention ->
final LayerNorm -> 2x2 merge -> [sum(gh*gw/4), 4, C]. Position embeddings and RoPE angles
depend only on the grid size, so they are cached per (gh, gw).

The encoder is replicated on every tensor-parallel rank (it is ~3% of the weights); its linears
are vLLM's ReplicatedLinear, so the loader's post-load step gives them the device's fastest
GEMM (on CPU: prepacked oneDNN weights), and attention goes through vLLM's MMEncoderAttention,
which picks a varlen kernel per device.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from vllm.model_executor.layers.attention import MMEncoderAttention
from vllm.model_executor.layers.linear import ReplicatedLinear

from server.model.moonvit_math import (
    Grid,
    apply_rope,
    merge_index,
    resize_position_table,
    rope_cos_sin,
)

_CACHE_SIZE = 128
# Patches per encoder pass on CPU (benchmarks/vision.py, 8 images 224²-1024², 2 cores: one pass
# over all 15140 patches 4.26 s, passes of <= 2048 / 4096 / 8192 patches 4.05 / 3.91 / 4.16 s).
CPU_PATCHES_PER_PASS = 4096


class _GridCache:
    """Small LRU of per-grid tensors (position embeddings, RoPE cos/sin, merge indices)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get(self, key: tuple, make) -> torch.Tensor:  # type: ignore[no-untyped-def]
        hit = self._items.get(key)
        if hit is None:
            hit = make()
            self._items[key] = hit
            if len(self._items) > _CACHE_SIZE:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return hit

    def clear(self) -> None:
        self._items.clear()


class PositionTable(nn.Module):
    """The learned [64, 64, C] table (checkpoint name `pos_emb.weight`)."""

    def __init__(self, pos_h: int, pos_w: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(pos_h, pos_w, hidden))


class PatchEmbed(nn.Module):
    def __init__(self, hidden: int, patch: int, pos_h: int, pos_w: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, hidden, kernel_size=patch, stride=patch)
        self.pos_emb = PositionTable(pos_h, pos_w, hidden)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        # A stride-14 conv over one 14x14 patch is a linear map of the flattened patch.
        w = self.proj.weight.view(self.proj.weight.shape[0], -1)
        return F.linear(patches.reshape(patches.shape[0], -1).to(w.dtype), w, self.proj.bias)

    def position_table(self, grid: Grid) -> torch.Tensor:
        return resize_position_table(self.pos_emb.weight, grid)


def _linear(inp: int, out: int, prefix: str) -> ReplicatedLinear:
    return ReplicatedLinear(inp, out, bias=True, return_bias=False, prefix=prefix)


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, prefix: str) -> None:
        super().__init__()
        self.fc0 = _linear(hidden, inner, f"{prefix}.fc0")
        self.fc1 = _linear(inner, hidden, f"{prefix}.fc1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class EncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, prefix: str) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.norm0 = nn.LayerNorm(hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.wqkv = _linear(hidden, 3 * hidden, f"{prefix}.wqkv")
        self.wo = _linear(hidden, hidden, f"{prefix}.wo")
        self.mlp = MLP(hidden, inner, f"{prefix}.mlp")
        self.attn = MMEncoderAttention(
            num_heads=heads,
            head_size=self.head_dim,
            scale=self.head_dim**-0.5,
            prefix=f"{prefix}.attn",
        )

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: torch.Tensor,
    ) -> torch.Tensor:
        qkv = self.wqkv(self.norm0(x)).view(x.shape[0], 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        q, k = apply_rope(q, cos_sin), apply_rope(k, cos_sin)
        attn = self.attn(
            q.unsqueeze(0),
            k.unsqueeze(0),
            v.unsqueeze(0),
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
        )
        x = x + self.wo(attn.reshape(x.shape[0], -1))
        return x + self.mlp(self.norm1(x))


class Encoder(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, layers: int, prefix: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            EncoderBlock(hidden, heads, inner, f"{prefix}.blocks.{i}") for i in range(layers)
        )
        self.final_layernorm = nn.LayerNorm(hidden)


class MoonViT(nn.Module):
    """Checkpoint prefix `vision_tower.`: patch_embed.{proj,pos_emb}, encoder.{blocks.B,final_layernorm}."""

    rope_theta = 10000.0

    def __init__(self, config, prefix: str = "") -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.merge = tuple(config.merge_kernel_size)
        self.head_dim = config.hidden_size // config.num_attention_heads
        if self.head_dim % 4:
            raise ValueError(
                f"MoonViT head_dim must be divisible by 4 for 2D RoPE, got {self.head_dim}"
            )
        self.patch_embed = PatchEmbed(
            config.hidden_size,
            config.patch_size,
            config.init_pos_emb_height,
            config.init_pos_emb_width,
        )
        self.encoder = Encoder(
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.num_hidden_layers,
            prefix=f"{prefix}.encoder",
        )
        self._cache = _GridCache()

    def _per_grid(self, grids: Sequence[Grid], kind: str, make) -> torch.Tensor:  # type: ignore[no-untyped-def]
        dev, dt = self.patch_embed.pos_emb.weight.device, self.patch_embed.pos_emb.weight.dtype
        return torch.cat([self._cache.get((kind, g, dev, dt), lambda g=g: make(g)) for g in grids])

    def merge_index(self, grids: Sequence[Grid]) -> torch.Tensor:
        """Row indices that turn packed [sum gh*gw, C] into [sum gh*gw/4, 4, C] (TL, TR, BL, BR)."""
        return merge_index(list(grids), self.merge, self.patch_embed.pos_emb.weight.device)

    def forward(self, pixel_values: torch.Tensor, grids: Sequence[Grid]) -> torch.Tensor:
        """Packed patches of several images -> merged features [sum gh*gw/4, 4, C].

        On CPU the images go through in consecutive groups of at most CPU_PATCHES_PER_PASS
        patches (an image larger than that alone): activations of a whole step's images do
        not stay in cache, and each elementwise pass over them then runs at memory speed.
        On GPUs the whole step is one pass (vLLM's encoder budget already bounds it).
        """
        grids = [(int(h), int(w)) for h, w in grids]
        budget = CPU_PATCHES_PER_PASS if pixel_values.device.type == "cpu" else None
        lengths = [h * w for h, w in grids]
        groups = _groups(lengths, budget)
        if len(groups) == 1:
            return self._forward_packed(pixel_values, grids)
        chunks = pixel_values.split([sum(lengths[a:b]) for a, b in groups])
        return torch.cat(
            [self._forward_packed(c, grids[a:b]) for c, (a, b) in zip(chunks, groups, strict=True)]
        )

    def _forward_packed(self, pixel_values: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        dev = pixel_values.device
        x = self.patch_embed.embed(pixel_values)
        x = x + self._per_grid(grids, "pos", self.patch_embed.position_table)
        cos_sin = self._per_grid(
            grids, "rope", lambda g: rope_cos_sin(g, self.head_dim, self.rope_theta, dev)
        )
        lens = torch.tensor([h * w for h, w in grids], dtype=torch.int32)
        cu_seqlens = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0)).to(dev)
        max_seqlen = lens.max()
        for block in self.encoder.blocks:
            x = block(x, cos_sin, cu_seqlens, max_seqlen)
        x = self.encoder.final_layernorm(x)
        kh, kw = self.merge
        return x.index_select(0, self.merge_index(grids)).view(-1, kh * kw, x.shape[-1])


def _groups(lengths: Sequence[int], budget: int | None) -> list[tuple[int, int]]:
    """[first, last) index ranges of consecutive items, each summing to at most `budget`
    (an item longer than the budget forms a group of its own); one group if budget is None."""
    if budget is None:
        return [(0, len(lengths))]
    groups: list[tuple[int, int]] = []
    first, total = 0, 0
    for i, n in enumerate(lengths):
        if i > first and total + n > budget:
            groups.append((first, i))
            first, total = i, 0
        total += n
    groups.append((first, len(lengths)))
    return groups

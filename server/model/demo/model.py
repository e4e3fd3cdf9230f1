"""A trainable Kimi-VL in plain PyTorch (no vLLM): the same math as the served class.

MoonViT (linear patch embed + bicubic-resized learned position table, pre-norm blocks with 2-D
RoPE and attention within each image, final LayerNorm, 2x2 merge) -> projector (LayerNorm per
sub-vector, Linear, erf-GELU, Linear) -> DeepSeek-V3 decoder (RMSNorm, MLA with a 512-wide
latent and interleaved RoPE on 64 dims, a dense first layer, then sigmoid-routed MoE with a
correction bias and shared experts) -> RMSNorm -> untied head.

Module and parameter names follow the checkpoint, except that the routed experts of a layer
are stacked (`experts_w13` [E, 2N, H], `experts_w2` [E, H, N]); export.py splits them.
The vision blocks run on packed patches, attention over runs of same-size images; text is
right-padded and attention is causal, so padding never reaches a real position.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from server.model.moonvit_math import (
    Grid,
    apply_rope,
    merge_index,
    resize_position_table,
    rope_cos_sin,
)

VISION_ROPE_THETA = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


# -- vision ---------------------------------------------------------------------------------------


class VisionMLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.fc0 = nn.Linear(hidden, inner)
        self.fc1 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class VisionBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.norm0 = nn.LayerNorm(hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.wqkv = nn.Linear(hidden, 3 * hidden)
        self.wo = nn.Linear(hidden, hidden)
        self.mlp = VisionMLP(hidden, inner)

    def forward(self, x: torch.Tensor, cos_sin: torch.Tensor, groups: list[Group]) -> torch.Tensor:
        """x [N, C] packed patches, cos_sin [N, D/2, 2]; `groups` (see `length_groups`) are
        runs of same-size images: attention runs within each image with no padding."""
        total, c = x.shape
        qkv = self.wqkv(self.norm0(x)).view(total, 3, self.heads, self.head_dim)
        q, k, v = apply_rope(qkv[:, 0], cos_sin), apply_rope(qkv[:, 1], cos_sin), qkv[:, 2]
        outs = []
        for start, count, length in groups:
            end = start + count * length
            q_, k_, v_ = (
                t[start:end].view(count, length, self.heads, self.head_dim).transpose(1, 2)
                for t in (q, k, v)
            )
            outs.append(F.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2))
        attn = torch.cat([o.reshape(-1, c) for o in outs])
        x = x + self.wo(attn)
        return x + self.mlp(self.norm1(x))


Group = tuple[int, int, int]  # (first packed row, images, patches per image)


def length_groups(lengths: list[int]) -> tuple[list[int], list[Group]]:
    """Images reordered so that same-size ones are adjacent (stable), and the runs they form:
    (order of the images, [(first packed row, images, patches each)])."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[Group] = []
    row = 0
    for i in order:
        if groups and groups[-1][2] == lengths[i]:
            first, count, length = groups[-1]
            groups[-1] = (first, count + 1, length)
        else:
            groups.append((row, 1, lengths[i]))
        row += lengths[i]
    return order, groups


POSITION_FREQUENCIES = (0.5, 1.0, 2.0, 3.0)  # half-periods across the picture


def position_init(pos_h: int, pos_w: int, hidden: int) -> torch.Tensor:
    """The learned table's starting value: small noise, plus on the first 4 x len(
    POSITION_FREQUENCIES) channels sin/cos waves of x and y with at most three half-periods
    across the picture (like MAE's fixed 2-D sin-cos table, but only low frequencies, which
    survive the bicubic resize to any grid). Every token then knows where it is from the
    first step: the position and motion questions need a shape's x and y in its features, and
    a ViT learning them from noise took hundreds of steps to find them at all."""
    table = torch.randn(pos_h, pos_w, hidden) * 0.02
    v = ((torch.arange(pos_h) + 0.5) / pos_h)[:, None].expand(pos_h, pos_w)
    u = ((torch.arange(pos_w) + 0.5) / pos_w)[None, :].expand(pos_h, pos_w)
    waves = []
    for f in POSITION_FREQUENCIES:
        waves += [torch.sin(math.pi * f * u), torch.cos(math.pi * f * u)]
        waves += [torch.sin(math.pi * f * v), torch.cos(math.pi * f * v)]
    table[..., : len(waves)] = torch.stack(waves, dim=-1)
    return table


class PositionTable(nn.Module):
    """The learned [H, W, C] table (checkpoint name `pos_emb.weight`)."""

    def __init__(self, pos_h: int, pos_w: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(position_init(pos_h, pos_w, hidden))


class PatchEmbed(nn.Module):
    def __init__(self, hidden: int, patch: int, pos_h: int, pos_w: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, hidden, kernel_size=patch, stride=patch)
        self.pos_emb = PositionTable(pos_h, pos_w, hidden)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight.view(self.proj.weight.shape[0], -1)
        return F.linear(patches.reshape(patches.shape[0], -1), w, self.proj.bias)


class VisionEncoder(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(VisionBlock(hidden, heads, inner) for _ in range(layers))
        self.final_layernorm = nn.LayerNorm(hidden)


class MoonViT(nn.Module):
    def __init__(self, vc: dict) -> None:
        super().__init__()
        self.hidden, self.heads = vc["hidden_size"], vc["num_attention_heads"]
        self.merge = (int(vc["merge_kernel_size"][0]), int(vc["merge_kernel_size"][1]))
        self.patch_embed = PatchEmbed(
            self.hidden, vc["patch_size"], vc["init_pos_emb_height"], vc["init_pos_emb_width"]
        )
        self.encoder = VisionEncoder(
            self.hidden, self.heads, vc["intermediate_size"], vc["num_hidden_layers"]
        )

    def merged_tokens(self, grids: list[Grid]) -> list[int]:
        """How many merged tokens (rows of `forward`'s output) each image of `grids` gives."""
        kh, kw = self.merge
        return [(h // kh) * (w // kw) for h, w in grids]

    def forward(self, pixel_values: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        """Packed patches [sum gh*gw, 3, 14, 14] -> merged features [sum gh*gw/4, 4, C].

        The blocks run on the patches reordered by image size (`length_groups`): per-token
        layers see no padding and attention needs no mask."""
        lengths = [h * w for h, w in grids]
        dev = pixel_values.device
        x = self.patch_embed(pixel_values)
        table, head_dim = self.patch_embed.pos_emb.weight, self.hidden // self.heads
        sizes = dict.fromkeys(grids)  # each distinct grid resized once (a clip's frames share one)
        pos = {g: resize_position_table(table, g) for g in sizes}
        rope = {g: rope_cos_sin(g, head_dim, VISION_ROPE_THETA, dev) for g in sizes}
        x = x + torch.cat([pos[g] for g in grids])
        cos_sin = torch.cat([rope[g] for g in grids])
        order, groups = length_groups(lengths)
        starts = [0, *itertools.accumulate(lengths)]
        rows = torch.cat([torch.arange(starts[i], starts[i + 1], device=dev) for i in order])
        x, cos_sin = x[rows], cos_sin[rows]
        for block in self.encoder.blocks:
            x = block(x, cos_sin, groups)
        x = self.encoder.final_layernorm(x)
        back = torch.empty_like(rows)
        back[rows] = torch.arange(len(rows), device=dev)
        x = x[back]  # back to the images' order
        kh, kw = self.merge
        return x.index_select(0, merge_index(grids, self.merge, dev)).view(-1, kh * kw, self.hidden)


class Projector(nn.Module):
    def __init__(self, vision_hidden: int, merge: int, text_hidden: int) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(vision_hidden, eps=1e-5)
        self.linear_1 = nn.Linear(vision_hidden * merge, vision_hidden * merge)
        self.linear_2 = nn.Linear(vision_hidden * merge, text_hidden)
        # Image features start at the scale of the token embeddings (N(0, 1)), so an image
        # token's own content is not drowned by what the decoder layers add to it.
        nn.init.normal_(self.linear_2.weight, std=4 * (vision_hidden * merge) ** -0.5)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(self.pre_norm(merged).flatten(1))))


# -- language model -------------------------------------------------------------------------------


def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """GPT-J style: channel pair (2i, 2i+1) rotates by position * theta^(-2i/d). x [..., L, d]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = positions.float()[:, None] * inv[None]  # [L, d/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.flatten(-2).to(x.dtype)


class MLA(nn.Module):
    def __init__(self, tc: dict) -> None:
        super().__init__()
        h, self.heads = tc["hidden_size"], tc["num_attention_heads"]
        self.nope, self.rope, self.vdim = (
            tc["qk_nope_head_dim"],
            tc["qk_rope_head_dim"],
            tc["v_head_dim"],
        )
        self.rank, self.theta = tc["kv_lora_rank"], float(tc["rope_theta"])
        self.q_proj = nn.Linear(h, self.heads * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.rank, tc["rms_norm_eps"])
        self.kv_b_proj = nn.Linear(self.rank, self.heads * (self.nope + self.vdim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.vdim, h, bias=False)
        self.capture = False
        # training: q, k and v [B, heads, L, head width] of the last forward
        self.captured: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b(norm(latent)) and the shared rope key, latent and rope key = kv_a(x).

        While training, the same function without the 512-wide latent: with W_a the latent
        rows of kv_a and g the norm's weight, kv_b(g * W_a x / rms(W_a x)) = (W_b diag(g) W_a) x
        / sqrt(x^T (W_a^T W_a) x / rank + eps), two hidden-wide products per token instead of
        hidden->rank->heads (the latent is 4x the hidden; a quarter of the step's time)."""
        if not self.training:
            latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
            return self.kv_b_proj(self.kv_a_layernorm(latent)), k_pe
        w_a, w_pe = self.kv_a_proj_with_mqa.weight.split([self.rank, self.rope], dim=0)
        norm = self.kv_a_layernorm
        joint = (self.kv_b_proj.weight * norm.weight[None, :]) @ w_a  # [heads*(nope+v), H]
        gram = w_a.t() @ w_a  # [H, H]
        mean_sq = (x @ gram * x).sum(-1, keepdim=True) / self.rank
        return (x @ joint.t()) * torch.rsqrt(mean_sq + norm.eps), x @ w_pe.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, H], causal, positions 0..L-1."""
        b, length, _ = x.shape
        pos = torch.arange(length, device=x.device)
        q = self.q_proj(x).view(b, length, self.heads, self.nope + self.rope).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        kv, k_pe = self._kv(x)
        kv = kv.view(b, length, self.heads, self.nope + self.vdim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.vdim], dim=-1)
        q_pe = rope_interleaved(q_pe, pos, self.theta)
        k_pe = rope_interleaved(k_pe, pos, self.theta).unsqueeze(1).expand(-1, self.heads, -1, -1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe], dim=-1)
        # v padded to the q/k width: CPU SDPA then takes its fused kernel (same result).
        width = self.nope + self.rope
        out = F.scaled_dot_product_attention(q, k, F.pad(v, (0, width - self.vdim)), is_causal=True)
        out = out[..., : self.vdim]
        if self.capture:  # training: the focus, value and shortcut losses read q, k and v
            self.captured = (q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, self.heads * self.vdim))


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    e_score_correction_bias: torch.Tensor

    def __init__(self, experts: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden) * hidden**-0.5)
        self.register_buffer("e_score_correction_bias", torch.zeros(experts))


class MoE(nn.Module):
    """top-k of E by sigmoid score + correction bias; weights = unbiased scores renormalised,
    x routed_scaling_factor; plus the shared MLP. Tracks per-expert load while training."""

    load: torch.Tensor

    def __init__(self, tc: dict) -> None:
        super().__init__()
        h, n, e = tc["hidden_size"], tc["moe_intermediate_size"], tc["n_routed_experts"]
        self.top_k, self.scaling = tc["num_experts_per_tok"], float(tc["routed_scaling_factor"])
        self.gate = Gate(e, h)
        self.experts_w13 = nn.Parameter(torch.randn(e, 2 * n, h) * h**-0.5)
        self.experts_w2 = nn.Parameter(torch.randn(e, h, n) * n**-0.5 / 4)
        self.shared_experts = DenseMLP(h, n * tc["n_shared_experts"])
        self.register_buffer("load", torch.zeros(e), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        scores = F.linear(flat.float(), self.gate.weight.float()).sigmoid()
        choice = scores + self.gate.e_score_correction_bias.float()
        ids = torch.sort(choice.detach(), dim=-1, descending=True, stable=True).indices
        ids = ids[:, : self.top_k]
        weights = scores.gather(1, ids)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * self.scaling
        out = self.shared_experts(flat).float()
        n = self.experts_w2.shape[2]
        for e in range(self.experts_w13.shape[0]):
            token, slot = (ids == e).nonzero(as_tuple=True)
            if self.training:
                self.load[e] += token.numel()
            if token.numel() == 0:
                continue
            gu = flat[token] @ self.experts_w13[e].t()
            y = (F.silu(gu[:, :n]) * gu[:, n:]) @ self.experts_w2[e].t()
            out = out.index_add(0, token, y.float() * weights[token, slot].unsqueeze(1))
        return out.to(x.dtype).view(shape)

    @torch.no_grad()
    def balance(self, rate: float) -> None:
        """Auxiliary-loss-free balancing: nudge the bias of busy experts down, idle ones up."""
        if self.load.sum() > 0:
            self.gate.e_score_correction_bias += rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()


class DecoderLayer(nn.Module):
    def __init__(self, tc: dict, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"])
        self.self_attn = MLA(tc)
        self.mlp: nn.Module = (
            DenseMLP(tc["hidden_size"], tc["intermediate_size"])
            if index < tc["first_k_dense_replace"]
            else MoE(tc)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    def __init__(self, tc: dict) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(tc["vocab_size"], tc["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(tc, i) for i in range(tc["num_hidden_layers"]))
        self.norm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"])


class LanguageModel(nn.Module):
    def __init__(self, tc: dict) -> None:
        super().__init__()
        self.model = TextModel(tc)
        self.lm_head = nn.Linear(tc["hidden_size"], tc["vocab_size"], bias=False)


@dataclass
class Batch:
    """Right-padded token ids [B, L] and the packed patches of all their images, in order."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    grids: list[Grid]


class KimiVL(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        vc, tc = config["vision_config"], config["text_config"]
        self.media_pad_id = int(config["media_placeholder_token_id"])
        merge = vc["merge_kernel_size"][0] * vc["merge_kernel_size"][1]
        self.vision_tower = MoonViT(vc)
        self.multi_modal_projector = Projector(vc["hidden_size"], merge, tc["hidden_size"])
        self.language_model = LanguageModel(tc)

    def image_features(self, batch: Batch) -> torch.Tensor | None:
        """Projected features [sum gh*gw/4, H] of the batch's images, in order (None: none)."""
        if batch.pixel_values is None or not batch.grids:
            return None
        return self.multi_modal_projector(self.vision_tower(batch.pixel_values, batch.grids))

    def embed(self, batch: Batch, feats: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [B, L, H] with the image features (`feats`, or computed here) in
        place of the pads."""
        x = self.language_model.model.embed_tokens(batch.input_ids)
        if feats is None:
            feats = self.image_features(batch)
        if feats is not None:
            mask = batch.input_ids == self.media_pad_id
            if int(mask.sum()) != feats.shape[0]:
                raise ValueError(f"{int(mask.sum())} placeholders for {feats.shape[0]} features")
            x = x.masked_scatter(mask.unsqueeze(-1), feats.to(x.dtype))
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Input embeddings [B, L, H] -> final (normed) hidden states [B, L, H]."""
        return self.decode_keeping(x, ())[0]

    def decode_keeping(
        self, x: torch.Tensor, layers: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`decode`, also returning the outputs of the decoder layers `layers`, in order."""
        kept = []
        for i, block in enumerate(self.language_model.model.layers):
            x = block(x)
            if i in layers:
                kept.append(x)
        return self.language_model.model.norm(x), kept

    def logits_at(
        self,
        batch: Batch,
        rows: torch.Tensor,
        cols: torch.Tensor,
        feats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [K, V] at the K positions (rows[k], cols[k]) only."""
        h = self.decode(self.embed(batch, feats))
        return self.language_model.lm_head(h[rows, cols]).float()

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

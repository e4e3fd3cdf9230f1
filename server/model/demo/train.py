"""Train the demo Kimi-VL from scratch on the synthetic tasks and export a servable checkpoint.

`python -m server.model.demo.train --out DIR [--steps N] [--seed S] [--threads T]`

Deterministic for a seed (and thread count) on one machine (another day's rerun of the shipped
recipe gave slightly different weights): weights start from torch.manual_seed(seed), and
training draw i of the run is a pure function of (seed, i). Four stages. Stage 1
(`--vision-pretrain` steps): the vision tower and projector alone learn each token's colour and
shape on small canvases (`pretrain_vision`). Stage 2 (`--steps`): each step draws `--batch-size`
samples (tasks mixed by weight; most continue as a conversation with up to three more
questions about the same media, among them a training-only up-or-down twin of the position
question, data.VERTICAL_QUESTION), sorts them by length and runs them in micro-batches of at
most `--tokens-per-micro-batch` padded tokens. The loss is cross-entropy on the answer tokens
(and their `<|im_end|>`), plus two training-only signals that make a model this small learn
in minutes instead of hours: per-token probes on the image features (colour, shape, centre,
position, image/frame index) and a focus loss that teaches two attention heads to look at the
image tokens each question is about (and, for the count, to spread one share per shape over
the tokens around its centre, plus a share on one fixed token) and two heads of the layer
below to read the question's colour and shape words that this look needs. The decoder's
losses reach the vision tower through the features of every sample not asked the count
question (`--other-through`; the count's pictures keep the probe-trained features: letting
them through too cost the count 0.03-0.05), the count's focus heads keep the logits of the
centre tokens near zero (`centring_loss`), and their summed attention on the picture against
the sink's is held to the number of shapes (`ratio_loss`). On the task pictures the vision
side also learns from an attention-shaped count probe (`TokenProbe.count_loss`): one head
whose attention over a picture's tokens, against a fixed sink, sums to its number of shapes
(with both, the count on 600 held-out pictures went from 0.79 to 0.86). The position table
of the vision tower starts with x and y waves (model.position_init). AdamW with
warm-up and cosine decay; after every step the MoE routers' correction biases move towards
balanced expert load. Stage 3 (`--count-heads-steps`, `train_count_heads`): on count pictures
alone, decoder layer 0's attention learns two more heads that count (`count_heads_loss`) and
an answer read from them (`count_shortcut_loss`), and the vision side learns from those losses
too. Stage 4 (`--readout-steps`, `train_readout`): the decoder learns every task again, the
count drawn more often, so that the answer reads those heads, and the vision side learns
slowly from every task's losses. The checkpoint is written to DIR with a manifest.json holding
sha256 of every file, the command, seed, steps, wall time and the held-out accuracy per task of
the exported (bf16) weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from server.model.demo import checkpoint
from server.model.demo.data import (
    COUNT_SINK_WEIGHTS,
    FOCUS_HEADS,
    TASK_WEIGHTS,
    Draw,
    TrainBatch,
    canvas,
    collate,
    draw,
    encode_draws,
    picture,
    split_token_class,
    token_labels,
)
from server.model.demo.evaluate import accuracy, heldout_samples
from server.model.demo.model import MLA, KimiVL
from server.model.demo.prompt import Encoded, PromptBuilder
from server.model.demo.tasks import COLORS, SHAPES, TASKS, Sample, heldout_seed, make_sample
from server.model.image_processing import ImageProcessorConfig, preprocess_images
from server.model.tokenizer import TikTokenTokenizer

BALANCE_RATE = 1e-3
EVAL_OFFSET = 1  # progress evaluation uses other held-out seeds than the final one


def load_builder(tok_dir: Path) -> PromptBuilder:
    tokenizer = TikTokenTokenizer.from_pretrained(str(tok_dir))
    return PromptBuilder(
        tokenizer, ImageProcessorConfig.from_dict(checkpoint.preprocessor_config())
    )


def question_words(builder: PromptBuilder) -> dict[int, int]:
    """Token id of each colour (-> 0) and shape (-> 1) word as the questions spell it (one
    token each, with its leading space: the tokenizer's corpus makes them so)."""
    out: dict[int, int] = {}
    for head, names in enumerate((COLORS, SHAPES)):
        for name in names:
            ids = builder.text(" " + name)
            if len(ids) != 1:
                raise ValueError(f"{name!r} is {len(ids)} tokens")
            out[ids[0]] = head
    return out


def micro_batches(items: list[Encoded], budget: int) -> list[list[Encoded]]:
    """Length-sorted chunks whose padded size (count x longest) stays within `budget`."""
    items = sorted(items, key=lambda e: len(e.prompt_ids) + len(e.target_ids))
    chunks: list[list[Encoded]] = [[]]
    for e in items:
        length = len(e.prompt_ids) + len(e.target_ids)
        if chunks[-1] and (len(chunks[-1]) + 1) * length > budget:
            chunks.append([])
        chunks[-1].append(e)
    return chunks


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


MAX_MEDIA_INDEX = 15
WHERE_BACKGROUND, WHERE_SHAPE = 4.0, 16.0  # weights of the position probe's squared error
MAX_SHAPES = 6
# Decoder layer whose first FOCUS_HEADS heads are taught where to look. Two heads of layer 0,
# where an image token's key comes from its own vision feature alone, were also taught the
# count (trained from scratch with 1500 task-picture steps): their attention ratio read it
# worse than layer 1's (log error sd 0.15-0.16 taught at the count's answers only, 0.13-0.14
# taught at every answer over all of its media's shapes, where motion fell to 0.76; layer 1's
# 0.11), and the model counted 600 held-out pictures no better (0.867 and 0.822).
FOCUS_LAYER = 1
ORDER_LAYER = 0  # decoder layer whose output at image tokens is taught the image/frame index
ASK_LAYER = 0  # decoder layer whose first ASK_HEADS heads are taught to read the question
# Deep supervision: the answers are also read from these layers' outputs (through the final
# norm and the head, weighted by --early-weight), so the layer whose heads look at the image
# learns at once to turn what they see into an answer, instead of waiting for the layers above.
EARLY_LAYERS = (FOCUS_LAYER,)


class TokenProbe(nn.Module):
    """Training-only heads on image tokens, not exported: they give the vision tower a dense
    signal long before the answers alone would. On the projected features (the decoder's
    input): the token's colour and shape (or background), whether a shape's centre is in it,
    where it is (x, y fractions of the picture), how many shapes its picture has and which
    side of the other shape its shape is on; per picture, how many shapes one attention head
    over its tokens counts (`count_loss`). On the output of decoder layer ORDER_LAYER
    (what FOCUS_LAYER's attention reads): which image or frame of the request the token
    belongs to."""

    def __init__(self, hidden: int, head_dim: int) -> None:
        super().__init__()
        # per focus head: from its output (before o_proj) what it reads (data.focus_values)
        self.value = nn.ModuleList(
            nn.Linear(head_dim, sum(VALUE_WIDTHS)) for _ in range(FOCUS_HEADS)
        )
        self.color = nn.Linear(hidden, len(COLORS) + 1)
        self.shape = nn.Linear(hidden, len(SHAPES))
        self.centre = nn.Linear(hidden, 1)
        self.where = nn.Linear(hidden, 2)
        self.count = nn.Linear(hidden, MAX_SHAPES + 1)
        self.side = nn.Linear(hidden, 2)
        self.order = nn.Linear(hidden, MAX_MEDIA_INDEX + 1)
        # the count as one attention head would read it (see count_loss)
        self.count_key = nn.Linear(hidden, COUNT_KEY_DIM, bias=False)
        self.count_logit = nn.Linear(COUNT_KEY_DIM, 1, bias=False)
        self.count_sink = nn.Parameter(torch.zeros(()))

    def what_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed colour (or background) and shape cross-entropy of each token (shape only
        where a shape is)."""
        f = feats.float()
        color, shape = split_token_class(labels[:, 0].long())
        total = F.cross_entropy(self.color(f), color, reduction="sum")  # background: class 0
        # Shape only where one is: scored on every token, the background class (most tokens)
        # would swamp it.
        return total + _masked_ce(self.shape(f), shape - 1, color > 0)

    def where_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed weighted squared error of each token's (x, y): its shape's centre, or its own
        centre on the background."""
        where = (self.where(feats.float()) - labels[:, 2:4]).pow(2).sum(-1)
        # Shapes' positions weigh more: background tokens (most of them) only say where they are.
        return (where * torch.where(labels[:, 0] > 0, WHERE_SHAPE, WHERE_BACKGROUND)).sum()

    def centre_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed binary cross-entropy of each token's share of the shapes' centres (soft
        targets, data._centre_share): where the count's focus heads look, one share per shape."""
        return F.binary_cross_entropy_with_logits(
            self.centre(feats.float())[:, 0], labels[:, 1].clamp(max=1), reduction="sum"
        )

    def count_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """[tokens] the count head's attention logit of each token against the sink's: a
        linear read of the RMS-normed key of its RMS-normed features (see count_loss)."""
        return self.count_logit(_rms(self.count_key(_rms(feats.float()))))[:, 0] - self.count_sink

    def count_loss(
        self, feats: torch.Tensor, labels: torch.Tensor, sizes: list[int]
    ) -> torch.Tensor:
        """Summed over the images (and frames) with shapes, `sizes` their numbers of tokens
        (MoonViT.merged_tokens): one attention head over the image's tokens and a fixed sink, its
        logits a linear read of the RMS-normed key (as an MLA key is read) of the token's features.
        Its attention should be spread like the count's focus (each shape's centre share, one share
        on the sink: cross-entropy), and the summed attention on the image against the sink's must
        be the number of shapes (squared log error, COUNT_RATIO_SCALE). The count's focus heads read
        it in the same way, and a per-token probe leaves the sum of many tokens' small errors to
        chance: fitted on the features of a run without this loss, such a head counted 0.78 of
        held-out pictures right. Two variants trained from scratch with 1000 task-picture steps
        did not count better (600 held-out pictures): this head's logit a linear read of the
        token's normed features (as a decoder key nearly is; the focus heads' log error sd 0.11
        instead of 0.12, the model 0.815); and that, plus the focus heads taught each image
        token's logit against the sink from this head's, weighted by its share (sd 0.096, a
        1-D read of their ratio 0.883, the model 0.83: the answer lost what the heads gained;
        with --value-weight 1.0 on top, 0.80). A head of decoder layer 0 can copy a linear read
        exactly: there an image token's rope key is a linear map of its RMS-normed feature, and the
        query where the count's answer is predicted comes from that position's token alone, the
        same for every count question. Taught so (commit e1c9b87: its logits, spread and ratio
        against the sink from this head's, its value zero on image tokens and fixed at the sink;
        1500 task-picture steps), it read the count with a log error sd of 0.105 (a 1-D read of
        its ratio 0.91 of 600 held-out pictures), but the model counted 0.75 of 100; with the
        count's answers also read from layer 0's output (159547b), 0.81. The head read no better
        than this head did after training, because training moves the features (see
        pretrain_vision)."""
        logits = self.count_logits(feats)
        total = logits.new_zeros(())
        start = 0
        for size in sizes:
            end = start + size
            n = float(labels[start, 5]) if end > start else 0.0
            if n > 0:
                seg, share = logits[start:end], labels[start:end, 1]
                every = torch.cat([seg.new_zeros(1), seg])
                logp = every.log_softmax(-1)
                want = torch.cat([share.new_ones(1), share]) / (1.0 + share.sum())
                total = total - (want * logp).sum()
                ratio = torch.logsumexp(seg, -1)  # the sink's logit is 0
                total = total + COUNT_RATIO_SCALE * (ratio - math.log(n)).pow(2)
            start = end
        return total

    def loss(
        self, feats: torch.Tensor, mid: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        f = feats.float()
        total = self.what_loss(f, labels) + self.where_loss(f, labels)
        side = labels[:, 6].long()  # only on the two shapes of a position picture
        total = total + _masked_ce(self.side(f), side - 1, side > 0)
        total = total + self.centre_loss(f, labels)
        total = total + F.cross_entropy(self.count(f), labels[:, 5].long(), reduction="sum")
        if mid is None:
            return total
        order = labels[:, 4].long().clamp(max=MAX_MEDIA_INDEX)
        return total + F.cross_entropy(self.order(mid.float()), order, reduction="sum")


VALUE_WIDTHS = (2, len(COLORS), len(SHAPES), MAX_MEDIA_INDEX + 1, MAX_SHAPES + 1)
COUNT_KEY_DIM = 64
COUNT_RATIO_SCALE = 4.0


def _rms(x: torch.Tensor) -> torch.Tensor:
    """RMS norm without a weight (as an MLA key's norm, whose weight the next linear map takes)."""
    return F.rms_norm(x, (x.shape[-1],), eps=1e-6)


def value_loss(probe: TokenProbe, attn: MLA, tb: TrainBatch) -> torch.Tensor:
    """The value-side twin of the focus loss, summed over the answers and the focus heads:
    each head's output at the position that predicts the answer, read by a linear probe, must
    say what the tokens it is taught to look at show (data.focus_values: where the shape is,
    its colour, shape, image or frame, or how many shapes there are). The answer is then a
    simple function of the two heads' outputs (motion: the last frame's (x, y) minus the
    first's) instead of something the layers above have to discover."""
    rows, cols, want = tb.focus_rows, tb.focus_cols, tb.focus_values
    total = torch.zeros(())
    if rows.numel() == 0:
        return total
    out = focus_reads(attn, rows, cols)
    for head, read in enumerate(probe.value):
        xy, color, shape, media, count = read(out[:, head]).split(VALUE_WIDTHS, dim=-1)
        w = want[:, head]
        has = ~w[:, 0].isnan()
        if bool(has.any()):
            total = total + WHERE_SHAPE * (xy[has] - w[has, :2]).pow(2).sum()
            total = total + F.cross_entropy(color[has], w[has, 2].long(), reduction="sum")
            total = total + F.cross_entropy(shape[has], w[has, 3].long(), reduction="sum")
            index = w[has, 4].long().clamp(max=MAX_MEDIA_INDEX)
            total = total + F.cross_entropy(media[has], index, reduction="sum")
        counted = ~w[:, 5].isnan()
        total = total + _masked_ce(count, w[:, 5].nan_to_num(0).long(), counted)
    return total


def focus_reads(attn: MLA, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[K, FOCUS_HEADS, v_head_dim] what the focus heads of `attn` read at the K positions
    (rows, cols): their outputs, recomputed with the attention weights detached. The value and
    shortcut losses teach what a head carries and how the answer reads it, not where it
    looks (the focus loss teaches that). In the run that let their gradient through, the
    motion heads' attention on the first and last frames' shape stayed at 0.43-0.67 from step
    500 on (0.93-0.99 in the recipe before the shortcut)."""
    assert attn.captured is not None
    v = attn.captured[2][rows, :FOCUS_HEADS].float()  # [K, heads, L, D]
    weights = attention_logp(attn, rows, cols, FOCUS_HEADS, detach=True).exp()
    return torch.einsum("khl,khld->khd", weights, v)


def attention_logits(
    attn: MLA,
    rows: torch.Tensor,
    cols: torch.Tensor,
    heads: int,
    *,
    detach: bool = False,
    first: int = 0,
) -> torch.Tensor:
    """[K, heads, L] attention logits of `heads` heads of `attn` from head `first` on (its
    captured q and k) at the K positions (rows, cols), before the causal mask."""
    assert attn.captured is not None
    q, k, _ = attn.captured
    qs = q[rows, first : first + heads, cols].float()  # [K, heads, D]
    ks = k[rows, first : first + heads].float()  # [K, heads, L, D]
    if detach:
        qs, ks = qs.detach(), ks.detach()
    return torch.einsum("khd,khld->khl", qs, ks) * qs.shape[-1] ** -0.5


def attention_logp(
    attn: MLA,
    rows: torch.Tensor,
    cols: torch.Tensor,
    heads: int,
    *,
    detach: bool = False,
    first: int = 0,
) -> torch.Tensor:
    """[K, heads, L] log attention weights of `heads` heads of `attn` from head `first` on (its
    captured q and k) at the K positions (rows, cols), causal."""
    logits = attention_logits(attn, rows, cols, heads, detach=detach, first=first)
    causal = torch.arange(logits.shape[-1])[None, :] <= cols[:, None]  # [K, L]
    return torch.log_softmax(logits.masked_fill(~causal[:, None], float("-inf")), dim=-1)


def shortcut_loss(model: KimiVL, tb: TrainBatch) -> torch.Tensor:
    """Summed cross-entropy of each focused answer's first token read from the focus heads
    alone: their outputs through their columns of o_proj, the final norm and the head, with
    nothing else of the residual stream. What they read reaches the answer through a linear
    path in the real model too, but there it is a small part of the residual, and learning
    that readout took hundreds of steps after the heads were looking at the right tokens
    (motion: attention 0.98 on target and the value probe's direction right on every
    held-out clip at step 500, answers at chance)."""
    attn = model.language_model.model.layers[FOCUS_LAYER].self_attn
    assert isinstance(attn, MLA)
    rows, cols = tb.focus_rows, tb.focus_cols
    if rows.numel() == 0:
        return torch.zeros(())
    width = FOCUS_HEADS * attn.vdim
    heads = focus_reads(attn, rows, cols).reshape(len(rows), width)
    hidden = heads @ attn.o_proj.weight[:, :width].t()
    lm = model.language_model
    logits = lm.lm_head(lm.model.norm(hidden)).float()
    return F.cross_entropy(logits, tb.focus_targets, reduction="sum")


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not bool(mask.any()):
        return logits.new_zeros(())
    return F.cross_entropy(logits[mask], target[mask], reduction="sum")


def forward(
    model: KimiVL,
    tb: TrainBatch,
    detach_vision: bool = False,
    early: bool = False,
    through: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
    """Logits at the target positions, the image features, layer ORDER_LAYER's output at the
    image tokens (same order as the features), and the logits at the target positions read
    early (`early`: EARLY_LAYERS' outputs through the final norm and the head; else none).
    `detach_vision`: the decoder's losses do not reach the vision tower and projector (they
    learn from the probes alone)."""
    feats = model.image_features(tb.batch)
    into = None if feats is None else feats.detach() if detach_vision else feats
    if feats is not None and detach_vision and through is not None:
        # the decoder's losses reach these image tokens' features after all, scaled by `through`
        # (per image token: --other-through or --count-through for its sample)
        into = feats.detach() + (feats - feats.detach()) * through[:, None].to(feats.dtype)
    reads = EARLY_LAYERS if early else ()
    keep = (ORDER_LAYER, *reads)
    h, kept = model.decode_keeping(model.embed(tb.batch, into), keep)
    by_layer = dict(zip(sorted(set(keep)), kept, strict=True))
    mid = None
    if feats is not None:
        mid = by_layer[ORDER_LAYER][tb.batch.input_ids == model.media_pad_id]
    head, norm = model.language_model.lm_head, model.language_model.model.norm
    logits = [head(norm(by_layer[i][tb.rows, tb.cols])).float() for i in reads]
    return head(h[tb.rows, tb.cols]).float(), feats, mid, logits


def attention_loss(
    attn: MLA,
    rows: torch.Tensor,
    cols: torch.Tensor,
    masks: torch.Tensor,
    uniform: torch.Tensor | None = None,
    sink: torch.Tensor | None = None,
    share: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed over the first masks.shape[1] heads of `attn` (its captured q and k) at the K
    positions (rows, cols): -log(attention weight on the masked positions) [K, heads, L], or
    where `uniform` [K] is set, the cross-entropy of the attention against an even spread
    over them (or in proportion to `share` [K, L]: the count's shapes' centres per token),
    in which position `sink` [K] counts COUNT_SINK_WEIGHTS[head] times."""
    total = torch.zeros(())
    if rows.numel() == 0:
        return total
    every = attention_logp(attn, rows, cols, masks.shape[1])
    for head in range(masks.shape[1]):
        logp = every[:, head]
        mask = masks[:, head]
        on = torch.logsumexp(logp.masked_fill(~mask, float("-inf")), dim=-1)
        if uniform is not None:
            spread = mask.float() if share is None else share * mask
            if sink is not None:
                at = sink.clamp(min=0)[:, None]
                spread = spread.scatter(1, at, spread.gather(1, at) * COUNT_SINK_WEIGHTS[head])
            spread = spread / spread.sum(-1, keepdim=True).clamp(min=1)
            even = (spread * logp.masked_fill(~mask, 0.0)).sum(-1)
            on = torch.where(uniform, even, on)
        total = total - on.sum()
    return total


def focus_loss(model: KimiVL, tb: TrainBatch) -> torch.Tensor:
    """Two taught attention patterns at the position that predicts each answer's first token:
    the first FOCUS_HEADS heads of decoder layer FOCUS_LAYER look at the image tokens the
    question is about (data.focus_mask), and the first ASK_HEADS heads of layer ASK_LAYER at
    the question's colour and shape words (data.asked_words), which is what the first
    pattern's query is made of. Learnt from the answers alone, the two form together only
    after a long plateau (position questions stayed at chance for ~450 steps)."""
    layers = model.language_model.model.layers
    looks = layers[FOCUS_LAYER].self_attn
    asks = layers[ASK_LAYER].self_attn
    assert isinstance(looks, MLA) and isinstance(asks, MLA)
    return attention_loss(
        looks,
        tb.focus_rows,
        tb.focus_cols,
        tb.focus,
        tb.focus_uniform,
        tb.focus_sink,
        tb.focus_share,
    ) + attention_loss(asks, tb.ask_rows, tb.ask_cols, tb.ask)


def centring_loss(model: KimiVL, tb: TrainBatch) -> torch.Tensor:
    """Summed over the count's answers and the focus heads: the squared attention logit of
    each image token, weighted by its share of the shapes' centres (per answer the shares sum
    to one). The count is the ratio of the centres' summed attention to the sink's, and a
    token's key is divided by the RMS of its own latent (kv_a_layernorm), which varies by
    about a tenth between centre tokens: a centre logit far from zero turns that into the
    same fraction of noise on the count, one near zero does not feel it. Trained from scratch
    without it (--centring-weight 0, all else the shipped recipe) the model counted 0.84 of 100
    held-out pictures (0.81 of 300), though training layer 1's attention alone on the count's
    losses without it read the count better (a 1-D read of the heads 0.89 of 300, 0.87 with
    it)."""
    attn = model.language_model.model.layers[FOCUS_LAYER].self_attn
    assert isinstance(attn, MLA)
    counted = tb.focus_uniform & (tb.focus_sink >= 0)
    if not bool(counted.any()):
        return torch.zeros(())
    rows, cols = tb.focus_rows[counted], tb.focus_cols[counted]
    logits = attention_logits(attn, rows, cols, FOCUS_HEADS)
    share = tb.focus_share[counted].clone()
    share[torch.arange(len(rows)), tb.focus_sink[counted]] = 0.0  # the image tokens only
    share = share / share.sum(-1, keepdim=True).clamp(min=1e-6)
    return (share[:, None, :] * logits.pow(2)).sum()


def ratio_loss(model: KimiVL, tb: TrainBatch) -> torch.Tensor:
    """Summed over the count's answers and the focus heads: the squared log error of the count
    the head's attention says, its summed attention on the image tokens against the sink's
    (which should be n / COUNT_SINK_WEIGHTS[head] for n shapes). The focus loss's cross-entropy
    also asks for that ratio, but weakly: a picture whose centres all get a fifth too much
    attention costs it a few hundredths of a nat, and one such shift is half of the count's
    error.

    What limits the count (shipped weights, 300 held-out pictures): the heads' log ratio has a
    within-count sd of 0.116 (5 and 6 shapes 0.182 apart), so even the best thresholds on it
    count 0.86-0.87, and the model counts 0.84. The noise is not in the query, the rope
    positions or the latent's RMS (each held constant: sd within 0.005 of the same). It is in
    the read of the image tokens' keys: one attention head fitted on the frozen model's layer-1
    input reads the count with sd 0.085 (0.93 with the best thresholds) when its logit is a
    linear read of an RMS-normed projection (as MLA's latent is), 0.87 when it is a linear read
    of the normed input alone (as the rope key is). The focus heads put most of their count
    query in the rope part (norm 5.9 against 1.6), and again after their query and key rows
    were drawn afresh and trained on the count alone; with a penalty on it they used the
    latent, and still read 0.86-0.87. Layer 0 reads it better: its free heads 2 and 3, trained
    from the shipped weights on the count's spread and log-ratio losses alone (only layer 0's
    attention learning, 8 count pictures a step, lr 1e-3), read it with sd 0.099 after 800
    steps and 0.073 after 2000 (0.91 and 0.95 with the best thresholds), where layer 1's heads
    trained the same way read 0.86-0.88. Stages 3 and 4 (train_count_heads, train_readout) build
    on that."""
    attn = model.language_model.model.layers[FOCUS_LAYER].self_attn
    assert isinstance(attn, MLA)
    counted = tb.focus_uniform & (tb.focus_sink >= 0)
    if not bool(counted.any()):
        return torch.zeros(())
    rows, cols, sink = tb.focus_rows[counted], tb.focus_cols[counted], tb.focus_sink[counted]
    logp = attention_logp(attn, rows, cols, FOCUS_HEADS)  # [K, heads, L]
    image = tb.focus[counted, 0].clone()
    image[torch.arange(len(rows)), sink] = False
    share = tb.focus_share[counted] * image
    n = share.sum(-1)  # the shapes' centres: one per shape
    on = torch.logsumexp(logp.masked_fill(~image[:, None], float("-inf")), dim=-1)
    ratio = on - logp[torch.arange(len(rows)), :, sink]  # [K, heads]
    weights = torch.tensor(COUNT_SINK_WEIGHTS[:FOCUS_HEADS])
    want = n.log()[:, None] - weights.log()[None, :]
    return (ratio - want).pow(2).sum()


# Decoder layer and first of the two heads taught to count (count_heads_loss): layer 0, whose
# image keys come from each token's own vision feature, reads the count better than the focus
# heads of FOCUS_LAYER do.
COUNT_LAYER = 0
COUNT_HEAD = 2


def _count_reads(
    model: KimiVL, tb: TrainBatch
) -> tuple[MLA, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The count's answers of `tb`: layer COUNT_LAYER's attention, the answers' indices into
    tb.focus_*, and the count heads' log attention weights there [K, 2, L]; None: no count."""
    attn = model.language_model.model.layers[COUNT_LAYER].self_attn
    assert isinstance(attn, MLA)
    counted = (tb.focus_uniform & (tb.focus_sink >= 0)).nonzero()[:, 0]
    if counted.numel() == 0:
        return None
    rows, cols = tb.focus_rows[counted], tb.focus_cols[counted]
    logp = attention_logp(attn, rows, cols, len(COUNT_SINK_WEIGHTS), first=COUNT_HEAD)
    return attn, counted, rows, cols, logp


def count_heads_loss(model: KimiVL, tb: TrainBatch) -> torch.Tensor:
    """Summed over the count's answers and the two count heads (layer COUNT_LAYER, heads
    COUNT_HEAD and the next): the cross-entropy of the attention against the count's even
    spread (each shape's centre share, COUNT_SINK_WEIGHTS[head] shapes' worth on the sink),
    plus COUNT_RATIO_SCALE times the squared log error of the count it says: the summed
    attention on all of the picture's tokens against the sink's, which should be
    n / COUNT_SINK_WEIGHTS[head] for n shapes."""
    got = _count_reads(model, tb)
    if got is None:
        return torch.zeros(())
    _, counted, rows, _, logp = got
    at = torch.arange(len(rows))
    sink = tb.focus_sink[counted]
    share = tb.focus_share[counted].clone()
    share[at, sink] = 0.0
    n = share.sum(-1)  # the shapes' centres: one per shape
    image = tb.batch.input_ids[rows] == model.media_pad_id  # [K, L]
    total = torch.zeros(())
    for head, weight in enumerate(COUNT_SINK_WEIGHTS):
        lp = logp[:, head]
        want = share.clone()
        want[at, sink] = weight
        want = want / want.sum(-1, keepdim=True)
        total = total - (want * lp.masked_fill(want == 0, 0.0)).sum()
        ratio = torch.logsumexp(lp.masked_fill(~image, float("-inf")), -1) - lp[at, sink]
        total = total + COUNT_RATIO_SCALE * (ratio - (n / weight).log()).pow(2).sum()
    return total


def count_shortcut_loss(model: KimiVL, tb: TrainBatch) -> torch.Tensor:
    """Summed cross-entropy of the count's answer read from the two count heads alone (their
    outputs, with the attention weights detached, through their columns of o_proj, the final
    norm and the head), as shortcut_loss does for the focus heads."""
    got = _count_reads(model, tb)
    if got is None:
        return torch.zeros(())
    attn, counted, rows, _, logp = got
    assert attn.captured is not None
    heads = len(COUNT_SINK_WEIGHTS)
    v = attn.captured[2][rows, COUNT_HEAD : COUNT_HEAD + heads].float()  # [K, heads, L, D]
    out = torch.einsum("khl,khld->khd", logp.detach().exp(), v).reshape(len(rows), -1)
    columns = slice(COUNT_HEAD * attn.vdim, (COUNT_HEAD + heads) * attn.vdim)
    hidden = out @ attn.o_proj.weight[:, columns].t()
    lm = model.language_model
    logits = lm.lm_head(lm.model.norm(hidden)).float()
    return F.cross_entropy(logits, tb.focus_targets[counted], reduction="sum")


def let_through(
    items: list[Encoded], count_through: float, other_through: float
) -> torch.Tensor | None:
    """Per image token of `items` (feature order): the scale of the decoder losses' gradient
    that reaches its feature, `count_through` where its sample is asked the count question,
    else `other_through`; None when nothing gets through."""
    scales = [
        np.full(len(e.labels), count_through if any(e.focus_sink) else other_through)
        for e in items
        if e.labels is not None and len(e.grids)
    ]
    if not scales or (count_through <= 0 and other_through <= 0):
        return None
    return torch.from_numpy(np.concatenate(scales)).float()


def train_step(
    model: KimiVL,
    items: list[Encoded],
    budget: int,
    probe: TokenProbe | None = None,
    probe_weight: float = 0.0,
    focus_weight: float = 0.0,
    detach_vision: bool = False,
    words: dict[int, int] | None = None,
    turn_id: int = -1,
    early_weight: float = 0.0,
    value_weight: float = 0.0,
    shortcut_weight: float = 0.0,
    count_through: float = 0.0,
    other_through: float = 0.0,
    centring_weight: float = 0.0,
    ratio_weight: float = 0.0,
    count_probe_weight: float = 0.0,
    count_heads_weight: float = 0.0,
    count_shortcut_weight: float = 0.0,
) -> tuple[float, float, float]:
    """Accumulate gradients over micro-batches; returns (mean loss per target token, mean probe
    loss per image token, mean focus loss per answer)."""
    attns: list[MLA] = []
    capture = (
        focus_weight > 0
        or value_weight > 0
        or shortcut_weight > 0
        or centring_weight > 0
        or ratio_weight > 0
        or count_heads_weight > 0
        or count_shortcut_weight > 0
    )
    for i in sorted({FOCUS_LAYER, ASK_LAYER, COUNT_LAYER}):
        attn = model.language_model.model.layers[i].self_attn
        assert isinstance(attn, MLA)
        attn.capture = capture
        attns.append(attn)
    answers = sum(len(e.focus) for e in items)
    total = sum(len(e.target_ids) if e.target_mask is None else sum(e.target_mask) for e in items)
    image_tokens = sum(len(e.labels) for e in items if e.labels is not None)
    images = sum(len(e.grids) for e in items if e.labels is not None)
    loss_sum = probe_sum = focus_sum = 0.0
    for chunk in micro_batches(items, budget):
        tb = collate(chunk, 0, model.media_pad_id, words, turn_id)
        through = let_through(chunk, count_through, other_through)
        logits, feats, mid, early = forward(model, tb, detach_vision, early_weight > 0, through)
        loss = F.cross_entropy(logits, tb.targets, reduction="sum")
        objective = loss / total
        for read in early:
            objective = (
                objective
                + early_weight * F.cross_entropy(read, tb.targets, reduction="sum") / total
            )
        if focus_weight > 0:
            focus = focus_loss(model, tb) / max(1, answers)
            objective = objective + focus_weight * focus
            focus_sum += float(focus.detach())
        if centring_weight > 0:
            centred = centring_loss(model, tb) / max(1, answers)
            objective = objective + centring_weight * centred
        if ratio_weight > 0:
            ratio = ratio_loss(model, tb) / max(1, answers)
            objective = objective + ratio_weight * ratio
        if count_heads_weight > 0:
            counting = count_heads_loss(model, tb) / max(1, answers)
            objective = objective + count_heads_weight * counting
        if count_shortcut_weight > 0:
            short = count_shortcut_loss(model, tb) / max(1, answers)
            objective = objective + count_shortcut_weight * short
        if value_weight > 0 and probe is not None:
            looks = model.language_model.model.layers[FOCUS_LAYER].self_attn
            assert isinstance(looks, MLA)
            value = value_loss(probe, looks, tb) / max(1, answers)
            objective = objective + value_weight * value
        if shortcut_weight > 0:
            short = shortcut_loss(model, tb) / max(1, answers)
            objective = objective + shortcut_weight * short
        if probe is not None and feats is not None and mid is not None:
            if tb.token_labels is not None:
                aux = probe.loss(feats, mid, tb.token_labels)
                objective = objective + probe_weight * aux / max(1, image_tokens)
                probe_sum += float(aux.detach())
                if count_probe_weight > 0:
                    counted = probe.count_loss(
                        feats, tb.token_labels, model.vision_tower.merged_tokens(tb.batch.grids)
                    )
                    objective = objective + count_probe_weight * counted / max(1, images)
        objective.backward()
        loss_sum += float(loss.detach())
    for attn in attns:
        attn.capture, attn.captured = False, None
    return loss_sum / total, probe_sum / max(1, image_tokens), focus_sum


def picture_features(
    model: KimiVL, images: list[Image.Image], cfg: ImageProcessorConfig
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The projected features [tokens, H] of `images` (the processor's pipeline, the vision
    tower, the projector: what the decoder gets) and their patch grids."""
    batch = preprocess_images(images, cfg)
    grids = [(int(h), int(w)) for h, w in batch["image_grid_hws"]]
    return model.multi_modal_projector(model.vision_tower(batch["pixel_values"], grids)), grids


@torch.no_grad()
def shape_accuracy(
    model: KimiVL, probe: TokenProbe, builder: PromptBuilder, samples: list[Sample]
) -> float:
    """How often the shape probe names each shape of the samples' pictures right, from the sum
    of its log-probabilities over the shape's tokens (what an attention head that reads all of
    them sees)."""
    was_training = model.training
    model.eval()
    right = total = 0
    for sample in samples:
        e = builder.encode(sample)
        labels = token_labels(sample, builder.cfg)
        pixels = torch.from_numpy(e.pixel_values)
        logp = probe.shape(model.multi_modal_projector(model.vision_tower(pixels, e.grids)).float())
        logp = logp.log_softmax(-1)
        starts = np.cumsum([0, *model.vision_tower.merged_tokens(e.grids)])
        for i in range(len(e.grids)):
            cls = labels[starts[i] : starts[i + 1], 0].astype(np.int64)
            for c in np.unique(cls[cls > 0]):
                rows = torch.from_numpy(starts[i] + np.flatnonzero(cls == c))
                _, shape = split_token_class(int(c))
                right += int(logp[rows].sum(0).argmax()) == shape - 1
                total += 1
    model.train(was_training)
    return right / max(1, total)


@torch.no_grad()
def probe_count_accuracy(
    model: KimiVL, probe: TokenProbe, builder: PromptBuilder, samples: list[Sample]
) -> float:
    """How often the count probe (`TokenProbe.count_loss`'s head: its summed attention on a
    picture against the sink's, rounded) says how many shapes the samples' first pictures
    have: how well the vision features support the count's focus heads."""
    was_training = model.training
    model.eval()
    feats, grids = picture_features(model, [s.images[0] for s in samples], builder.cfg)
    parts = probe.count_logits(feats).split(model.vision_tower.merged_tokens(grids))
    right = sum(
        round(float(torch.logsumexp(part, -1).exp())) == len(s.scenes[0])
        for part, s in zip(parts, samples, strict=True)
    )
    model.train(was_training)
    return right / max(1, len(samples))


def vision_params(model: KimiVL) -> list[nn.Parameter]:
    """The vision side's parameters: the vision tower's and the projector's."""
    return [*model.vision_tower.parameters(), *model.multi_modal_projector.parameters()]


def pretrain_vision(
    model: KimiVL, probe: TokenProbe, builder: PromptBuilder, args: argparse.Namespace
) -> None:
    """Stage 1: the vision tower and projector alone learn what each token shows (colour, shape,
    where its shape is, whether a shape's centre is in it), first on `--pretrain-batch` small
    canvases per step (data.canvas, `--vision-pretrain` steps), then on `--picture-batch` task
    pictures per step (data.picture, `--vision-pictures` steps), each with its own AdamW and
    schedule. A ViT has no convolution inside its 14-px patches, so it learns shapes only from
    many examples at every offset and scale: on the task pictures (mostly background, one or
    two steps a second) its shape probe stayed at chance for hundreds of steps; small canvases
    give it tens of shapes per step at a tenth of the cost. But a canvas is at most 3x3 merged
    tokens, and the task pictures' grids (up to 14x14 tokens, the position table resized to
    them) were never trained: a per-token read of the centre probe's features (an MLP fitted on
    them) summed to the right number of shapes on 0.69 of held-out count pictures, 0.78 after
    500 steps on task pictures. On the task pictures (not the canvases) the count probe
    (TokenProbe.count_loss) trains too: with it on the canvases as well, held-out shapes were
    named right 0.950 of the time instead of 0.959, and the count after stage 2 was 0.84
    instead of 0.86 (600 held-out pictures). More steps on the task pictures make better
    features: with 1000 instead of 500 the count probe counted 0.955 of 600 held-out pictures
    instead of 0.91 (its log error's sd 0.075 instead of 0.092) and held-out shapes were named
    right 0.995 of the time instead of 0.959; with 1500, 0.970 and 0.991. But the trained
    model did not count better (0.838 of 600 held-out pictures against 0.862 with 500): the
    count's focus heads at decoder layer 1 read it with a log error sd of 0.11 either way.
    Stage 2 undoes much of what these steps give the count: with 1500 of them (and a linear count
    read), the count probe counted 0.965 of 200 held-out pictures after stage 1 and 0.810 after
    stage 2, which keeps training it while the decoder's losses reach the tower through the other
    tasks' features (--other-through 1). With --other-through 0 on top (and the
    layer-0 count head of count_loss's docstring) it counted 0.895 after stage 2, but the model
    still counted only 0.86 of 100 held-out pictures, and named shapes (0.92) and picked the
    image (0.89) worse. A larger count-probe weight in stage 2 alone (4, commit d05ab49's
    --late-count-probe-weight) keeps the features: 0.895 after stage 1 and 0.910 after stage 2
    (500 task-picture steps), 0.970 and 0.915 (1500). But the model counted 0.82 of 100 held-out
    pictures either way (the count's focus heads' log error sd 0.117, a 1-D read of it 0.88 of
    300): the loss is in the readout from the heads to the digit."""
    params = [
        *vision_params(model),
        *probe.color.parameters(),
        *probe.shape.parameters(),
        *probe.where.parameters(),
        *probe.centre.parameters(),
        *probe.count_key.parameters(),
        *probe.count_logit.parameters(),
        probe.count_sink,
    ]
    stages = (
        ("vision", canvas, args.vision_pretrain, args.pretrain_batch, args.pretrain_lr, 50),
        ("pictures", picture, args.vision_pictures, args.picture_batch, args.picture_lr, 20),
    )
    drawn = 0
    for desc, make, steps, batch_size, peak, warmup in stages:
        opt = torch.optim.AdamW(params, lr=peak, betas=(0.9, 0.98), weight_decay=0.01)
        bar = tqdm(range(steps), desc=desc, file=sys.stdout, dynamic_ncols=True)
        ema = None
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, steps, peak, warmup)
            samples = [make(args.seed, drawn + i) for i in range(batch_size)]
            drawn += batch_size
            labels = torch.from_numpy(
                np.concatenate([token_labels(s, builder.cfg) for s in samples])
            ).float()
            # Pictures only: the vision side needs no prompt.
            feats, grids = picture_features(model, [s.images[0] for s in samples], builder.cfg)
            loss = probe.what_loss(feats, labels) + probe.where_loss(feats, labels)
            loss = (loss + probe.centre_loss(feats, labels)) / len(labels)
            if args.count_probe_weight > 0 and make is picture:  # see the docstring
                sizes = model.vision_tower.merged_tokens(grids)
                counted = probe.count_loss(feats, labels, sizes) / len(grids)
                loss = loss + args.count_probe_weight * counted
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            bar.set_postfix(loss=f"{ema:.3f}")


# Where the later stages' draws start, far past stage 2's (steps x batch size).
COUNT_HEADS_DRAWS = 100_000_000
READOUT_DRAWS = 200_000_000


def _tasks(args: argparse.Namespace) -> tuple[str, ...]:
    """The tasks a run trains on (--tasks, default all)."""
    return tuple(args.tasks.split(",")) if args.tasks else TASKS


def _only(model: KimiVL, params: list[nn.Parameter]) -> dict[nn.Parameter, bool]:
    """Lets only `params` of `model` learn; returns every parameter's requires_grad before."""
    before = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return before


def train_count_heads(
    model: KimiVL, builder: PromptBuilder, words: dict[int, int], args: argparse.Namespace
) -> None:
    """Stage 3: on count pictures (`--count-heads-steps` steps of `--batch-size`), layer
    COUNT_LAYER's attention learns two count heads' spread and log ratio (count_heads_loss) and
    the answer read from them (count_shortcut_loss), with the answer's own loss; these losses
    reach the vision tower and projector too, which learn at `--count-heads-vision-lr` (0: they
    stay fixed). In stage 2 the count is one question in seven and the features still move; the
    count heads learn it there far less well (log error sd 0.15-0.16, FOCUS_LAYER's docstring)
    than here.

    Measured from the weights of stages 1-2 (300 held-out count pictures; the model counted
    0.837 before). With the vision side fixed: the heads' log ratio had a within-count sd of
    0.079 and 0.081, the model counted 0.873, 0.883 after stage 4. What the heads read was the
    limit: a linear read of their two outputs counted 0.92, of the last layer's output at the
    answer 0.90-0.91, and neither 3000 steps, a larger count-heads weight, stage 4 with layer 0's
    attention fixed, nor the digits' output rows fitted to convergence counted above 0.893.
    With the vision side learning at 2e-4: sd 0.064, 0.933 after this stage and after stage 4
    (benchmarks/demo_accuracy.py's 100 count questions: 0.90); at 5e-4: sd 0.057, 0.943 after
    this stage, 0.937 after stage 4 (served: 0.92, every other task 0.97-0.99). The vision
    backward pass makes a step up to twice as slow; from scratch, 1500 steps counted 0.89 of
    benchmarks/demo_accuracy.py's default 100 (0.93 of 300 others) and 2000 steps 0.92 (0.94).
    The answer's loss stays: without it the decoder could stop after COUNT_LAYER (a step
    twice as fast) and the heads learned as well (sd 0.056), but the vision side drifted from
    what the other tasks read: after stage 4 the model named shapes right 0.800 and picked the
    image 0.825 of 40 held-out questions each (0.950 and 0.925 with it). Holding the features
    near their start (a squared-error anchor, weight 2) kept those (0.925, 0.975) but the model
    then counted 0.893 of 300."""
    if args.count_heads_steps <= 0 or "count" not in _tasks(args):
        return
    attn = model.language_model.model.layers[COUNT_LAYER].self_attn
    assert isinstance(attn, MLA)
    heads = list(attn.parameters())
    vision = vision_params(model)
    sees = args.count_heads_vision_lr > 0
    learning = heads + vision if sees else heads
    before = _only(model, learning)
    groups = [{"params": heads, "peak": args.count_heads_lr}]
    if sees:
        groups.append({"params": vision, "peak": args.count_heads_vision_lr})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.0)
    steps = args.count_heads_steps
    bar = tqdm(range(steps), desc="count heads", file=sys.stdout, dynamic_ncols=True)
    ema = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, group["peak"], 20)
        draws = [
            draw(args.seed, COUNT_HEADS_DRAWS + step * args.batch_size + i, ("count",))
            for i in range(args.batch_size)
        ]
        loss, _, _ = train_step(
            model,
            encode_draws(builder, draws),
            args.tokens_per_micro_batch,
            detach_vision=True,
            words=words,
            turn_id=builder.ids["<|im_user|>"],
            count_heads_weight=args.count_heads_weight,
            count_shortcut_weight=args.count_shortcut_weight,
            count_through=1.0 if sees else 0.0,
        )
        torch.nn.utils.clip_grad_norm_(learning, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        bar.set_postfix(loss=f"{ema:.3f}")
    for p, kept in before.items():
        p.requires_grad_(kept)


def train_readout(
    model: KimiVL, builder: PromptBuilder, words: dict[int, int], args: argparse.Namespace
) -> None:
    """Stage 4: the decoder learns on every task again (`--readout-steps` steps of
    `--batch-size`), with the count drawn `--readout-count-weight` times as often as
    TASK_WEIGHTS says: the answer learns to read the count heads of stage 3 (which keep their
    losses), and the layers that stage moved settle back for the other tasks. The vision tower
    and projector learn too, from every task's losses, at `--readout-vision-lr` (0: fixed):
    stage 3 moved them for the count alone, and the image and frame order that the multi-image
    and motion questions read suffered. From the same stage-3 weights, 100 held-out questions
    per task: count 0.93, multi-image 0.97, motion 0.99 with 1e-4 (0.92, 0.96, 0.98 fixed),
    the other tasks 0.99-1.00 either way. The stage takes about 1.3 times as long (5.6 instead
    of 4.4 minutes from scratch)."""
    if args.readout_steps <= 0:
        return
    lm = model.language_model
    params = [p for p in lm.parameters() if p.requires_grad]
    groups = [{"params": params, "peak": args.readout_lr}]
    sees = args.readout_vision_lr > 0
    if sees:
        vision = vision_params(model)
        groups.append({"params": vision, "peak": args.readout_vision_lr})
        params = params + vision
    before = _only(model, params)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.01)
    weights = {**TASK_WEIGHTS, "count": TASK_WEIGHTS["count"] * args.readout_count_weight}
    steps = args.readout_steps
    bar = tqdm(range(steps), desc="readout", file=sys.stdout, dynamic_ncols=True)
    ema = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, group["peak"], 20)
        draws = [
            draw(args.seed, READOUT_DRAWS + step * args.batch_size + i, _tasks(args), weights)
            for i in range(args.batch_size)
        ]
        loss, _, _ = train_step(
            model,
            encode_draws(builder, draws),
            args.tokens_per_micro_batch,
            focus_weight=args.focus_weight,
            detach_vision=not sees,
            words=words,
            turn_id=builder.ids["<|im_user|>"],
            early_weight=args.early_weight,
            shortcut_weight=args.shortcut_weight,
            centring_weight=args.centring_weight,
            ratio_weight=args.ratio_weight,
            count_heads_weight=args.count_heads_weight,
            count_shortcut_weight=args.count_shortcut_weight,
        )
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for moe in model.moe_layers():
            moe.balance(BALANCE_RATE)
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        bar.set_postfix(loss=f"{ema:.3f}")
    for p, kept in before.items():
        p.requires_grad_(kept)


@torch.no_grad()
def diagnose(
    model: KimiVL,
    probe: TokenProbe,
    builder: PromptBuilder,
    samples: list[Sample],
    words: dict[int, int],
) -> str:
    """Per task, on held-out samples: the attention mass the taught heads put where they are
    taught to look (layer FOCUS_LAYER's focus heads, layer ASK_LAYER's ask heads; 1.0 =
    all of it), and on position pictures how often the side probe reads each shape's side
    from its tokens."""
    was_training = model.training
    model.eval()
    layers = model.language_model.model.layers
    looks, asks = layers[FOCUS_LAYER].self_attn, layers[ASK_LAYER].self_attn
    assert isinstance(looks, MLA) and isinstance(asks, MLA)
    parts = []
    for task in dict.fromkeys(s.task for s in samples):
        group = [s for s in samples if s.task == task]
        draws = [Draw(s, thinking=False, text_first=False) for s in group]
        encoded = encode_draws(builder, draws)
        tb = collate(encoded, 0, model.media_pad_id, words, builder.ids["<|im_user|>"])
        looks.capture = asks.capture = True
        _, feats, _, _ = forward(model, tb)
        value_line = ""
        if task == "motion" and len(tb.focus_rows):
            value_line = f" value-probe {_motion_from_values(probe, looks, tb):.2f}"
        masses = []
        for attn, rows, cols, masks in (
            (looks, tb.focus_rows, tb.focus_cols, tb.focus),
            (asks, tb.ask_rows, tb.ask_cols, tb.ask),
        ):
            if rows.numel():
                masses.append(
                    math.exp(-float(attention_loss(attn, rows, cols, masks)) / (2 * len(rows)))
                )
        looks.capture = asks.capture = False
        looks.captured = asks.captured = None
        line = f"{task}: mass " + "/".join(f"{m:.2f}" for m in masses) + value_line
        if task == "position" and feats is not None and tb.token_labels is not None:
            side = tb.token_labels[:, 6].long()
            pred = probe.side(feats.float()).argmax(-1) + 1
            line += f" side-probe {float((pred == side)[side > 0].float().mean()):.2f}"
        if task == "count" and feats is not None and tb.token_labels is not None:
            line += f" count-probe {_count_from_probe(probe, feats, encoded):.2f}"
        if task == "motion" and feats is not None:
            line += f" where-probe {_motion_from_where(probe, feats, encoded, group):.2f}"
        parts.append(line)
    model.train(was_training)
    return "; ".join(parts)


_OFFSETS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _motion_from_where(
    probe: TokenProbe, feats: torch.Tensor, encoded: list[Encoded], samples: list[Sample]
) -> float:
    """How often the direction from the where probe (mean (x, y) over the shape's tokens in the
    last frame minus the first) is the motion's answer: what the two focus heads can read."""
    where = probe.where(feats.float())
    right = start = 0
    for e, sample in zip(encoded, samples, strict=True):
        assert e.labels is not None
        labels = torch.from_numpy(e.labels).float()
        xy = where[start : start + len(labels)]
        start += len(labels)
        shape, frame = labels[:, 0] > 0, labels[:, 4]
        first, last = shape & (frame == 0), shape & (frame == frame.max())
        if not (first.any() and last.any()):
            continue
        move = xy[last].mean(0) - xy[first].mean(0)
        best = max(
            _OFFSETS, key=lambda d: float(move[0] * _OFFSETS[d][0] + move[1] * _OFFSETS[d][1])
        )
        right += best == sample.answer
    return right / max(1, len(samples))


def _count_from_probe(probe: TokenProbe, feats: torch.Tensor, encoded: list[Encoded]) -> float:
    """How often the count probe, its log-probabilities summed over a picture's tokens, says
    how many shapes the picture has."""
    logp = probe.count(feats.float()).log_softmax(-1)
    right = start = 0
    for e in encoded:
        assert e.labels is not None
        n = len(e.labels)
        right += int(logp[start : start + n].sum(0).argmax()) == int(e.labels[0, 5])
        start += n
    return right / max(1, len(encoded))


def _motion_from_values(probe: TokenProbe, attn: MLA, tb: TrainBatch) -> float:
    """How often the value probe's (x, y) of focus head 0 (last frame) minus head 1's (first)
    points the way the focus targets' own positions do."""
    out = focus_reads(attn, tb.focus_rows, tb.focus_cols)
    xy = [probe.value[h](out[:, h])[:, :2] for h in range(FOCUS_HEADS)]
    got, want = xy[0] - xy[1], tb.focus_values[:, 0, :2] - tb.focus_values[:, 1, :2]
    axis = want.abs().argmax(-1)
    rows = torch.arange(len(axis))
    same = (got[rows, axis].sign() == want[rows, axis].sign()) & (
        got[rows, axis].abs() > got[rows, 1 - axis].abs()
    )
    return float(same.float().mean())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe_commit() -> str | None:
    """The git commit of this checkout (suffixed `+changes` when server/model/demo differs from
    it), or None outside a git checkout: what a retraining needs to reproduce the weights."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":(exclude)weights"],
            cwd=here, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changed else "")


def write_manifest(out: Path, info: dict) -> None:
    files = {p.name: sha256(p) for p in sorted(out.iterdir()) if p.name != "manifest.json"}
    manifest = {**info, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tok = checkpoint.write_tokenizer(Path(tmp))
        builder = load_builder(Path(tmp))
    model = KimiVL(checkpoint.demo_config(tok))
    model.train()
    tc = checkpoint.demo_config(tok)["text_config"]
    probe = TokenProbe(tc["hidden_size"], tc["v_head_dim"])
    params = list(model.named_parameters()) + [
        ("probe." + n, p) for n, p in probe.named_parameters()
    ]
    decay = [p for n, p in params if p.ndim >= 2 and "pos_emb" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "pos_emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    subset = _tasks(args)
    words = question_words(builder)
    pretrain_vision(model, probe, builder, args)
    if args.vision_pretrain:
        named = shape_accuracy(model, probe, builder, heldout_samples(6, EVAL_OFFSET + 1))
        print(f"vision: held-out shapes named right {named:.3f}")  # noqa: T201
        pictures = [make_sample("count", heldout_seed(i, EVAL_OFFSET + 1)) for i in range(200)]
        counted = probe_count_accuracy(model, probe, builder, pictures)
        print(f"vision: held-out pictures counted by the count probe {counted:.3f}")  # noqa: T201
    eval_samples = (
        [s for s in heldout_samples(args.eval_n, offset=EVAL_OFFSET) if s.task in subset]
        if args.eval_every
        else []
    )
    bar = tqdm(range(args.steps), desc="train", file=sys.stdout, dynamic_ncols=True)
    ema = probe_ema = focus_ema = None
    for step in bar:
        lr = learning_rate(step, args.steps, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        draws = [
            draw(args.seed, step * args.batch_size + i, subset) for i in range(args.batch_size)
        ]
        loss, probe_loss, focus = train_step(
            model,
            encode_draws(builder, draws),
            args.tokens_per_micro_batch,
            probe,
            args.probe_weight,
            args.focus_weight,
            detach_vision=args.detach_vision < 0 or step < args.detach_vision,
            words=words,
            turn_id=builder.ids["<|im_user|>"],
            early_weight=args.early_weight,
            value_weight=args.value_weight,
            shortcut_weight=args.shortcut_weight,
            count_through=args.count_through,
            other_through=args.other_through,
            centring_weight=args.centring_weight,
            ratio_weight=args.ratio_weight,
            count_probe_weight=args.count_probe_weight,
        )
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for moe in model.moe_layers():
            moe.balance(BALANCE_RATE)
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        probe_ema = probe_loss if probe_ema is None else 0.95 * probe_ema + 0.05 * probe_loss
        focus_ema = focus if focus_ema is None else 0.95 * focus_ema + 0.05 * focus
        bar.set_postfix(
            loss=f"{ema:.3f}", probe=f"{probe_ema:.3f}", focus=f"{focus_ema:.3f}", lr=f"{lr:.1e}"
        )
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            acc = accuracy(model, builder, eval_samples)
            line = " ".join(f"{t}={v['accuracy']:.2f}" for t, v in acc.items())
            if args.diagnose:
                bar.write(diagnose(model, probe, builder, eval_samples[: 6 * len(subset)], words))
            bar.write(
                f"step {step + 1} loss {ema:.4f} probe {probe_ema:.4f} focus {focus_ema:.3f}"
                f" held-out: {line}"
            )
    train_count_heads(model, builder, words, args)
    train_readout(model, builder, words, args)
    train_s = time.perf_counter() - started

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.export(model, out, tok)
    exported = checkpoint.load(out)
    final = heldout_samples(args.final_n)
    tasks = accuracy(exported, builder, final)
    thinking = accuracy(exported, builder, heldout_samples(args.final_n // 5), thinking=True)
    overall = sum(v["accuracy"] * v["n"] for v in tasks.values()) / sum(
        v["n"] for v in tasks.values()
    )
    info = {
        "model": checkpoint.SERVED_MODEL_NAME,
        "command": "python -m server.model.demo.train " + shlex.join(args.argv),
        "commit": recipe_commit(),
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "train_wall_s": round(train_s, 1),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout": {"tasks": tasks, "overall": overall},
        "heldout_thinking": {"tasks": thinking},
    }
    write_manifest(out, info)
    for t, v in tasks.items():
        print(f"held-out {t}: {v['accuracy']:.3f} (n={v['n']})")  # noqa: T201
    print(f"overall {overall:.3f}; wrote {out}")  # noqa: T201
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m server.model.demo.train", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens-per-micro-batch", type=int, default=3072)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=500, help="0 = no progress evaluation")
    ap.add_argument("--eval-n", type=int, default=10, help="progress evaluation: samples per task")
    ap.add_argument("--final-n", type=int, default=100, help="final evaluation: samples per task")
    ap.add_argument(
        "--probe-weight", type=float, default=1.0, help="weight of the token probe loss"
    )
    ap.add_argument("--focus-weight", type=float, default=1.0, help="weight of the focus loss")
    ap.add_argument(
        "--early-weight",
        type=float,
        default=0.5,
        help="weight of the answers read from layer FOCUS_LAYER's output (0: none)",
    )
    ap.add_argument(
        "--value-weight",
        type=float,
        default=0.1,
        help="weight of the focus heads' value probe (what they read; 0: none)",
    )
    ap.add_argument(
        "--shortcut-weight",
        type=float,
        default=0.5,
        help="weight of the answers read from the focus heads alone (0: none)",
    )
    ap.add_argument(
        "--vision-pretrain",
        type=int,
        default=3000,
        help="stage 1: steps on small canvases for the vision side alone (0: none)",
    )
    ap.add_argument("--pretrain-batch", type=int, default=64, help="canvases per stage-1 step")
    ap.add_argument("--pretrain-lr", type=float, default=2e-3)
    ap.add_argument(
        "--vision-pictures",
        type=int,
        default=500,
        help="stage 1, then: steps on task pictures for the vision side alone (0: none)",
    )
    ap.add_argument("--picture-batch", type=int, default=16, help="pictures per such step")
    ap.add_argument("--picture-lr", type=float, default=5e-4)
    ap.add_argument(
        "--detach-vision",
        type=int,
        default=-1,
        help="the answer loss reaches the vision side only after this step (-1: never)",
    )
    ap.add_argument(
        "--other-through",
        type=float,
        default=1.0,
        help="scale of the decoder losses' gradient that reaches the vision side through the "
        "features of samples not asked the count question, while --detach-vision holds the rest "
        "back (0: none)",
    )
    ap.add_argument(
        "--count-through",
        type=float,
        default=0.0,
        help="the same for samples asked the count question (0: none)",
    )
    ap.add_argument(
        "--centring-weight",
        type=float,
        default=0.05,
        help="weight of the count's centre-logit penalty (centring_loss; 0: none)",
    )
    ap.add_argument(
        "--ratio-weight",
        type=float,
        default=1.0,
        help="weight of the count's focus heads' squared log-ratio error (ratio_loss; 0: none)",
    )
    ap.add_argument(
        "--count-probe-weight",
        type=float,
        default=1.0,
        help="weight of the vision side's attention-shaped count probe (TokenProbe.count_loss; "
        "0: none)",
    )
    ap.add_argument(
        "--count-heads-steps",
        type=int,
        default=2000,
        help="stage 3: steps on count pictures for layer COUNT_LAYER's attention and the vision "
        "side (0: none)",
    )
    ap.add_argument("--count-heads-lr", type=float, default=1e-3)
    ap.add_argument(
        "--count-heads-vision-lr",
        type=float,
        default=5e-4,
        help="stage 3: peak learning rate of the vision tower and projector, which the count's "
        "losses reach there (0: the vision side stays fixed)",
    )
    ap.add_argument(
        "--count-heads-weight",
        type=float,
        default=2.0,
        help="stages 3 and 4: weight of the count heads' spread and log ratio (count_heads_loss)",
    )
    ap.add_argument(
        "--count-shortcut-weight",
        type=float,
        default=1.0,
        help="stages 3 and 4: weight of the count's answer read from the count heads alone",
    )
    ap.add_argument(
        "--readout-steps",
        type=int,
        default=600,
        help="stage 4: steps on every task for the decoder and the vision side (0: none)",
    )
    ap.add_argument("--readout-lr", type=float, default=3e-4)
    ap.add_argument(
        "--readout-vision-lr",
        type=float,
        default=1e-4,
        help="stage 4: peak learning rate of the vision tower and projector (0: fixed)",
    )
    ap.add_argument(
        "--readout-count-weight",
        type=float,
        default=4.0,
        help="stage 4: how many times more often than in stage 2 the count is drawn",
    )
    ap.add_argument(
        "--diagnose",
        action="store_true",
        help="print the taught heads' attention at each evaluation",
    )
    ap.add_argument("--tasks", default="", help="comma-separated subset of the tasks (default all)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()

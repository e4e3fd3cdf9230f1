"""Training batches for the demo model: task mixing, the thinking variant, video round trips.

A training draw is a pure function of (run seed, draw index): the task is picked by weight,
the sample comes from `make_sample(task, train_seed(run seed, index))`, and the same seed
decides whether the sample is rendered in the thinking variant, with the question before the
media, and (videos) whether the frames go through a real H.264 encode/decode first, as a
client's MP4 upload does on its way to the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from server.model.demo.model import Batch
from server.model.demo.prompt import Encoded, PromptBuilder
from server.model.demo.tasks import (
    APART,
    COLORS,
    ORDINALS,
    QUESTIONS,
    SHAPES,
    TASKS,
    Background,
    Sample,
    Shape,
    make_sample,
    place,
    render,
    train_seed,
)
from server.model.demo.video import decode_mp4, encode_mp4
from server.model.image_processing import ImageProcessorConfig, grid_size, resized_size

_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}


def token_class(color: str, kind: str) -> int:
    """A shape's class in the token labels: 1 + colour index * 3 + shape index (0: background)."""
    return 1 + _COLOR_INDEX[color] * len(SHAPES) + SHAPES.index(kind)


def split_token_class(cls: Any) -> tuple[Any, Any]:
    """Class ids (numpy or torch integers) -> (colour index + 1, shape index + 1), 0 for
    background."""
    shape = cls > 0
    return shape * ((cls - 1) // len(SHAPES) + 1), shape * ((cls - 1) % len(SHAPES) + 1)


TASK_WEIGHTS: dict[str, float] = {
    "color": 0.8,
    "shape": 1.0,
    "count": 1.6,
    "position": 1.5,
    "multi_image": 1.2,
    "motion": 1.5,
    "color_change": 0.6,
}
THINKING_FRACTION = 0.15
MAX_FOLLOW_UPS = 3
TEXT_FIRST_FRACTION = 0.1
VIDEO_ROUND_TRIP_FRACTION = 0.5


@dataclass
class Draw:
    sample: Sample
    thinking: bool
    text_first: bool
    follow_ups: list[tuple[str, str]] = field(default_factory=list)


def _unique(items: list[str]) -> list[str]:
    return [x for x in dict.fromkeys(items) if items.count(x) == 1]


# Training only, not one of the contract's questions: the vertical twin of the position
# question, asked as a follow-up about a shape clearly above or below every other shape of a
# picture ("up": above them). Every direction answer is then the same read of the two
# focus heads, head 0's position minus head 1's (the named shape minus the other one; the last
# frame minus the first), through the answer tokens the motion question uses. Without it the
# heads held a shape's y a third as strongly as its x (through o_proj) and the served model
# answered "down" to half the clips moving up, though a linear read of the same outputs got
# every direction right.
VERTICAL_QUESTION = "Is the {color} {shape} up or down?"


def _image_questions(scene: list[Shape], size: tuple[int, int]) -> list[tuple[str, str]]:
    """Every templated question the scene of one image answers unambiguously (and the
    training-only VERTICAL_QUESTION)."""
    width, height = size
    out = [(QUESTIONS["count"], str(len(scene)))]
    for kind in _unique([s.kind for s in scene]):
        color = next(s.color for s in scene if s.kind == kind)
        out.append((QUESTIONS["color"].format(shape=kind), color))
    for color in _unique([s.color for s in scene]):
        kind = next(s.kind for s in scene if s.color == color)
        out.append((QUESTIONS["shape"].format(color=color), kind))
    if _far_apart(scene, width):
        for s, o in ((scene[0], scene[1]), (scene[1], scene[0])):
            if (s.kind, s.color) != (o.kind, o.color):
                side = "left" if s.cx < o.cx else "right"
                out.append((QUESTIONS["position"].format(color=s.color, shape=s.kind), side))
    pairs = [(s.color, s.kind) for s in scene]
    for s in scene:
        others = [o.cy for o in scene if o is not s]
        if not others or pairs.count((s.color, s.kind)) > 1:
            continue
        if s.cy <= min(others) - APART * height or s.cy >= max(others) + APART * height:
            way = "up" if s.cy < min(others) else "down"
            out.append((VERTICAL_QUESTION.format(color=s.color, shape=s.kind), way))
    return out


def _questions(sample: Sample) -> list[tuple[str, str]]:
    """All questions about the sample's media with one right answer (its own included)."""
    if sample.frames:
        first, last = sample.scenes[0][0], sample.scenes[-1][0]
        out = [(QUESTIONS["color_change"].format(shape=first.kind), last.color)]
        dx, dy = last.x - first.x, last.y - first.y
        if max(abs(dx), abs(dy)) >= 4 and min(abs(dx), abs(dy)) == 0:
            way = ("left" if dx < 0 else "right") if dx else ("up" if dy < 0 else "down")
            out.append((QUESTIONS["motion"].format(shape=first.kind), way))
        return out
    if len(sample.images) == 1:
        return _image_questions(sample.scenes[0], sample.images[0].size)
    pairs = [sorted({(s.color, s.kind) for s in scene}) for scene in sample.scenes]
    out = []
    for color, kind in sorted({p for ps in pairs for p in ps}):
        where = [i for i, ps in enumerate(pairs) if (color, kind) in ps]
        if len(where) == 1:
            q = QUESTIONS["multi_image"].format(color=color, shape=kind)
            out.append((q, ORDINALS[where[0]]))
    return out


def follow_ups(sample: Sample, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Up to MAX_FOLLOW_UPS other questions about the same media, in random order."""
    others = [qa for qa in _questions(sample) if qa[0] != sample.question]
    order = rng.permutation(len(others))[:MAX_FOLLOW_UPS]
    return [others[i] for i in order]


def draw(
    run_seed: int,
    index: int,
    tasks: tuple[str, ...] = TASKS,
    task_weights: dict[str, float] | None = None,
) -> Draw:
    """The index-th training draw of a run: a task (by `task_weights`, default TASK_WEIGHTS)
    and a sample of it, how it is asked, and its follow-up questions."""
    seed = train_seed(run_seed, index)
    rng = np.random.default_rng([seed, 7])
    weights = np.array([(task_weights or TASK_WEIGHTS)[t] for t in tasks])
    task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
    sample = make_sample(task, seed)
    if sample.frames and rng.random() < VIDEO_ROUND_TRIP_FRACTION:
        sample.frames = decode_mp4(encode_mp4(sample.frames))
    thinking = rng.random() < THINKING_FRACTION
    text_first = rng.random() < TEXT_FIRST_FRACTION
    return Draw(sample, thinking, text_first, [] if thinking else follow_ups(sample, rng))


CANVAS_SIDES = (28, 42, 56, 70, 84)
CANVAS_MIN_SHAPE = 6  # px: the smallest shape of the contract (a tenth of a 56-px picture)
CANVAS_MAX_SHAPES = 3


def canvas(run_seed: int, index: int) -> Sample:
    """A small picture for the vision tower's first stage: 1..3 shapes of 6 px up to most of a
    canvas of 28..84 px a side (no question). Drawn like the task pictures (same colours,
    backgrounds, anti-aliasing) but small, so a step sees many shapes at every scale the tasks
    show after the processor's downscale, each filling most of its tokens."""
    rng = np.random.default_rng([run_seed, index, 11])
    while True:
        size = (int(rng.choice(CANVAS_SIDES)), int(rng.choice(CANVAS_SIDES)))
        specs = [
            (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))))
            for _ in range(int(rng.integers(1, CANVAS_MAX_SHAPES + 1)))
        ]
        shapes = place(
            rng,
            size,
            specs,
            max_fraction=float(rng.uniform(0.3, 0.9)),
            min_side=CANVAS_MIN_SHAPE,
        )
        if shapes is not None:
            break
    image = render(size, shapes, rng, background=Background.draw(rng), smooth=rng.random() < 0.5)
    return Sample("canvas", "", "", "", [image], scenes=[shapes])


# The tasks whose pictures the vision tower's last stage sees (count's twice as often).
PICTURE_TASKS = ("count", "count", "color", "shape", "position")


def picture(run_seed: int, index: int) -> Sample:
    """A task picture for the vision tower's last stage (no question asked): one of
    PICTURE_TASKS' samples, from a seed stream of its own (even seeds: never held-out)."""
    rng = np.random.default_rng([run_seed, index, 13])
    task = PICTURE_TASKS[int(rng.integers(len(PICTURE_TASKS)))]
    return make_sample(task, 2 * int(rng.integers(2**61)))


def token_labels(sample: Sample, cfg: ImageProcessorConfig) -> np.ndarray:
    """[tokens, 7] float labels of the sample's merged image tokens, in prompt order: class
    (`token_class`), the shapes' centres in the token (`_centre_share`: each shape's centre split
    over the tokens around it, summing to one per shape), x and y as fractions of the image (of the
    shape's centre on a shape's tokens, of the token's own centre elsewhere: where a shape is, which
    the position and motion questions ask, on every token an attention head reads for them), the
    index of the image or frame, the number of shapes in that image or frame (every token), and the
    token's side (SIDE_LEFT / SIDE_RIGHT: its shape is left or right of the other one in a picture
    of two shapes clearly apart, as the position question asks; 0 otherwise). A token's class is the
    shape whose box covers most of it (at least a fifth of the token or of the shape)."""
    out = []
    kh, kw = cfg.merge_kernel_size
    cell_h, cell_w = kh * cfg.patch_size, kw * cfg.patch_size
    media = sample.frames or sample.images
    for index, (image, scene) in enumerate(zip(media, sample.scenes, strict=True)):
        gh, gw = grid_size(image.width, image.height, cfg)
        w, h = resized_size(image.width, image.height, cfg)
        sx, sy = w / image.width, h / image.height
        rows, cols = gh // kh, gw // kw
        y0 = np.arange(rows)[:, None] * cell_h / sy  # token box in original pixels
        x0 = np.arange(cols)[None, :] * cell_w / sx
        y1, x1 = y0 + cell_h / sy, x0 + cell_w / sx
        best = np.zeros((rows, cols))
        cls = np.zeros((rows, cols))
        fx = np.broadcast_to((x0 + x1) / 2 / image.width, (rows, cols)).copy()
        fy = np.broadcast_to((y0 + y1) / 2 / image.height, (rows, cols)).copy()
        centre = np.zeros((rows, cols))
        side = np.zeros((rows, cols))
        sides = _sides(scene, image.width)
        for s, s_side in zip(scene, sides, strict=True):
            ox = np.clip(np.minimum(x1, s.x + s.size) - np.maximum(x0, s.x), 0, None)
            oy = np.clip(np.minimum(y1, s.y + s.size) - np.maximum(y0, s.y), 0, None)
            area = ox * oy
            need = 0.2 * np.minimum((x1 - x0) * (y1 - y0), s.size * s.size)
            take = (area > best) & (area >= need)
            best = np.where(take, area, best)
            cls = np.where(take, token_class(s.color, s.kind), cls)
            side = np.where(take, s_side, side)
            fx = np.where(take, s.cx / image.width, fx)
            fy = np.where(take, (s.y + s.size / 2) / image.height, fy)
            centre += _centre_share(s.cx * sx / cell_w, s.cy * sy / cell_h, rows, cols)
        idx = np.full((rows, cols), float(index))
        count = np.full((rows, cols), float(len(scene)))
        columns = (cls, centre, fx, fy, idx, count, side)
        out.append(np.stack([m.reshape(-1) for m in columns], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 7))


def _centre_share(u: float, v: float, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] one shape's centre, at (u, v) in token widths from the grid's top left,
    split over the (up to) four tokens whose own centres surround it, each by its nearness
    (bilinear weights, summing to 1). Where a centre crosses a token border its weight moves
    smoothly from one token to the next, as the tokens' features do; a whole centre in the
    nearest token jumps there. Counting with whole centres, the model answered 0.77 of
    held-out pictures with a centre within a twentieth of a token of a border right, 0.95 of
    those with every centre at least a fifth of a token away (pictures of many shapes are
    more often in the first group)."""
    out = np.zeros((rows, cols))
    u = min(max(u - 0.5, 0.0), cols - 1.0)
    v = min(max(v - 0.5, 0.0), rows - 1.0)
    c0, r0 = int(u), int(v)
    fu, fv = u - c0, v - r0
    for dr, wr in ((0, 1 - fv), (1, fv)):
        for dc, wc in ((0, 1 - fu), (1, fu)):
            if wr * wc > 0:
                out[r0 + dr, c0 + dc] += wr * wc
    return out


SIDE_LEFT, SIDE_RIGHT = 1, 2


def _far_apart(scene: list[Shape], width: int) -> bool:
    """Two shapes, far enough apart horizontally for the position question."""
    return len(scene) == 2 and abs(scene[0].cx - scene[1].cx) >= APART * width


def _sides(scene: list[Shape], width: int) -> list[int]:
    """Per shape: SIDE_LEFT / SIDE_RIGHT of the other one when `_far_apart`, else 0."""
    if not _far_apart(scene, width):
        return [0] * len(scene)
    a, b = scene
    return [SIDE_LEFT, SIDE_RIGHT] if a.cx < b.cx else [SIDE_RIGHT, SIDE_LEFT]


_TEMPLATE_PATTERNS = {
    task: re.compile(
        re.escape(q)
        .replace(r"\{shape\}", r"(?P<shape>\w+)")
        .replace(r"\{color\}", r"(?P<color>\w+)")
        + "$"
    )
    for task, q in {**QUESTIONS, "vertical": VERTICAL_QUESTION}.items()
}


FOCUS_HEADS = 2


def focus_mask(question: str, labels: np.ndarray) -> np.ndarray:
    """[FOCUS_HEADS, tokens] bool: per taught attention head, the image tokens (rows of
    `labels`) showing what `question` is about: the shape it names (to count: the tokens
    around each shape's centre, see `counts_with_sink`). Videos: the shape in the last frame
    (colour at the end: both heads); for motion head 0 looks at the last frame and head 1 at
    the first, so that one layer sees both ends of the path. Left or right (and the
    training-only up or down): head 0 the named shape, head 1 the other ones, so that every
    direction answer is head 0's position minus head 1's."""
    cls = labels[:, 0].astype(np.int64)
    color_of, shape_of = split_token_class(cls)
    any_shape = cls > 0
    for task, pattern in _TEMPLATE_PATTERNS.items():
        m = pattern.match(question)
        if m is None:
            continue
        named = m.groupdict()
        keep = any_shape.copy()
        if "shape" in named:
            keep &= shape_of == SHAPES.index(named["shape"]) + 1
        if "color" in named:
            keep &= color_of == _COLOR_INDEX[named["color"]] + 1
        frame = labels[:, 4]
        last = frame.max() if len(labels) else 0
        if task == "count":  # the tokens around each shape's centre; see `counts_with_sink`
            return np.stack([labels[:, 1] > 0] * FOCUS_HEADS)
        if task == "motion":
            return np.stack([keep & (frame == last), keep & (frame == 0)])
        if task in ("position", "vertical"):  # the others: the side is relative to them
            return np.stack([keep, any_shape & ~keep])
        if task == "color_change":
            keep &= frame == last
        return np.stack([keep] * FOCUS_HEADS)
    raise ValueError(f"not a task question: {question!r}")


# Per focus head, how many shapes' worth of attention the count's sink gets.
COUNT_SINK_WEIGHTS = (1.0, 6.0)


def counts_with_sink(question: str) -> bool:
    """The counting question's focus is an even look at each shape's centre (the tokens
    around it, by their `_centre_share`) plus a share on one token before the picture (the
    `<|media_content|>` that opens it), not a look at the shapes alone: an attention average
    over the shapes is the same for one shape or six, while the share left on a fixed token,
    w/(w + n) with w from COUNT_SINK_WEIGHTS, says how many there are. With w = 1 the
    shares for 5 and 6 shapes differ by 0.024; head 1's w = 6 spreads the large counts apart
    (0.045) where most answers went wrong (6 read as 5)."""
    return question == QUESTIONS["count"]


@dataclass
class TrainBatch:
    batch: Batch
    rows: torch.Tensor  # target positions: batch row ...
    cols: torch.Tensor  # ... and column (the position that predicts the token)
    targets: torch.Tensor  # token ids to predict
    answer_spans: list[tuple[int, int]]  # per sample: [start, end) into rows/cols/targets
    token_labels: torch.Tensor | None  # [image tokens, 7] (see token_labels), when all have them
    focus_rows: torch.Tensor  # [K] per answer with a focus: batch row ...
    focus_cols: torch.Tensor  # [K] ... and the position that predicts its first token
    focus: torch.Tensor  # [K, FOCUS_HEADS, L] bool: per head, the image tokens it is about
    focus_uniform: torch.Tensor  # [K] bool: the head should spread evenly over them (count)
    focus_sink: torch.Tensor  # [K] the count's sink position (COUNT_SINK_WEIGHTS), else -1
    # [K, L] the count's even spread, in shapes' worth per position: the shapes' centres
    # each image token holds (`_centre_share`), 1 at the sink (before COUNT_SINK_WEIGHTS);
    # else zeros
    focus_share: torch.Tensor
    # [K, FOCUS_HEADS, len(VALUE_FIELDS)] what each focus head reads there (NaN: not asked)
    focus_values: torch.Tensor
    focus_targets: torch.Tensor  # [K] the token each focused answer starts with
    ask_rows: torch.Tensor  # [Q] per answer whose question names a colour or a shape: batch row
    ask_cols: torch.Tensor  # [Q] ... and the position that predicts its first token
    ask: torch.Tensor  # [Q, ASK_HEADS, L] bool: the question's colour word, its shape word


ASK_HEADS = 2
# What a focus head's output is taught to carry (see `focus_values`).
VALUE_FIELDS = ("x", "y", "color", "shape", "media", "count")


def focus_values(labels: np.ndarray, mask: np.ndarray, sink: bool) -> np.ndarray:
    """[FOCUS_HEADS, len(VALUE_FIELDS)]: per focus head, what the image tokens it looks at
    (`mask`, as from `focus_mask`) show: the mean (x, y) of the shape there, its colour and
    shape index, the index of its image or frame; for the count (`sink`) only the number of
    shapes. NaN where a field says nothing."""
    out = np.full((FOCUS_HEADS, len(VALUE_FIELDS)), np.nan)
    for head in range(FOCUS_HEADS):
        sel = labels[mask[head]]
        if sink:
            out[head, 5] = labels[0, 5]
            continue
        cls = np.bincount(sel[:, 0].astype(np.int64)).argmax()
        color, shape = split_token_class(int(cls))
        out[head, :5] = (
            sel[:, 2].mean(),
            sel[:, 3].mean(),
            color - 1,
            shape - 1,
            np.bincount(sel[:, 4].astype(np.int64)).argmax(),
        )
    return out


def asked_words(
    ids: list[int], col: int, words: dict[int, int], turn_id: int
) -> torch.Tensor | None:
    """[ASK_HEADS, len(ids)] bool: in the user turn before position `col`, the colour word
    (head 0) and the shape word (head 1) of the question (`words`: token id -> 0 colour, 1
    shape); a question naming only one gives both heads that word. None: it names neither."""
    turn = max((p for p in range(col + 1) if ids[p] == turn_id), default=0)
    row = torch.zeros(ASK_HEADS, len(ids), dtype=torch.bool)
    for p in range(turn, col + 1):
        if ids[p] in words:
            row[words[ids[p]], p] = True
    named = row.any(dim=1)
    if not named.any():
        return None
    if not named.all():
        row[~named] = row[named]
    return row


def collate(
    items: list[Encoded],
    pad_id: int,
    media_pad_id: int = -1,
    words: dict[int, int] | None = None,
    turn_id: int = -1,
) -> TrainBatch:
    """Right-padded prompt+target sequences; each target token is predicted from the position
    before it. Training (`words`, `turn_id`: see `asked_words`) also gets each answer's focus
    and ask masks."""
    seqs = [e.prompt_ids + e.target_ids[:-1] for e in items]
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    spans: list[tuple[int, int]] = []
    for i, (e, s) in enumerate(zip(items, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        start = len(targets)
        for j, t in enumerate(e.target_ids):
            if e.target_mask is not None and not e.target_mask[j]:
                continue
            rows.append(i)
            cols.append(len(e.prompt_ids) - 1 + j)
            targets.append(t)
        spans.append((start, len(targets)))
    f_rows: list[int] = []
    f_cols: list[int] = []
    f_masks: list[torch.Tensor] = []
    f_uniform: list[bool] = []
    f_sink: list[int] = []
    f_share: list[torch.Tensor] = []
    f_values: list[np.ndarray] = []
    f_targets: list[int] = []
    for i, (e, s) in enumerate(zip(items, seqs, strict=True)):
        if not e.focus:  # not a training encoding
            continue
        where = (torch.tensor(s) == media_pad_id).nonzero()[:, 0]
        for start, mask, sink in zip(e.answer_starts, e.focus, e.focus_sink, strict=True):
            if not mask.any(axis=1).all():  # a head with nothing to look at
                continue
            row = torch.zeros(FOCUS_HEADS, longest, dtype=torch.bool)
            for head in range(FOCUS_HEADS):
                row[head, where[torch.from_numpy(mask[head])]] = True
            assert e.labels is not None
            share = torch.zeros(longest)
            if sink:
                row[:, where[0] - 1] = True
                share[where] = torch.from_numpy(e.labels[:, 1]).float()
                share[where[0] - 1] = 1.0
            f_share.append(share)
            f_uniform.append(sink)
            f_sink.append(int(where[0]) - 1 if sink else -1)
            f_values.append(focus_values(e.labels, mask, sink))
            f_targets.append(e.target_ids[start])
            f_rows.append(i)
            f_cols.append(len(e.prompt_ids) - 1 + start)
            f_masks.append(row)
    a_rows: list[int] = []
    a_cols: list[int] = []
    a_masks: list[torch.Tensor] = []
    for i, (e, s) in enumerate(zip(items, seqs, strict=True)):
        for start in e.answer_starts if words else ():
            col = len(e.prompt_ids) - 1 + start
            asked = asked_words(s, col, words or {}, turn_id)
            if asked is not None:
                a_rows.append(i)
                a_cols.append(col)
                a_masks.append(F.pad(asked, (0, longest - len(s))))
    pixel = [e.pixel_values for e in items if len(e.grids)]
    grids = [g for e in items for g in e.grids]
    labels = [e.labels for e in items if len(e.grids)]
    return TrainBatch(
        Batch(ids, torch.from_numpy(np.concatenate(pixel)) if pixel else None, grids),
        torch.tensor(rows),
        torch.tensor(cols),
        torch.tensor(targets),
        spans,
        torch.from_numpy(np.concatenate([x for x in labels if x is not None])).float()
        if labels and all(x is not None for x in labels)
        else None,
        torch.tensor(f_rows, dtype=torch.long),
        torch.tensor(f_cols, dtype=torch.long),
        torch.stack(f_masks)
        if f_masks
        else torch.zeros((0, FOCUS_HEADS, longest), dtype=torch.bool),
        torch.tensor(f_uniform, dtype=torch.bool),
        torch.tensor(f_sink, dtype=torch.long),
        torch.stack(f_share) if f_share else torch.zeros((0, longest)),
        torch.from_numpy(np.stack(f_values)).float()
        if f_values
        else torch.zeros((0, FOCUS_HEADS, len(VALUE_FIELDS))),
        torch.tensor(f_targets, dtype=torch.long),
        torch.tensor(a_rows, dtype=torch.long),
        torch.tensor(a_cols, dtype=torch.long),
        torch.stack(a_masks) if a_masks else torch.zeros((0, ASK_HEADS, longest), dtype=torch.bool),
    )


def encode_draws(builder: PromptBuilder, draws: list[Draw]) -> list[Encoded]:
    out = []
    for d in draws:
        e = builder.encode(
            d.sample, thinking=d.thinking, text_first=d.text_first, follow_ups=d.follow_ups
        )
        e.labels = token_labels(d.sample, builder.cfg)
        questions = [] if d.thinking else [d.sample.question, *(q for q, _ in d.follow_ups)]
        e.focus = [focus_mask(q, e.labels) for q in questions]
        e.focus_sink = [counts_with_sink(q) for q in questions]
        out.append(e)
    return out

"""Training batches for the demo model: task mixing, the thinking variant, video round trips.

A training draw is a pure function of (run seed, draw index): the task is picked by weight,
the sample comes from `make_sample(task, train_seed(run seed, index))`, and the same seed
decides whether the sample is rendered in the thinking variant, with the question before the
media, and (videos) whether the frames go through a real H.264 encode/decode first, as a
client's MP4 upload does on its way to the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from server.model.demo.model import Batch
from server.model.demo.prompt import Encoded, PromptBuilder
from server.model.demo.tasks import TASKS, Sample, make_sample, train_seed
from server.model.demo.video import decode_mp4, encode_mp4

TASK_WEIGHTS: dict[str, float] = {
    "color": 1.0,
    "shape": 1.0,
    "count": 1.6,
    "position": 1.0,
    "multi_image": 1.2,
    "motion": 1.0,
    "color_change": 1.0,
}
THINKING_FRACTION = 0.15
TEXT_FIRST_FRACTION = 0.1
VIDEO_ROUND_TRIP_FRACTION = 0.5


@dataclass
class Draw:
    sample: Sample
    thinking: bool
    text_first: bool


def draw(run_seed: int, index: int, tasks: tuple[str, ...] = TASKS) -> Draw:
    seed = train_seed(run_seed, index)
    rng = np.random.default_rng([seed, 7])
    weights = np.array([TASK_WEIGHTS[t] for t in tasks])
    task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))]
    sample = make_sample(task, seed)
    if sample.frames and rng.random() < VIDEO_ROUND_TRIP_FRACTION:
        sample.frames = decode_mp4(encode_mp4(sample.frames))
    return Draw(sample, rng.random() < THINKING_FRACTION, rng.random() < TEXT_FIRST_FRACTION)


@dataclass
class TrainBatch:
    batch: Batch
    rows: torch.Tensor  # target positions: batch row ...
    cols: torch.Tensor  # ... and column (the position that predicts the token)
    targets: torch.Tensor  # token ids to predict
    answer_spans: list[tuple[int, int]]  # per sample: [start, end) into rows/cols/targets


def collate(items: list[Encoded], pad_id: int) -> TrainBatch:
    """Right-padded prompt+target sequences; each target token is predicted from the position
    before it."""
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
            rows.append(i)
            cols.append(len(e.prompt_ids) - 1 + j)
            targets.append(t)
        spans.append((start, len(targets)))
    pixel = [e.pixel_values for e in items if len(e.grids)]
    grids = [g for e in items for g in e.grids]
    return TrainBatch(
        Batch(ids, torch.from_numpy(np.concatenate(pixel)) if pixel else None, grids),
        torch.tensor(rows),
        torch.tensor(cols),
        torch.tensor(targets),
        spans,
    )


def encode_draws(builder: PromptBuilder, draws: list[Draw]) -> list[Encoded]:
    return [builder.encode(d.sample, thinking=d.thinking, text_first=d.text_first) for d in draws]

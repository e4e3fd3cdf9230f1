"""Greedy answers of the training implementation, and held-out accuracy per task.

Decoding recomputes the decoder over the whole sequence at every step (answers are a few
tokens long), with the image features computed once per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.model.demo.data import collate
from server.model.demo.model import KimiVL
from server.model.demo.prompt import Encoded, PromptBuilder
from server.model.demo.tasks import TASKS, Sample, heldout_seed, make_sample


@dataclass
class Generation:
    token_ids: list[int]
    first_logprobs: torch.Tensor  # [V] log-softmax at the last prompt position


@torch.no_grad()
def generate(
    model: KimiVL, encoded: list[Encoded], end_id: int, pad_id: int, max_new_tokens: int = 24
) -> list[Generation]:
    """Greedy continuation of each prompt until `end_id` (included) or max_new_tokens."""
    prompts = [Encoded(e.prompt_ids, [0], e.pixel_values, e.grids) for e in encoded]
    tb = collate(prompts, pad_id)
    embeds = model.embed(tb.batch)
    lengths = [len(e.prompt_ids) for e in encoded]
    seqs = [embeds[i, : lengths[i]] for i in range(len(encoded))]
    out: list[list[int]] = [[] for _ in encoded]
    first: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    table = model.language_model.model.embed_tokens
    active = list(range(len(encoded)))
    for step in range(max_new_tokens):
        if not active:
            break
        longest = max(seqs[i].shape[0] for i in active)
        x = embeds.new_zeros(len(active), longest, embeds.shape[-1])
        for row, i in enumerate(active):
            x[row, : seqs[i].shape[0]] = seqs[i]
        h = model.decode(x)
        last = torch.stack([h[row, seqs[i].shape[0] - 1] for row, i in enumerate(active)])
        logits = model.language_model.lm_head(last).float()
        next_ids = logits.argmax(-1).tolist()
        if step == 0:
            for row, i in enumerate(active):
                first[i] = torch.log_softmax(logits[row], -1)
        still = []
        for row, i in enumerate(active):
            out[i].append(int(next_ids[row]))
            if next_ids[row] != end_id:
                seqs[i] = torch.cat([seqs[i], table(torch.tensor([next_ids[row]]))])
                still.append(i)
        active = still
    return [Generation(o, f) for o, f in zip(out, first, strict=True)]


def heldout_samples(n_per_task: int, offset: int = 0) -> list[Sample]:
    """n held-out samples of every task (odd seeds), tasks interleaved."""
    return [make_sample(t, heldout_seed(i, offset)) for i in range(n_per_task) for t in TASKS]


def accuracy(
    model: KimiVL,
    builder: PromptBuilder,
    samples: list[Sample],
    *,
    thinking: bool = False,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Exact-match accuracy of greedy answers, per task: {task: {"accuracy", "n"}}."""
    end, pad = builder.ids["<|im_end|>"], 0
    correct: dict[str, list[bool]] = {}
    was_training = model.training
    model.eval()
    by_task: dict[str, list[Sample]] = {}
    for s in samples:  # same-task batches have similar lengths
        by_task.setdefault(s.task, []).append(s)
    for task, group in by_task.items():
        for k in range(0, len(group), batch_size):
            chunk = group[k : k + batch_size]
            enc = [builder.encode(s, thinking=thinking) for s in chunk]
            max_new = 40 if thinking else 8
            for s, g in zip(chunk, generate(model, enc, end, pad, max_new), strict=True):
                correct.setdefault(task, []).append(builder.answer_from(g.token_ids) == s.answer)
    model.train(was_training)
    return {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in correct.items()}


@torch.no_grad()
def mean_loss(model: KimiVL, encoded: list[Encoded]) -> float:
    """Mean cross-entropy per target token (answer and `<|im_end|>`)."""
    tb = collate(encoded, pad_id=0)
    logits = model.logits_at(tb.batch, tb.rows, tb.cols)
    return float(torch.nn.functional.cross_entropy(logits, tb.targets))
